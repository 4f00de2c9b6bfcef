//! Event sources: a MongoDB collection (`mongodb://...`) or, as the embedded
//! default, an events file in mongoexport form (one document per line, in
//! MongoDB Extended JSON v2, relaxed or canonical); and the documents of one
//! micro-batch of the live feed, in memory.

use std::io::{BufRead, BufReader};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document};
use futures::stream::{BoxStream, StreamExt};
use mongodb::error::ErrorKind;
use workflows::TaskError;

/// A source could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The events file could not be opened or read.
    #[error("cannot read the events file {}", .0.display())]
    File(PathBuf, #[source] std::io::Error),
    /// MongoDB refused or failed.
    #[error("MongoDB {0}")]
    Mongo(String, #[source] mongodb::error::Error),
}

impl SourceError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::File(_, e) => matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut
            ),
            Self::Mongo(_, e) => {
                matches!(
                    *e.kind,
                    ErrorKind::Io(_)
                        | ErrorKind::ServerSelection { .. }
                        | ErrorKind::ConnectionPoolCleared { .. }
                ) || e.contains_label("RetryableReadError")
            }
        }
    }
}

impl From<SourceError> for TaskError {
    fn from(e: SourceError) -> Self {
        if e.is_retryable() {
            TaskError::Retryable(Box::new(e))
        } else {
            TaskError::Fatal(Box::new(e))
        }
    }
}

/// Which events to read.
#[derive(Debug, Clone)]
pub struct Query {
    /// The database (MongoDB only).
    pub database: String,
    /// The collection (MongoDB only).
    pub collection: String,
    /// The field holding the event type.
    pub type_field: String,
    /// The event types wanted.
    pub types: Vec<String>,
    /// A further condition on the documents.
    pub filter: Option<crate::filter::Filter>,
    /// The field holding the event timestamp.
    pub ts_field: String,
    /// Only events with a timestamp at or after this (epoch ms).
    pub since_ms: Option<i64>,
    /// Only events with a timestamp before this (epoch ms).
    pub until_ms: Option<i64>,
    /// Documents per round trip.
    pub batch_size: u32,
}

/// The events a task reads and how a document reads as a row: what a task
/// that checks an extract against the source needs of it.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The events, from the beginning.
    pub query: Query,
    /// The column that identifies an event.
    pub key: String,
    /// The timestamp column.
    pub ts_column: String,
    /// The columns a document reads as.
    pub columns: crate::schema::Columns,
}

/// One item read from a source.
#[derive(Debug, Clone)]
pub enum Item {
    /// A document, with its line number when it comes from an events file.
    Doc(Document, Option<u64>),
    /// A line of an events file that is not a document.
    Unreadable {
        /// The line as read: text, or bytes that are not UTF-8.
        raw: crate::quarantine::Raw,
        /// Why it is not a document.
        reason: String,
        /// Its line number (from 1).
        line: u64,
    },
}

/// The longest line of an events file read whole: a MongoDB document is at
/// most 16 MiB, and its Extended JSON a few times that. Longer lines are
/// unreadable (their head is kept in the quarantine).
pub const MAX_LINE: usize = 64 << 20;

/// An event source.
#[derive(Debug, Clone)]
pub enum Source {
    /// An events file in mongoexport form.
    File(PathBuf),
    /// A MongoDB deployment.
    Mongo(mongodb::Client),
    /// Events received from the live feed, in arrival order. A feed batch
    /// holds whatever arrived, late or early: it is read whole, without a
    /// time range, and it never moves a watermark (the nightly runs own the
    /// watermarks; both merge the same events the same way).
    Feed(Arc<Vec<Document>>),
}

