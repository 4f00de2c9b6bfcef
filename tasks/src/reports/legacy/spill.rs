//! The legacy rules over an events file in bounded memory.
//!
//! One pass over the file writes each document that a report counts, cut
//! down to the fields the rules read, to a temporary part; the parts are
//! then counted one at a time and removed as they go. A part holds
//! everything one group needs, so counting it alone gives that group's
//! exact figures, and what is held at once is one part's groups, not the
//! whole file's:
//!
//! - `views_daily`, `shares_daily` and `slide_engagement` by day are cut
//!   by the day of `ts`, and their parts are counted in day order, so
//!   report rows come out a day at a time;
//! - `slide_engagement` over the whole range is cut by presentation;
//! - `sessions_daily` is cut by session (a session's start and end can
//!   fall on different days) and `views_by_plan` by user (a view needs its
//!   viewer's plan history); their rows, a few per day, are summed over
//!   the parts.
//!
//! A part larger than [`PART_BYTES`] is cut again, before it is counted,
//! by a hash of a field of the report's group key (the presentation, the
//! channel, the session or the user) into pieces of about that size, so
//! that what is held at once does not grow with the number of events in a
//! day: every group still lies in one piece, and the pieces of a day are
//! counted one after the other, so rows still come out in day order.
//!
//! Copies of one event (the same `event_id`) are the same document stored
//! again, so they land in the same part, in file order, and the first
//! valid copy counts, as it does in one pass.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use bson::{Bson, Document};
use futures::stream::BoxStream;
use futures::TryStreamExt;
use serde_json::Value as Json;

use super::{Events, LegacyError, Tally};
use crate::reports::{Grain, Range, ReportName};
use crate::source::Item;
use workflows::time::day_of;

/// Parts cut by a hash: each holds about 1/64 of the report's documents.
const BUCKETS: u64 = 64;

/// A part larger than this is cut again before it is counted: counting
/// holds a piece's groups and event ids, a few MiB for 8 MiB of documents.
const PART_BYTES: u64 = 8 << 20;

/// How many times a part is cut again at most (a single group larger than
/// [`PART_BYTES`] cannot be cut).
const DEPTH: u64 = 2;

/// Pieces a part is cut into at most at once (each an open file).
const PIECES: u64 = 256;

/// Part files kept open for writing at once; the file is mostly in time
/// order, so the current day's part is nearly always among them.
const OPEN: usize = 16;

/// The fields the rules read; the rest of a document is not spilled.
const FIELDS: [&str; 7] = [
    "_id",
    "type",
    "event_id",
    "ts",
    "user_id",
    "presentation_id",
    "session_id",
];
const PAYLOAD: [&str; 6] = ["slide", "dwell_ms", "dwellMs", "channel", "device", "plan"];

/// The rows of report `name` over the events file, in day order for a
/// report at the daily grain (a part at a time).
pub(super) async fn rows(
    events: &Events<'_>,
    name: ReportName,
    range: Range,
    grain: Grain,
) -> Result<BoxStream<'static, Result<Vec<Json>, LegacyError>>, LegacyError> {
    rows_in_pieces(events, name, range, grain, PART_BYTES).await
}

