//! The quarantine: documents and rows set aside with the reason, where they
//! were (a line of the events file, an `_id`, a message), and their raw
//! form, losslessly (bytes that are not UTF-8, or text a backend cannot
//! store, as base64). One bad document is the unit of failure: it goes
//! here, and everything else loads.
//!
//! Writing the quarantine must not fail on what it is given: text is
//! stored whole up to [`MAX_RAW`] (beyond it, the head is kept and the
//! reason says where the whole is), the short columns are clipped, and a
//! batch a backend refuses is written again one row at a time, then as a
//! minimal row.

use base64::Engine as _;
use bson::{Bson, Document};
use serde::Serialize;
use workflows::redact::redact;
use workflows::Backend;

use crate::schema::Value;
use crate::warehouse::Warehouse;

/// The longest raw form stored whole, in bytes: far above any event, and
/// under the packet limits of MySQL/MariaDB servers (16 MiB by default).
pub const MAX_RAW: usize = 4 << 20;

/// Event ids and types longer than this are clipped in their own columns
/// (the raw form keeps them whole).
const MAX_SHORT: usize = 1000;

/// Reasons longer than this keep their head and tail.
const MAX_REASON: usize = 64 << 10;

/// A raw form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw {
    /// A document as canonical Extended JSON.
    Json(String),
    /// Text that is not a document (an unreadable line, a message body).
    Text(String),
    /// Bytes that are not UTF-8.
    Bytes(Vec<u8>),
}

workflows::stored_enum! {
    /// How a raw form is stored, as `cutover_quarantine.raw_encoding` says.
    pub enum Encoding as "raw encoding" {
        /// Canonical Extended JSON.
        Json = "json",
        /// Text as it was.
        Text = "text",
        /// Base64 of the bytes (bytes that are not UTF-8, text with a NUL).
        Base64 = "base64",
    }
}

/// A raw form as stored: its encoding and the text in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// How `text` is encoded.
    pub encoding: Encoding,
    /// The stored text.
    pub text: String,
}

impl Raw {
    /// The form stored. Text holding a NUL (which PostgreSQL text cannot
    /// store) is stored as base64.
    pub fn stored(&self) -> Encoded {
        let (encoding, text) = match self {
            Self::Json(s) if !s.contains('\0') => (Encoding::Json, s.clone()),
            Self::Text(s) if !s.contains('\0') => (Encoding::Text, s.clone()),
            Self::Json(s) | Self::Text(s) => (Encoding::Base64, b64(s.as_bytes())),
            Self::Bytes(b) => (Encoding::Base64, b64(b)),
        };
        Encoded { encoding, text }
    }

    /// The raw form back from its stored encoding and text.
    pub fn from_stored(encoding: Encoding, text: String) -> Self {
        match encoding {
            Encoding::Base64 => {
                match base64::engine::general_purpose::STANDARD.decode(text.as_bytes()) {
                    Ok(bytes) => match String::from_utf8(bytes) {
                        Ok(s) => Self::Text(s),
                        Err(e) => Self::Bytes(e.into_bytes()),
                    },
                    Err(_) => Self::Text(text),
                }
            }
            Encoding::Text => Self::Text(text),
            Encoding::Json => Self::Json(text),
        }
    }

    /// The raw form for people: text as it is, bytes that are not UTF-8
    /// as `\xNN`.
    pub fn display(&self) -> String {
        match self {
            Self::Json(s) | Self::Text(s) => s.clone(),
            Self::Bytes(b) => b.escape_ascii().to_string(),
        }
    }

    /// The raw form as text, when it is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Json(s) | Self::Text(s) => Some(s),
            Self::Bytes(_) => None,
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A document or row set aside.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// A stable id: the `_id`, or a hash of the raw form.
    pub doc_id: String,
    /// The event id, when readable.
    pub event_id: Option<String>,
    /// The event type, when readable.
    pub event_type: Option<String>,
    /// Why it is set aside.
    pub reason: String,
    /// Where it was: `line 17 of events.jsonl`, `_id 65a...`, `message ...`.
    pub location: Option<String>,
    /// Its raw form.
    pub raw: Raw,
}

