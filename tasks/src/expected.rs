//! What a table loaded from an extract should hold: the distinct valid
//! events the extract's selection finds in the source over a range of event
//! time, and the event ids a DAG quarantined after reading them. The verify
//! kinds compare tables with these.

use std::collections::{BTreeMap, HashSet};

use futures::StreamExt;
use workflows::time::day_of;
use workflows::TaskError;

use crate::error::from_sqlx;
use crate::schema::{read_row, Value};
use crate::source::{Item, Query, Selection, Source};
use crate::warehouse::Warehouse;

/// What the source holds in a range.
#[derive(Debug, Clone, Default)]
pub struct SourceKeys {
    /// Documents read.
    pub read: u64,
    /// Distinct valid event keys per UTC day.
    pub days: BTreeMap<String, HashSet<String>>,
    /// Keys of documents stored after the run's extract began.
    pub during: HashSet<String>,
}

/// Distinct valid event keys per day in `source` as `selection` reads it,
/// from `from_ms` and before `until_ms`, and the keys of documents stored
/// at or after `arrived_ms` (by their ObjectId's time), which the run's
/// extract may not have seen.
///
/// # Errors
/// The selection has no key or timestamp column, or reading the source
/// failed.
pub async fn source_keys(
    source: &Source,
    selection: &Selection,
    from_ms: Option<i64>,
    until_ms: i64,
    arrived_ms: Option<i64>,
) -> Result<SourceKeys, TaskError> {
    let key_idx = selection
        .columns
        .keys()
        .position(|c| c.as_str() == selection.key)
        .ok_or_else(|| TaskError::fatal("no key column"))?;
    let ts_idx = selection
        .columns
        .keys()
        .position(|c| c.as_str() == selection.ts_column)
        .ok_or_else(|| TaskError::fatal("no timestamp column"))?;
    let mut stream = source
        .stream(&Query {
            since_ms: from_ms,
            until_ms: Some(until_ms),
            ..selection.query.clone()
        })
        .await?;
    let mut out = SourceKeys::default();
    while let Some(item) = stream.next().await {
        out.read += 1;
        let Item::Doc(doc, _) = item? else { continue };
        let Ok(row) = read_row(&doc, &selection.columns) else {
            continue;
        };
        if let (Value::Str(key), Value::Int(ts)) = (&row[key_idx], &row[ts_idx]) {
            let stored_ms = doc
                .get_object_id("_id")
                .ok()
                .map(|o| o.timestamp().timestamp_millis());
            if let (Some(stored), Some(arrived)) = (stored_ms, arrived_ms) {
                if stored >= arrived {
                    out.during.insert(key.clone());
                }
            }
            out.days.entry(day_of(*ts)).or_default().insert(key.clone());
        }
    }
    Ok(out)
}

/// The event ids DAG `dag` quarantined after reading them (a transform or a
/// load set them aside), which its tables cannot hold. The quarantine
/// stores ids as it can (NULs escaped, clipped): compare with
/// [`is_quarantined`].
///
/// # Errors
/// Reading the quarantine failed.
pub async fn quarantined(warehouse: &Warehouse, dag: &str) -> Result<HashSet<String>, TaskError> {
    let sql = warehouse
        .backend
        .sql("SELECT event_id FROM cutover_quarantine WHERE dag = ? AND event_id IS NOT NULL");
    let rows = sqlx::query(&sql)
        .bind(dag)
        .fetch_all(&warehouse.pool)
        .await
        .map_err(|e| from_sqlx("reading the quarantine", e))?;
    rows.iter()
        .map(|r| {
            workflows::sql::text(r, "event_id")
                .map(Option::unwrap_or_default)
                .map_err(|e| from_sqlx("reading the quarantine", e))
        })
        .collect()
}

/// Whether event id `key` is among the `quarantined` ids, in the form the
/// quarantine stores them.
pub fn is_quarantined(quarantined: &HashSet<String>, key: &str) -> bool {
    quarantined.contains(key) || quarantined.contains(&crate::quarantine::clip(key, 1000))
}