impl Source {
    /// Opens the source a URL names: `mongodb://` or `mongodb+srv://` for
    /// MongoDB, anything else (optionally `file:`) for an events file.
    ///
    /// # Errors
    /// The MongoDB URL is invalid.
    pub async fn open(url: &str) -> Result<Self, SourceError> {
        if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") {
            let mut options = mongodb::options::ClientOptions::parse(url)
                .await
                .map_err(|e| SourceError::Mongo("connection string is invalid".into(), e))?;
            // An unreachable server is reported in seconds, with its cause,
            // unless the URL asks for other timeouts.
            options
                .server_selection_timeout
                .get_or_insert(Duration::from_secs(10));
            options
                .connect_timeout
                .get_or_insert(Duration::from_secs(5));
            let client = mongodb::Client::with_options(options)
                .map_err(|e| SourceError::Mongo("connection string is invalid".into(), e))?;
            Ok(Self::Mongo(client))
        } else {
            Ok(Self::File(PathBuf::from(url.trim_start_matches("file:"))))
        }
    }

    /// Checks that the source can be read: MongoDB answers a ping (within
    /// the server selection timeout, with the cause when it does not), an
    /// events file exists.
    ///
    /// # Errors
    /// The source cannot be reached.
    pub async fn check(&self) -> Result<(), SourceError> {
        match self {
            Self::Mongo(client) => client
                .database("admin")
                .run_command(doc! { "ping": 1 })
                .await
                .map(|_| ())
                .map_err(|e| SourceError::Mongo("is not reachable".into(), e)),
            Self::File(path) => std::fs::metadata(path)
                .map(|_| ())
                .map_err(|e| SourceError::File(path.clone(), e)),
            Self::Feed(_) => Ok(()),
        }
    }

    /// The documents with these `_id`s (MongoDB: of `database.collection`),
    /// in no particular order; ids the source does not hold are left out.
    ///
    /// # Errors
    /// The source cannot be read.
    pub async fn by_ids(
        &self,
        database: &str,
        collection: &str,
        ids: &[bson::oid::ObjectId],
    ) -> Result<Vec<Document>, SourceError> {
        match self {
            Self::Mongo(client) => {
                let mut out = Vec::new();
                for chunk in ids.chunks(1000) {
                    let mut cursor = client
                        .database(database)
                        .collection::<Document>(collection)
                        .find(doc! { "_id": { "$in": chunk.to_vec() } })
                        .await
                        .map_err(|e| {
                            SourceError::Mongo(format!("find on {database}.{collection}"), e)
                        })?;
                    while let Some(d) = cursor.next().await {
                        out.push(d.map_err(|e| {
                            SourceError::Mongo(format!("reading {database}.{collection}"), e)
                        })?);
                    }
                }
                Ok(out)
            }
            Self::Feed(docs) => Ok(docs
                .iter()
                .filter(|d| d.get_object_id("_id").is_ok_and(|o| ids.contains(&o)))
                .cloned()
                .collect()),
            Self::File(path) => {
                let path = path.clone();
                let ids: Vec<bson::oid::ObjectId> = ids.to_vec();
                tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::open(&path)
                        .map_err(|e| SourceError::File(path.clone(), e))?;
                    let hexes: Vec<String> = ids.iter().map(|o| o.to_hex()).collect();
                    let mut lines = Lines::new(BufReader::with_capacity(1 << 20, file));
                    let mut out = Vec::new();
                    while let Some((_, line)) = lines
                        .next_line()
                        .map_err(|e| SourceError::File(path.clone(), e))?
                    {
                        let Line::Whole(bytes) = line else { continue };
                        if !hexes
                            .iter()
                            .any(|h| memchr::memmem::find(bytes, h.as_bytes()).is_some())
                        {
                            continue;
                        }
                        let Ok(text) = std::str::from_utf8(bytes) else {
                            continue;
                        };
                        if let Ok(d) = parse_line(text) {
                            if d.get_object_id("_id").is_ok_and(|o| ids.contains(&o)) {
                                out.push(d);
                            }
                        }
                    }
                    Ok(out)
                })
                .await
                .unwrap_or_else(|e| {
                    Err(SourceError::File(
                        PathBuf::new(),
                        std::io::Error::other(e.to_string()),
                    ))
                })
            }
        }
    }

    /// Where line `n` of this source is, for messages and the quarantine.
    pub fn line_location(&self, n: u64) -> String {
        match self {
            Self::File(path) => format!("line {n} of {}", path.display()),
            _ => format!("line {n}"),
        }
    }

    /// Whether [`Source::stream`] yields documents in timestamp order, so that
    /// a watermark can be committed batch by batch.
    pub fn is_ordered(&self) -> bool {
        matches!(self, Self::Mongo(_))
    }

    /// Whether this is a batch of the live feed, which is read whole and
    /// never moves a watermark.
    pub fn is_feed(&self) -> bool {
        matches!(self, Self::Feed(_))
    }

    /// What changes whenever a document is added to, changed in or removed
    /// from what `q` reads, cheap to find: an events file's size,
    /// modification time and inode; a collection's document count and
    /// greatest `_id` (its index). `None` for the feed. Two equal marks mean
    /// nothing is new (a MongoDB `_id` is an ObjectId made at insert, so a
    /// new document has a greater one; a document changed in place is not
    /// seen, as events are appended, never rewritten).
    ///
    /// # Errors
    /// The source cannot be read.
    pub async fn mark(&self, q: &Query) -> Result<Option<String>, SourceError> {
        match self {
            Self::File(path) => {
                let meta =
                    std::fs::metadata(path).map_err(|e| SourceError::File(path.clone(), e))?;
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                #[cfg(unix)]
                let inode = {
                    use std::os::unix::fs::MetadataExt;
                    format!("{}:{}", meta.dev(), meta.ino())
                };
                #[cfg(not(unix))]
                let inode = String::new();
                Ok(Some(format!(
                    "file {} bytes, modified {modified}, inode {inode}",
                    meta.len()
                )))
            }
            Self::Mongo(client) => {
                let what = format!("reading the newest _id of {}.{}", q.database, q.collection);
                let coll = client
                    .database(&q.database)
                    .collection::<Document>(&q.collection);
                let count = coll
                    .estimated_document_count()
                    .await
                    .map_err(|e| SourceError::Mongo(what.clone(), e))?;
                let newest = coll
                    .find_one(doc! {})
                    .sort(doc! { "_id": -1 })
                    .projection(doc! { "_id": 1 })
                    .await
                    .map_err(|e| SourceError::Mongo(what, e))?
                    .and_then(|d| d.get("_id").cloned())
                    .map_or_else(
                        || "none".to_owned(),
                        |id| id.into_relaxed_extjson().to_string(),
                    );
                Ok(Some(format!(
                    "mongodb {count} documents, newest _id {newest}"
                )))
            }
            Self::Feed(_) => Ok(None),
        }
    }

    /// Streams the documents of `q`'s types in `q`'s time range. MongoDB
    /// yields them sorted by timestamp then `_id`; a file in file order.
    /// Without a lower bound, documents whose timestamp is missing or not a
    /// date are included too (so they reach quarantine once).
    ///
    /// # Errors
    /// The source cannot be opened or queried.
    pub async fn stream(
        &self,
        q: &Query,
    ) -> Result<BoxStream<'static, Result<Item, SourceError>>, SourceError> {
        match self {
            Self::Mongo(client) => {
                let mut filter = doc! { q.type_field.clone(): { "$in": q.types.clone() } };
                let mut range = Document::new();
                if let Some(since) = q.since_ms {
                    range.insert("$gte", bson::DateTime::from_millis(since));
                }
                if let Some(until) = q.until_ms {
                    range.insert("$lt", bson::DateTime::from_millis(until));
                }
                if !range.is_empty() {
                    filter.insert(q.ts_field.clone(), range);
                }
                if let Some(extra) = &q.filter {
                    filter = doc! { "$and": [filter, extra.as_doc().clone()] };
                }
                let cursor = client
                    .database(&q.database)
                    .collection::<Document>(&q.collection)
                    .find(filter)
                    .sort(doc! { q.ts_field.clone(): 1, "_id": 1 })
                    .batch_size(q.batch_size)
                    .await
                    .map_err(|e| {
                        SourceError::Mongo(format!("find on {}.{}", q.database, q.collection), e)
                    })?;
                let what = format!("reading {}.{}", q.database, q.collection);
                let docs = cursor
                    .map(move |r| {
                        r.map(|d| Item::Doc(d, None))
                            .map_err(|e| SourceError::Mongo(what.clone(), e))
                    })
                    .boxed();
                // A range on the time leaves out documents whose time is
                // missing or not a date; a read without an upper bound takes
                // them too (first), so that they reach the quarantine.
                // (`$nor` rather than `$not`, which some MongoDB wire-protocol
                // servers do not evaluate.)
                if q.since_ms.is_none() || q.until_ms.is_some() {
                    return Ok(docs);
                }
                let mut undated = doc! {
                    q.type_field.clone(): { "$in": q.types.clone() },
                    "$nor": [ { q.ts_field.clone(): { "$gte": bson::DateTime::from_millis(crate::schema::EARLIEST_MS) } } ],
                };
                if let Some(extra) = &q.filter {
                    undated = doc! { "$and": [undated, extra.as_doc().clone()] };
                }
                let what = format!("reading {}.{}", q.database, q.collection);
                let first = client
                    .database(&q.database)
                    .collection::<Document>(&q.collection)
                    .find(undated)
                    .batch_size(q.batch_size)
                    .await
                    .map_err(|e| {
                        SourceError::Mongo(format!("find on {}.{}", q.database, q.collection), e)
                    })?
                    .map(move |r| {
                        r.map(|d| Item::Doc(d, None))
                            .map_err(|e| SourceError::Mongo(what.clone(), e))
                    });
                Ok(first.chain(docs).boxed())
            }
            Self::Feed(docs) => {
                let docs = Arc::clone(docs);
                let q = q.clone();
                let wanted: Vec<Item> = docs
                    .iter()
                    .filter(|d| file_match(d, &q))
                    .map(|d| Item::Doc(d.clone(), None))
                    .collect();
                Ok(futures::stream::iter(wanted.into_iter().map(Ok)).boxed())
            }
            Self::File(path) => file_items(path, Some(q.clone())),
        }
    }

    /// Every document of `database.collection` (of an events file: every
    /// line, a line that is not a document as [`Item::Unreadable`]), of
    /// any type or none, in `_id` order on MongoDB and in line order in a
    /// file.
    ///
    /// # Errors
    /// The source cannot be opened or queried.
    pub async fn every(
        &self,
        database: &str,
        collection: &str,
        batch_size: u32,
    ) -> Result<BoxStream<'static, Result<Item, SourceError>>, SourceError> {
        match self {
            Self::Mongo(client) => {
                let what = format!("reading {database}.{collection}");
                let cursor = client
                    .database(database)
                    .collection::<Document>(collection)
                    .find(doc! {})
                    .sort(doc! { "_id": 1 })
                    .batch_size(batch_size)
                    .await
                    .map_err(|e| {
                        SourceError::Mongo(format!("find on {database}.{collection}"), e)
                    })?;
                Ok(cursor
                    .map(move |r| {
                        r.map(|d| Item::Doc(d, None))
                            .map_err(|e| SourceError::Mongo(what.clone(), e))
                    })
                    .boxed())
            }
            Self::Feed(docs) => {
                let docs: Vec<Item> = docs.iter().map(|d| Item::Doc(d.clone(), None)).collect();
                Ok(futures::stream::iter(docs.into_iter().map(Ok)).boxed())
            }
            Self::File(path) => file_items(path, None),
        }
    }
}