/// [`rows`], cutting parts again into pieces of about `part_bytes`.
async fn rows_in_pieces(
    events: &Events<'_>,
    name: ReportName,
    range: Range,
    grain: Grain,
    part_bytes: u64,
) -> Result<BoxStream<'static, Result<Vec<Json>, LegacyError>>, LegacyError> {
    let rules = Tally::new(name, range, grain);
    let mut parts = Parts::new(cut(name, grain), piece_key(name), part_bytes)?;
    let mut stream = events
        .source
        .stream(&events.query(super::types(name)))
        .await?;
    while let Some(item) = stream.try_next().await? {
        let Item::Doc(doc, _) = item else { continue };
        if !rules.reads(&doc) {
            continue;
        }
        let ts = doc.get_datetime("ts").expect("valid").timestamp_millis();
        let ty = doc.get_str("type").expect("valid");
        let sessions = matches!(ty, "session.started" | "session.ended");
        let history = matches!(ty, "user.registered" | "user.plan_changed");
        // Sessions are kept whatever their time (the range applies to a
        // session's start); plan history is kept from the beginning.
        if !sessions && !history && !range.contains(ts) {
            continue;
        }
        parts.write(&doc, ts)?;
    }
    parts.close()?;
    let tally = move |path: PathBuf| {
        let mut tally = Tally::new(name, range, grain);
        let mut reader =
            BufReader::with_capacity(64 * 1024, File::open(&path).map_err(LegacyError::Spill)?);
        while let Some(bytes) = next_doc(&mut reader)? {
            tally.take(&parse(&bytes)?);
        }
        std::fs::remove_file(&path).map_err(LegacyError::Spill)?;
        Ok::<_, LegacyError>(tally.acc.rows(name))
    };
    match parts.cut {
        Cut::Day | Cut::Presentation => {
            // A part's groups are all its own: its rows are final.
            let state = (parts, tally);
            Ok(Box::pin(
                futures::stream::try_unfold(state, move |(mut parts, tally)| async move {
                    match parts.take()? {
                        Some(path) => Ok::<_, LegacyError>(Some((tally(path)?, (parts, tally)))),
                        None => Ok(None),
                    }
                })
                .map_ok(|rows| futures::stream::iter(rows.map(Ok)))
                .try_flatten(),
            ))
        }
        Cut::Session | Cut::User => {
            // Rows are (day, device or plan, counts...): a few per day,
            // summed over the parts.
            let mut sums: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
            while let Some(path) = parts.take()? {
                for row in tally(path)? {
                    let mut row = row.into_iter();
                    let (Some(Json::String(day)), Some(Json::String(key))) =
                        (row.next(), row.next())
                    else {
                        continue;
                    };
                    let counts = sums.entry((day, key)).or_default();
                    for (i, n) in row.enumerate() {
                        if counts.len() <= i {
                            counts.push(0);
                        }
                        counts[i] += n.as_i64().unwrap_or_default();
                    }
                }
            }
            let rows = sums.into_iter().map(|((day, key), counts)| {
                let mut row = vec![Json::from(day), Json::from(key)];
                row.extend(counts.into_iter().map(Json::from));
                Ok(row)
            });
            Ok(Box::pin(futures::stream::iter(rows)))
        }
    }
}

/// How a report's documents are cut into parts.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Day,
    Presentation,
    Session,
    User,
}

fn cut(name: ReportName, grain: Grain) -> Cut {
    match (name, grain) {
        (ReportName::SessionsDaily, _) => Cut::Session,
        (ReportName::ViewsByPlan, _) => Cut::User,
        (ReportName::SlideEngagement, Grain::Report) => Cut::Presentation,
        _ => Cut::Day,
    }
}

/// The temporary parts of one report, each a file of BSON documents.
struct Parts {
    cut: Cut,
    dir: tempfile::TempDir,
    /// Part name (a day, or a bucket number) to its file, in the order the
    /// parts are counted.
    files: BTreeMap<String, PathBuf>,
    /// Writers of recently written parts, the most recent last.
    open: VecDeque<(String, BufWriter<File>)>,
    /// Parts not yet counted, after [`Parts::close`], with how many times
    /// each was cut again.
    left: VecDeque<(PathBuf, u64)>,
    /// Pieces made by cutting parts again.
    pieces: usize,
    /// The size above which a part is cut again.
    part_bytes: u64,
    /// The field whose hash cuts a part again (see [`piece_key`]).
    key: &'static str,
    /// A document cut down, reused.
    slim: Document,
}

impl Parts {
    fn new(cut: Cut, key: &'static str, part_bytes: u64) -> Result<Self, LegacyError> {
        Ok(Self {
            cut,
            dir: tempfile::Builder::new()
                .prefix("cutover-legacy-")
                .tempdir()
                .map_err(LegacyError::Spill)?,
            files: BTreeMap::new(),
            open: VecDeque::new(),
            left: VecDeque::new(),
            pieces: 0,
            part_bytes,
            key,
            slim: Document::new(),
        })
    }

    /// The part of a valid document.
    fn part_of(&self, doc: &Document, ts: i64) -> String {
        let bucket = |field: &str| {
            let key = doc.get_str(field).unwrap_or_default();
            format!(
                "{:02}",
                xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % BUCKETS
            )
        };
        match self.cut {
            Cut::Day => day_of(ts),
            Cut::Presentation => bucket("presentation_id"),
            Cut::Session => bucket("session_id"),
            Cut::User => bucket("user_id"),
        }
    }

