//! Event sources: a MongoDB collection (`mongodb://...`) or, as the embedded
//! default, an events file in mongoexport form (one document per line, in
//! MongoDB Extended JSON v2, relaxed or canonical); and the documents of one
//! micro-batch of the live feed, in memory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;

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

/// One item read from a source.
#[derive(Debug, Clone)]
pub enum Item {
    /// A document.
    Doc(Document),
    /// A line of an events file that is not a document.
    Unreadable {
        /// The line as read.
        raw: String,
        /// Why it is not a document.
        reason: String,
    },
}

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
            let client = mongodb::Client::with_uri_str(url)
                .await
                .map_err(|e| SourceError::Mongo("connection string is invalid".into(), e))?;
            Ok(Self::Mongo(client))
        } else {
            Ok(Self::File(PathBuf::from(url.trim_start_matches("file:"))))
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
                Ok(cursor
                    .map(move |r| {
                        r.map(Item::Doc)
                            .map_err(|e| SourceError::Mongo(what.clone(), e))
                    })
                    .boxed())
            }
            Self::Feed(docs) => {
                let docs = Arc::clone(docs);
                let q = q.clone();
                let wanted: Vec<Item> = docs
                    .iter()
                    .filter(|d| file_match(d, &q))
                    .cloned()
                    .map(Item::Doc)
                    .collect();
                Ok(futures::stream::iter(wanted.into_iter().map(Ok)).boxed())
            }
            Self::File(path) => {
                let file =
                    std::fs::File::open(path).map_err(|e| SourceError::File(path.clone(), e))?;
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Item, SourceError>>(1024);
                let q = q.clone();
                let path = path.clone();
                // A line that does not contain any wanted type as a JSON
                // string cannot be of that type: skip it without parsing.
                let needles: Vec<String> = q
                    .types
                    .iter()
                    .map(|t| serde_json::Value::from(t.as_str()).to_string())
                    .collect();
                tokio::task::spawn_blocking(move || {
                    let reader = BufReader::with_capacity(1 << 20, file);
                    for line in reader.lines() {
                        let item = match line {
                            Err(e) => Err(SourceError::File(path.clone(), e)),
                            Ok(line) if line.trim().is_empty() => continue,
                            Ok(line)
                                if line.starts_with('{')
                                    && !needles.iter().any(|n| line.contains(n.as_str())) =>
                            {
                                continue
                            }
                            Ok(line) => match parse_line(&line) {
                                Ok(doc) if !file_match(&doc, &q) => continue,
                                Ok(doc) => Ok(Item::Doc(doc)),
                                Err(reason) => Ok(Item::Unreadable { raw: line, reason }),
                            },
                        };
                        let stop = item.is_err();
                        if tx.blocking_send(item).is_err() || stop {
                            break;
                        }
                    }
                });
                Ok(futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
                )
                .boxed())
            }
        }
    }
}

/// Parses one line of an events file.
///
/// # Errors
/// Why the line is not an Extended JSON document.
pub fn parse_line(line: &str) -> Result<Document, String> {
    let json: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    match Bson::try_from(json) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not MongoDB Extended JSON: {e}")),
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
        _ => q.since_ms.is_none() && q.until_ms.is_none(),
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
        assert!(parse_line("{not json").unwrap_err().starts_with("not JSON"));
        assert!(parse_line("[1,2]").is_err());
    }
}