/// The items of the events file at `path` that `q` asks for (`None`:
/// every line), read on a blocking thread.
fn file_items(
    path: &std::path::Path,
    q: Option<Query>,
) -> Result<BoxStream<'static, Result<Item, SourceError>>, SourceError> {
    let file = std::fs::File::open(path).map_err(|e| SourceError::File(path.to_owned(), e))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Item, SourceError>>(1024);
    let path = path.to_owned();
    let needles: Vec<Vec<u8>> = q
        .iter()
        .flat_map(|q| &q.types)
        .map(|t| serde_json::Value::from(t.as_str()).to_string().into_bytes())
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut lines = Lines::new(BufReader::with_capacity(1 << 20, file));
        loop {
            let item = match lines.next_line() {
                Err(e) => Err(SourceError::File(path.clone(), e)),
                Ok(None) => break,
                Ok(Some((number, line))) => match read_item(line, number, q.as_ref(), &needles) {
                    Some(item) => Ok(item),
                    None => continue,
                },
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                break;
            }
        }
    });
    Ok(
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
            .boxed(),
    )
}

/// One line of an events file as read.
#[derive(Debug)]
pub enum Line<'a> {
    /// The line's bytes (without the line end).
    Whole(&'a [u8]),
    /// A line longer than [`MAX_LINE`]: its head, and its length.
    TooLong(&'a [u8], usize),
}

/// The lines of an events file, as bytes (a line need not be UTF-8), with
/// their numbers; memory is bounded by [`MAX_LINE`].
pub struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    /// The number of the line last returned, from 1.
    pub number: u64,
}