    /// Appends a valid document, cut down, to its part.
    fn write(&mut self, doc: &Document, ts: i64) -> Result<(), LegacyError> {
        self.slim.clear();
        for field in FIELDS {
            if let Some(v) = doc.get(field) {
                self.slim.insert(field, v.clone());
            }
        }
        if let Ok(payload) = doc.get_document("payload") {
            let payload: Document = PAYLOAD
                .iter()
                .filter_map(|k| payload.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                .collect();
            self.slim.insert("payload", Bson::Document(payload));
        }
        let part = self.part_of(doc, ts);
        let at = match self.open.iter().position(|(p, _)| *p == part) {
            Some(at) => at,
            None => {
                if self.open.len() == OPEN {
                    if let Some((_, mut w)) = self.open.pop_front() {
                        w.flush().map_err(LegacyError::Spill)?;
                    }
                }
                let n = self.files.len();
                let path = self
                    .files
                    .entry(part.clone())
                    .or_insert_with(|| self.dir.path().join(format!("{n}.bson")))
                    .clone();
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(LegacyError::Spill)?;
                self.open
                    .push_back((part, BufWriter::with_capacity(64 * 1024, file)));
                self.open.len() - 1
            }
        };
        let (_, w) = &mut self.open[at];
        self.slim
            .to_writer(w)
            .map_err(|e| LegacyError::Spill(std::io::Error::other(e)))
    }

    /// Flushes every part; they are then taken in order.
    fn close(&mut self) -> Result<(), LegacyError> {
        for (_, mut w) in self.open.drain(..) {
            w.flush().map_err(LegacyError::Spill)?;
        }
        self.left = std::mem::take(&mut self.files)
            .into_values()
            .map(|p| (p, 0))
            .collect();
        Ok(())
    }

    /// The next part to count, at most `part_bytes` long unless it was cut
    /// [`DEPTH`] times already (one group can be larger); `None` after the
    /// last. The caller removes it.
    fn take(&mut self) -> Result<Option<PathBuf>, LegacyError> {
        loop {
            let Some((path, depth)) = self.left.pop_front() else {
                return Ok(None);
            };
            let size = std::fs::metadata(&path).map_err(LegacyError::Spill)?.len();
            if size <= self.part_bytes || depth >= DEPTH {
                return Ok(Some(path));
            }
            let n = size.div_ceil(self.part_bytes).min(PIECES);
            let pieces = self.cut_again(&path, depth + 1, n)?;
            for piece in pieces.into_iter().rev() {
                self.left.push_front((piece, depth + 1));
            }
        }
    }

    /// Cuts a part into `n` pieces by a hash (seeded with `depth`) of a
    /// field of the report's group key, so that each group lies in one
    /// piece; the part is removed.
    fn cut_again(&mut self, path: &Path, depth: u64, n: u64) -> Result<Vec<PathBuf>, LegacyError> {
        let mut paths = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..n {
            let piece = self.dir.path().join(format!("piece-{}.bson", self.pieces));
            self.pieces += 1;
            let file = File::create(&piece).map_err(LegacyError::Spill)?;
            writers.push(BufWriter::with_capacity(64 * 1024, file));
            paths.push(piece);
        }
        let mut reader =
            BufReader::with_capacity(64 * 1024, File::open(path).map_err(LegacyError::Spill)?);
        while let Some(bytes) = next_doc(&mut reader)? {
            // Read in place: the piece's documents are parsed once, when
            // they are counted.
            let key = raw_str(&bytes, self.key).unwrap_or_default();
            let at = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), depth) % n;
            writers[at as usize]
                .write_all(&bytes)
                .map_err(LegacyError::Spill)?;
        }
        for mut w in writers {
            w.flush().map_err(LegacyError::Spill)?;
        }
        std::fs::remove_file(path).map_err(LegacyError::Spill)?;
        Ok(paths)
    }
}

/// The field of a report's group key whose hash cuts a part again, so that
/// each group lies in one piece.
fn piece_key(name: ReportName) -> &'static str {
    match name {
        ReportName::ViewsDaily | ReportName::SlideEngagement => "presentation_id",
        ReportName::SharesDaily => "payload.channel",
        ReportName::SessionsDaily => "session_id",
        ReportName::ViewsByPlan => "user_id",
    }
}

/// The string at a dotted `path` of a BSON document's bytes, without
/// parsing the rest of it.
fn raw_str<'a>(bytes: &'a [u8], path: &str) -> Option<&'a str> {
    let mut doc = bson::RawDocument::from_bytes(bytes).ok()?;
    let mut fields = path.split('.').peekable();
    while let Some(field) = fields.next() {
        if fields.peek().is_none() {
            return doc.get_str(field).ok();
        }
        doc = doc.get_document(field).ok()?;
    }
    None
}