impl Rejected {
    /// A document rejected for `reason`; `key_field` and `type_field` name
    /// its event id and type; `location` says where it was (else its `_id`).
    pub fn from_doc(
        doc: &Document,
        key_field: &str,
        type_field: &str,
        reason: String,
        location: Option<&str>,
    ) -> Self {
        // Canonical Extended JSON keeps every BSON type (int32 and int64
        // apart): the raw form is the document, losslessly.
        let raw = Bson::Document(doc.clone())
            .into_canonical_extjson()
            .to_string();
        let doc_id = doc_id_of(doc).unwrap_or_else(|| short_hash(raw.as_bytes()));
        let location = match (location, doc.get("_id")) {
            (Some(l), _) => Some(l.to_owned()),
            (None, Some(id)) => Some(format!("_id {}", id_text(id))),
            (None, None) => None,
        };
        Self {
            doc_id,
            event_id: crate::schema::lookup(doc, key_field)
                .and_then(Bson::as_str)
                .map(str::to_owned),
            event_type: crate::schema::lookup(doc, type_field)
                .and_then(Bson::as_str)
                .map(str::to_owned),
            reason,
            location,
            raw: Raw::Json(raw),
        }
    }

    /// A row of a task's output (or input) set aside: its `doc_id` and
    /// `event_id` columns name the source event when it has them; `key`
    /// indexes the columns that identify it; `table`, when given, is where
    /// it was going.
    pub fn from_row(
        names: &[String],
        row: &[Value],
        key: &[usize],
        table: Option<&str>,
        reason: String,
    ) -> Self {
        let mut obj = serde_json::Map::new();
        for (n, v) in names.iter().zip(row) {
            obj.insert(n.clone(), serde_json::to_value(v).unwrap_or_default());
        }
        let text = |col: &str| obj.get(col).and_then(|v| v.as_str()).map(str::to_owned);
        let doc_id = text("doc_id");
        let event_id = text("event_id");
        let key_text = key
            .iter()
            .map(|&i| {
                format!(
                    "{}={}",
                    names[i],
                    serde_json::to_value(&row[i]).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let raw = match table {
            Some(t) => serde_json::json!({ "table": t, "row": obj }),
            None => serde_json::Value::Object(obj),
        }
        .to_string();
        Self {
            doc_id: doc_id.clone().unwrap_or_else(|| {
                short_hash(format!("{}\u{1f}{key_text}", table.unwrap_or_default()).as_bytes())
            }),
            event_id,
            event_type: None,
            reason,
            location: Some(match (doc_id, table) {
                (Some(d), _) => format!("_id {d}"),
                (None, Some(t)) => format!("{t} ({key_text})"),
                (None, None) => format!("({key_text})"),
            }),
            raw: Raw::Json(raw),
        }
    }

    /// Raw input that is not a document.
    pub fn unreadable(raw: Raw, reason: String, location: Option<String>) -> Self {
        let doc_id = match &raw {
            Raw::Json(s) | Raw::Text(s) => short_hash(s.as_bytes()),
            Raw::Bytes(b) => short_hash(b),
        };
        Self {
            doc_id,
            event_id: None,
            event_type: None,
            reason,
            location,
            raw,
        }
    }
}

/// A document's id as the quarantine keys it: an ObjectId's hex, or a hash
/// of another `_id`.
pub fn doc_id_of(doc: &Document) -> Option<String> {
    match doc.get("_id")? {
        Bson::ObjectId(o) => Some(o.to_hex()),
        other => Some(short_hash(id_text(other).as_bytes())),
    }
}

fn id_text(id: &Bson) -> String {
    match id {
        Bson::ObjectId(o) => o.to_hex(),
        Bson::String(s) => format!("{s:?}"),
        other => other.clone().into_relaxed_extjson().to_string(),
    }
}

/// A stable short hash of some bytes (FNV-1a, 64 bits, hex).
pub fn short_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("h{h:016x}")
}

/// `s` without NULs (which PostgreSQL text refuses) and at most `max`
/// bytes: the head and the tail, with what was left out said between.
pub fn clip(s: &str, max: usize) -> String {
    if s.contains('\0') {
        workflows::ledger::clip(&s.replace('\0', "\\0"), max)
    } else {
        workflows::ledger::clip(s, max)
    }
}

/// A document id that fits its column: itself when short and plain, else
/// a hash of it.
fn doc_key(id: &str) -> String {
    if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()) {
        id.to_owned()
    } else {
        short_hash(id.as_bytes())
    }
}

/// Text with anything but printable ASCII escaped, at most `max` bytes.
fn ascii(s: &str, max: usize) -> String {
    let escaped: String = s.chars().flat_map(char::escape_default).collect();
    clip(&escaped, max)
}

/// One quarantine row as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    /// The DAG.
    pub dag: String,
    /// The task that set it aside.
    pub task: String,
    /// Its id.
    pub doc_id: String,
    /// The event id, when readable.
    pub event_id: Option<String>,
    /// The event type, when readable.
    pub event_type: Option<String>,
    /// Why.
    pub reason: String,
    /// Where it was.
    pub location: Option<String>,
    /// How `raw` is encoded.
    pub raw_encoding: Encoding,
    /// The raw form in that encoding.
    pub raw: String,
    /// The run that set it aside (last).
    pub run_id: String,
    /// When.
    pub quarantined_at: String,
}