impl<R: BufRead> Lines<R> {
    /// Lines of `reader`.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buf: Vec::new(),
            number: 0,
        }
    }

    /// The next line with its number, or `None` at the end.
    ///
    /// # Errors
    /// Reading failed.
    pub fn next_line(&mut self) -> std::io::Result<Option<(u64, Line<'_>)>> {
        self.buf.clear();
        let mut total = 0usize;
        let mut any = false;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                break;
            }
            any = true;
            let (part, done) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            total += part.len();
            let room = MAX_LINE.saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&part[..part.len().min(room)]);
            let used = done.unwrap_or(chunk.len());
            self.reader.consume(used);
            if done.is_some() {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        self.number += 1;
        if self.buf.last() == Some(&b'\r') && total <= MAX_LINE {
            self.buf.pop();
            total -= 1;
        }
        let line = if total > MAX_LINE {
            Line::TooLong(&self.buf, total)
        } else {
            Line::Whole(&self.buf)
        };
        Ok(Some((self.number, line)))
    }
}

/// What one line of an events file yields for query `q`: a document it
/// asks for, an unreadable line (every extract sees those: its type cannot
/// be told), or nothing.
fn read_item(line: Line<'_>, number: u64, q: Option<&Query>, needles: &[Vec<u8>]) -> Option<Item> {
    use crate::quarantine::Raw;
    let bytes = match line {
        Line::TooLong(head, len) => {
            return Some(Item::Unreadable {
                raw: match std::str::from_utf8(head) {
                    Ok(s) => Raw::Text(s.to_owned()),
                    Err(_) => Raw::Bytes(head.to_vec()),
                },
                reason: format!(
                "line {number} is {len} bytes long, more than any MongoDB document ({} bytes read)",
                MAX_LINE
            ),
                line: number,
            })
        }
        Line::Whole(b) => b,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    // A whole object (it ends as it began) that does not contain any wanted
    // type as a JSON string cannot be of that type: skip it without
    // parsing. A line cut short may have lost its type with its end: it is
    // parsed, and every extract quarantines it.
    let whole = |text: &str| text.starts_with('{') && text.trim_end().ends_with('}');
    let has_type = |text: &[u8]| {
        q.is_none()
            || needles
                .iter()
                .any(|n| memchr::memmem::find(text, n).is_some())
    };
    let matches = |doc: &Document| q.is_none_or(|q| file_match(doc, q));
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            if whole(text) && !has_type(bytes) {
                return None;
            }
            match parse_line(text) {
                Ok(doc) if !matches(&doc) => None,
                Ok(doc) => Some(Item::Doc(doc, Some(number))),
                Err(reason) => Some(Item::Unreadable {
                    raw: Raw::Text(text.to_owned()),
                    reason: format!("line {number}: {reason}"),
                    line: number,
                }),
            }
        }
        Err(e) => {
            // Not UTF-8: it belongs to this query if, read leniently, it is
            // a document this query asks for, or is no document at all.
            let lossy = String::from_utf8_lossy(bytes);
            let ours = match parse_line(&lossy) {
                Ok(doc) => matches(&doc),
                Err(_) => !whole(&lossy) || has_type(bytes),
            };
            ours.then(|| Item::Unreadable {
                raw: Raw::Bytes(bytes.to_vec()),
                reason: format!(
                    "line {number} is not UTF-8: invalid bytes at offset {}",
                    e.valid_up_to()
                ),
                line: number,
            })
        }
    }
}