/// The next BSON document of a part, as its bytes; `None` at the end.
fn next_doc(reader: &mut impl BufRead) -> Result<Option<Vec<u8>>, LegacyError> {
    if reader.fill_buf().map_err(LegacyError::Spill)?.is_empty() {
        return Ok(None);
    }
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).map_err(LegacyError::Spill)?;
    let len = usize::try_from(i32::from_le_bytes(len))
        .ok()
        .filter(|n| *n >= 5)
        .ok_or_else(|| LegacyError::Spill(std::io::Error::other("a part holds a bad length")))?;
    let mut bytes = vec![0u8; len];
    bytes[..4].copy_from_slice(&(len as i32).to_le_bytes());
    reader
        .read_exact(&mut bytes[4..])
        .map_err(LegacyError::Spill)?;
    Ok(Some(bytes))
}

fn parse(bytes: &[u8]) -> Result<Document, LegacyError> {
    Document::from_reader(bytes).map_err(|e| LegacyError::Spill(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::reports::Report;
    use crate::seed::{generate, SeedOptions};
    use crate::source::Source;

    /// Every report, at both grains, over the whole file and over a window,
    /// comes out of the parts as it comes out of one pass that holds
    /// everything: the seeded dirt (copies, late and invalid documents),
    /// plus a session over midnight and a plan change days before a view.
    #[tokio::test]
    async fn the_parts_count_what_one_pass_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut file = File::create(&path).unwrap();
        let opts = SeedOptions {
            events: 20_000,
            days: 5,
            ..SeedOptions::default()
        };
        generate(&opts, &mut file).unwrap();
        let day = 86_400_000;
        let at = |ms: i64| format!(r#"{{"$date":{{"$numberLong":"{}"}}}}"#, opts.start_ms + ms);
        for line in [
            format!(
                r#"{{"_id":"m1","event_id":"m1","type":"session.started","ts":{},"session_id":"s-midnight","user_id":"u-late","payload":{{"device":"tablet"}}}}"#,
                at(day - 60_000)
            ),
            format!(
                r#"{{"_id":"m2","event_id":"m2","type":"session.ended","ts":{},"session_id":"s-midnight","user_id":"u-late","payload":{{}}}}"#,
                at(day + 60_000)
            ),
            format!(
                r#"{{"_id":"m3","event_id":"m3","type":"user.plan_changed","ts":{},"user_id":"u-late","payload":{{"plan":"team"}}}}"#,
                at(1_000)
            ),
            format!(
                r#"{{"_id":"m4","event_id":"m4","type":"presentation.viewed","ts":{},"presentation_id":"p-late","session_id":"s-midnight","user_id":"u-late","payload":{{"device":"tablet"}}}}"#,
                at(3 * day)
            ),
        ] {
            writeln!(file, "{line}").unwrap();
        }
        drop(file);
        let source = Source::open(path.to_str().unwrap()).await.unwrap();
        let events = Events {
            source: &source,
            database: "app",
            collection: "events",
        };
        let window = Range {
            from_ms: Some(opts.start_ms + day),
            to_ms: Some(opts.start_ms + 3 * day),
        };
        for (_, name) in ReportName::ALL {
            for grain in [Grain::Report, Grain::Daily] {
                for range in [Range::default(), window] {
                    let mut one_pass = Tally::new(*name, range, grain);
                    let query = events.query(&[
                        "presentation.viewed",
                        "slide.viewed",
                        "presentation.shared",
                        "session.started",
                        "session.ended",
                        "user.registered",
                        "user.plan_changed",
                    ]);
                    let mut docs = source.stream(&query).await.unwrap();
                    while let Some(item) = docs.try_next().await.unwrap() {
                        if let Item::Doc(doc, _) = item {
                            one_pass.add(&doc);
                        }
                    }
                    let expected = one_pass.finish();
                    assert!(!expected.rows.is_empty(), "{name:?} {grain:?} {range:?}");
                    // Parts as they are, and cut again into pieces of
                    // about 16 KiB (a few dozen documents).
                    for part_bytes in [PART_BYTES, 16 << 10] {
                        let parts: Vec<_> =
                            rows_in_pieces(&events, *name, range, grain, part_bytes)
                                .await
                                .unwrap()
                                .try_collect()
                                .await
                                .unwrap();
                        if grain == Grain::Daily {
                            let days: Vec<_> =
                                parts.iter().map(|r| r[0].as_str().unwrap()).collect();
                            assert!(days.is_sorted(), "{name:?} {range:?}: rows in day order");
                        }
                        assert_eq!(
                            Report::new(*name, grain, parts),
                            expected,
                            "{name:?} {grain:?} {range:?} in pieces of {part_bytes} bytes"
                        );
                    }
                }
            }
        }
    }
}