impl Stored {
    fn new(dag: &str, task: &str, run_id: &str, now: &str, r: &Rejected, max_raw: usize) -> Self {
        let mut reason = redact(&r.reason).into_owned();
        // Cut what is too long before encoding it, so that what is stored
        // still decodes.
        let total = match &r.raw {
            Raw::Json(s) | Raw::Text(s) => s.len(),
            Raw::Bytes(b) => b.len(),
        };
        let stored = if total > max_raw {
            let cut = match &r.raw {
                Raw::Json(s) | Raw::Text(s) => {
                    let mut end = max_raw;
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    Raw::Text(s[..end].to_owned())
                }
                Raw::Bytes(b) => Raw::Bytes(b[..max_raw].to_vec()),
            };
            reason.push_str(&format!(
                " (raw form cut to its first {max_raw} of {total} bytes{})",
                r.location
                    .as_deref()
                    .map_or(String::new(), |l| format!("; the whole is at {l}"))
            ));
            cut.stored()
        } else {
            r.raw.stored()
        };
        Self {
            dag: dag.to_owned(),
            task: task.to_owned(),
            doc_id: doc_key(&r.doc_id),
            event_id: r.event_id.as_deref().map(|s| clip(s, MAX_SHORT)),
            event_type: r.event_type.as_deref().map(|s| clip(s, MAX_SHORT)),
            reason: clip(&reason, MAX_REASON),
            location: r.location.as_deref().map(|s| clip(s, MAX_SHORT)),
            raw_encoding: stored.encoding,
            raw: stored.text,
            run_id: run_id.to_owned(),
            quarantined_at: now.to_owned(),
        }
    }

    /// The raw form, decoded.
    pub fn raw(&self) -> Raw {
        Raw::from_stored(self.raw_encoding, self.raw.clone())
    }
}

const COLUMNS: &str = "dag, task, doc_id, event_id, event_type, reason, location, raw_encoding, raw, run_id, quarantined_at";
const WIDTH: usize = 11;

fn insert_sql(backend: Backend, rows: usize) -> String {
    let mut sql = format!("INSERT INTO cutover_quarantine ({COLUMNS}) VALUES ");
    let mut m = backend.markers();
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        sql.push_str(&m.list(WIDTH));
        sql.push(')');
    }
    // A document quarantined again (the next run re-reads it) keeps one row,
    // with the latest reason and run.
    sql.push_str(match backend {
        Backend::MySql => " ON DUPLICATE KEY UPDATE reason = VALUES(reason), location = VALUES(location), raw_encoding = VALUES(raw_encoding), raw = VALUES(raw), run_id = VALUES(run_id), quarantined_at = VALUES(quarantined_at)",
        _ => " ON CONFLICT (dag, task, doc_id) DO UPDATE SET reason = excluded.reason, location = excluded.location, raw_encoding = excluded.raw_encoding, raw = excluded.raw, run_id = excluded.run_id, quarantined_at = excluded.quarantined_at",
    });
    sql
}