/// Why a line is not an event document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotADocument {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    Json(String),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// An object that is not valid Extended JSON (e.g. a bad `$date`).
    #[error("not MongoDB Extended JSON: {0}")]
    ExtendedJson(String),
}

/// Parses one line of an events file.
///
/// # Errors
/// Why the line is not an Extended JSON document.
pub fn parse_line(line: &str) -> Result<Document, NotADocument> {
    let json: serde_json::Value =
        serde_json::from_str(line).map_err(|e| NotADocument::Json(e.to_string()))?;
    match Bson::try_from(json) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(_) => Err(NotADocument::NotAnObject),
        Err(e) => Err(NotADocument::ExtendedJson(e.to_string())),
    }
}

/// Whether `doc` is one of the documents `q` asks for, as MongoDB would
/// decide it.
pub fn file_match(doc: &Document, q: &Query) -> bool {
    let type_ok =
        matches!(doc.get(&q.type_field), Some(Bson::String(t)) if q.types.iter().any(|w| w == t));
    if !type_ok || q.filter.as_ref().is_some_and(|f| !f.matches(doc)) {
        return false;
    }
    match doc.get(&q.ts_field) {
        Some(Bson::DateTime(d)) => {
            let ms = d.timestamp_millis();
            q.since_ms.is_none_or(|s| ms >= s) && q.until_ms.is_none_or(|u| ms < u)
        }
        // A document whose time is missing or not a date belongs to no
        // range: every read without an upper bound (incremental runs, the
        // feed) takes it, so that it reaches the quarantine.
        _ => q.until_ms.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_relaxed_and_canonical_extended_json() {
        let relaxed = r#"{"_id":{"$oid":"65a000000000000000000001"},"ts":{"$date":"2024-01-02T03:04:05.678Z"},"v":2,"payload":{"slide":3}}"#;
        let canonical = r#"{"_id":{"$oid":"65a000000000000000000001"},"ts":{"$date":{"$numberLong":"1704164645678"}},"v":{"$numberInt":"2"},"payload":{"slide":{"$numberInt":"3"}}}"#;
        let a = parse_line(relaxed).unwrap();
        let b = parse_line(canonical).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.get_datetime("ts").unwrap().timestamp_millis(),
            1_704_164_645_678
        );
        assert!(parse_line("{not json")
            .unwrap_err()
            .to_string()
            .starts_with("not JSON"));
        assert!(parse_line("[1,2]").is_err());
    }

    /// A line cut short reaches every extract's quarantine, even when its
    /// type was cut off with its end; a whole document of another type is
    /// skipped unparsed.
    #[test]
    fn a_line_cut_short_is_unreadable_whatever_its_type() {
        let q = Query {
            database: "app".into(),
            collection: "events".into(),
            type_field: "type".into(),
            types: vec!["slide.viewed".into()],
            filter: None,
            ts_field: "ts".into(),
            since_ms: None,
            until_ms: None,
            batch_size: 100,
        };
        let needles = vec![br#""slide.viewed""#.to_vec()];
        let item = |line: &[u8]| read_item(Line::Whole(line), 7, Some(&q), &needles);
        for cut in [
            &br#"{"_id": {"$oid": "aaaaaaaaaaaaaaaaaaaaaaa6"}, "type": "slide.vi"#[..],
            &b"{\"_id\": 1, \"type\": \"presen\xff"[..],
        ] {
            assert!(
                matches!(item(cut), Some(Item::Unreadable { line: 7, .. })),
                "{}",
                String::from_utf8_lossy(cut)
            );
        }
        assert!(item(br#"{"_id": 1, "type": "presentation.viewed"}"#).is_none());
    }
}