/// Inserts rows under a savepoint (or in a transaction of their own), so
/// that a refusal leaves an enclosing transaction usable.
async fn insert(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    rows: &[Stored],
) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let sql = insert_sql(backend, rows.len());
    let mut q = sqlx::query(&sql);
    for r in rows {
        q = q
            .bind(r.dag.clone())
            .bind(r.task.clone())
            .bind(r.doc_id.clone())
            .bind(r.event_id.clone())
            .bind(r.event_type.clone())
            .bind(r.reason.clone())
            .bind(r.location.clone())
            .bind(r.raw_encoding.as_str())
            .bind(r.raw.clone())
            .bind(r.run_id.clone())
            .bind(r.quarantined_at.clone());
    }
    let mut sp = conn.begin().await?;
    match q.execute(&mut *sp).await {
        Ok(_) => sp.commit().await,
        Err(e) => {
            let _ = sp.rollback().await;
            Err(e)
        }
    }
}

/// Rows and bytes per insert statement.
const BATCH_ROWS: usize = 200;
const BATCH_BYTES: usize = 4 << 20;

/// Writes rejected documents of `dag`'s task `task`, found by run `run_id`.
/// A document already there is updated (latest reason and run).
///
/// # Errors
/// Only when the warehouse cannot be written at all (it is unreachable,
/// or refuses even a minimal row); what the rows hold never fails it.
pub async fn write(
    wh: &Warehouse,
    dag: &str,
    task: &str,
    run_id: &str,
    rejected: &[Rejected],
) -> Result<(), sqlx::Error> {
    if rejected.is_empty() {
        return Ok(());
    }
    let mut conn = wh.pool.acquire().await?;
    write_on(&mut conn, wh.backend, dag, task, run_id, rejected).await
}

/// [`write`] on one connection, inside its transaction if it has one.
///
/// # Errors
/// As [`write`].
pub async fn write_on(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    dag: &str,
    task: &str,
    run_id: &str,
    rejected: &[Rejected],
) -> Result<(), sqlx::Error> {
    if rejected.is_empty() {
        return Ok(());
    }
    let now = workflows::time::timestamp(chrono::Utc::now());
    // The same doc_id twice in one statement would make some backends
    // refuse it, so keep the last of each.
    let mut seen = std::collections::HashSet::new();
    let mut rows: Vec<Stored> = rejected
        .iter()
        .rev()
        .map(|r| Stored::new(dag, task, run_id, &now, r, MAX_RAW))
        .filter(|r| seen.insert(r.doc_id.clone()))
        .collect();
    rows.reverse();
    // Batches by count and by size.
    let mut batch: Vec<Stored> = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let size = row.raw.len() + row.reason.len() + 256;
        if !batch.is_empty() && (batch.len() >= BATCH_ROWS || bytes + size > BATCH_BYTES) {
            write_batch(conn, backend, std::mem::take(&mut batch)).await?;
            bytes = 0;
        }
        bytes += size;
        batch.push(row);
    }
    write_batch(conn, backend, batch).await
}

async fn write_batch(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    batch: Vec<Stored>,
) -> Result<(), sqlx::Error> {
    if batch.is_empty() {
        return Ok(());
    }
    match insert(conn, backend, &batch).await {
        Ok(()) => return Ok(()),
        Err(e) if workflows::db::retryable(&e) => return Err(e),
        Err(e) => {
            tracing::debug!(error = %redact(&e.to_string()), "the quarantine refused a batch; writing it row by row");
        }
    }
    for row in batch {
        if let Err(e) = insert(conn, backend, std::slice::from_ref(&row)).await {
            if workflows::db::retryable(&e) {
                return Err(e);
            }
            tracing::warn!(error = %redact(&e.to_string()), doc_id = %row.doc_id, "the quarantine refused a row; storing it cut short");
            // The smallest row that still says what and where, in ASCII.
            let mut small = row.clone();
            small.raw = b64(&row.raw.as_bytes()[..row.raw.len().min(64 << 10)]);
            small.raw_encoding = Encoding::Base64;
            small.event_id = row.event_id.as_deref().map(|s| ascii(s, 200));
            small.event_type = row.event_type.as_deref().map(|s| ascii(s, 200));
            small.location = row.location.as_deref().map(|s| ascii(s, 200));
            small.reason = ascii(
                &format!(
                    "{} (stored cut to 64 KiB, the stored form base64 again: the warehouse refused the whole: {})",
                    clip(&row.reason, 4096),
                    clip(&redact(&e.to_string()), 1024)
                ),
                8192,
            );
            insert(conn, backend, std::slice::from_ref(&small)).await?;
        }
    }
    Ok(())
}

/// Which quarantine rows to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this DAG's.
    pub dag: Option<String>,
    /// Only this task's.
    pub task: Option<String>,
    /// Only these documents.
    pub doc_ids: Vec<String>,
    /// At most this many, newest first.
    pub limit: Option<i64>,
}

/// Quarantine rows matching `f`, newest first.
///
/// # Errors
/// The read failed.
pub async fn list(wh: &Warehouse, f: &Filter) -> Result<Vec<Stored>, sqlx::Error> {
    use sqlx::Row;
    let mut m = wh.backend.markers();
    let mut conds = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    if let Some(d) = &f.dag {
        binds.push(d.clone());
        conds.push(format!("dag = {}", m.next()));
    }
    if let Some(t) = &f.task {
        binds.push(t.clone());
        conds.push(format!("task = {}", m.next()));
    }
    if !f.doc_ids.is_empty() {
        let mut ps = Vec::new();
        for id in &f.doc_ids {
            binds.push(id.clone());
            ps.push(m.next());
        }
        conds.push(format!("doc_id IN ({})", ps.join(", ")));
    }
    let mut sql = format!("SELECT {COLUMNS} FROM cutover_quarantine");
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(" ORDER BY quarantined_at DESC, dag, task, doc_id");
    if let Some(n) = f.limit {
        sql.push_str(&format!(" LIMIT {}", n.max(0)));
    }
    let mut q = sqlx::query(&sql);
    for v in binds {
        q = q.bind(v);
    }
    let rows = q.fetch_all(&wh.pool).await?;
    rows.iter()
        .map(|r| {
            let text = |c: &str| workflows::sql::text(r, c);
            Ok(Stored {
                dag: r.try_get("dag")?,
                task: r.try_get("task")?,
                doc_id: r.try_get("doc_id")?,
                event_id: text("event_id")?,
                event_type: text("event_type")?,
                reason: text("reason")?.unwrap_or_default(),
                location: text("location")?,
                raw_encoding: workflows::state::read(r, "raw_encoding")?,
                raw: text("raw")?.unwrap_or_default(),
                run_id: r.try_get("run_id")?,
                quarantined_at: r.try_get("quarantined_at")?,
            })
        })
        .collect()
}

/// Removes quarantine rows of `dag`'s task `task` for `doc_ids` that run
/// `except_run` did not set aside again; returns how many.
///
/// # Errors
/// The delete failed.
pub async fn release(
    wh: &Warehouse,
    dag: &str,
    task: &str,
    doc_ids: &[String],
    except_run: &str,
) -> Result<u64, sqlx::Error> {
    let mut removed = 0;
    for chunk in doc_ids.chunks(500) {
        let mut m = wh.backend.markers();
        let sql = format!(
            "DELETE FROM cutover_quarantine WHERE dag = {} AND task = {} AND run_id <> {} AND doc_id IN ({})",
            m.next(),
            m.next(),
            m.next(),
            m.list(chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(dag).bind(task).bind(except_run);
        for id in chunk {
            q = q.bind(id.clone());
        }
        removed += q.execute(&wh.pool).await?.rows_affected();
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_forms_round_trip_losslessly() {
        for raw in [
            Raw::Json("{\"a\":1}".into()),
            Raw::Text("not json \u{0} with a NUL".into()),
            Raw::Bytes(vec![b'{', 0xff, 0xfe, b'}']),
        ] {
            let stored = raw.stored();
            assert!(!stored.text.contains('\0'));
            let back = Raw::from_stored(stored.encoding, stored.text);
            assert_eq!(back.display(), raw.display());
        }
        assert_eq!(Raw::Bytes(vec![b'a', 0xff]).display(), "a\\xff");
    }

    #[test]
    fn clip_keeps_head_and_tail_on_char_boundaries() {
        let s = "é".repeat(100);
        let c = clip(&s, 120);
        assert!(c.len() <= 120, "{}", c.len());
        assert!(c.starts_with("éééé") && c.ends_with("éééé"), "{c}");
        assert!(c.contains("bytes left out"));
        assert_eq!(clip("a\0b", 10), "a\\0b");
        assert!(doc_key(&"x".repeat(65)).starts_with('h'));
        assert_eq!(
            doc_key("65a000000000000000000001"),
            "65a000000000000000000001"
        );
    }
}
