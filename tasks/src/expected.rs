//! What a table loaded from an extract should hold: the distinct valid
//! events the extract's selection finds in the source over a range of event
//! time, and the event ids a DAG quarantined after reading them. The verify
//! kinds compare tables with these.

use std::collections::{BTreeMap, BTreeSet, HashSet};

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
/// from `from_ms` and before `until_ms`, on the day numbers `keep` keeps,
/// and the keys of documents stored at or after `arrived_ms` (by their
/// ObjectId's time), which the run's extract may not have seen.
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
    keep: &(dyn Fn(i64) -> bool + Sync),
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
            if keep(day_number(*ts)) {
                out.days.entry(day_of(*ts)).or_default().insert(key.clone());
            }
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

/// The length of a UTC day in milliseconds.
const DAY_MS: i64 = 86_400_000;

/// The UTC day number (days since 1970-01-01) of epoch ms `ms`.
pub fn day_number(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// The date (`YYYY-MM-DD`) of UTC day number `day`.
pub fn day_name(day: i64) -> String {
    day_of(day.saturating_mul(DAY_MS))
}

/// The distinct keys of one day, summed up: how many, and the sum of their
/// 128-bit hashes. Two sets of keys with the same digest are the same set
/// (but for a chance of about 2^-128); a key held twice changes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DayDigest {
    /// Keys.
    pub keys: u64,
    /// The sum (wrapping) of [`key_hash`] of each.
    pub sum: u128,
}

impl DayDigest {
    fn add(&mut self, hash: u128) {
        self.keys += 1;
        self.sum = self.sum.wrapping_add(hash);
    }
}

/// The hash of event key `key` on day number `day`.
pub fn key_hash(day: i64, key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128_with_seed(key.as_bytes(), day as u64)
}

/// What a run's extract read, summed up per day: the verify kinds compare
/// the table with these instead of reading the source again, for the days
/// the extract read whole; on a day that differs they read the source for
/// the events.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    /// The lower bound of event time read (`None`: the beginning).
    pub since_ms: Option<i64>,
    /// The upper bound of event time read (a backfill's window), if any.
    pub until_ms: Option<i64>,
    /// The latest event time among the keys summed up.
    pub max_ts: Option<i64>,
    /// The distinct valid keys per day number, but for `during`.
    pub days: BTreeMap<i64, DayDigest>,
    /// Keys of documents stored after the extract began (less a second, by
    /// their ObjectId's time): left out of every comparison of this run.
    pub during: Vec<String>,
}

const SEEN: &str = "seen.json";

impl Seen {
    /// What the extract whose output is in `dir` saw in this run, if it
    /// recorded it.
    pub fn read(dir: &std::path::Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(dir.join(SEEN)).ok()?).ok()
    }

    /// Records it in the extract's output directory `dir`.
    ///
    /// # Errors
    /// Writing the file failed.
    pub fn write(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(dir.join(SEEN), serde_json::to_vec(self)?)
    }

    /// The first day number whose events it read whole, for a comparison
    /// of event time before `until_ms`; `None` if it cannot stand for the
    /// source there (it stopped short of `until_ms`, or read events at or
    /// after it).
    pub fn whole_from(&self, until_ms: i64) -> Option<i64> {
        if self.until_ms.is_some_and(|u| u < until_ms) || self.max_ts.is_some_and(|t| t >= until_ms)
        {
            return None;
        }
        Some(match self.since_ms {
            None => i64::MIN,
            // A day read from its start, or the next one.
            Some(s) => day_number(s) + i64::from(s.rem_euclid(DAY_MS) != 0),
        })
    }
}

/// Sums up what an extract reads, as it reads it.
#[derive(Debug)]
pub struct SeenBuilder {
    seen: Seen,
    arrived_ms: i64,
    distinct: HashSet<u64>,
}

impl SeenBuilder {
    /// For a read from `since_ms` (to `until_ms`) that began at
    /// `started_ms` (epoch ms, wall clock).
    pub fn new(since_ms: Option<i64>, until_ms: Option<i64>, started_ms: i64) -> Self {
        Self {
            seen: Seen {
                since_ms,
                until_ms,
                ..Seen::default()
            },
            arrived_ms: started_ms - 1_000,
            distinct: HashSet::new(),
        }
    }

    /// Adds a valid event: its key, its time and when it was stored (its
    /// ObjectId's time, if it has one).
    pub fn add(&mut self, key: &str, ts: i64, stored_ms: Option<i64>) {
        if stored_ms.is_some_and(|s| s >= self.arrived_ms) {
            self.seen.during.push(key.to_owned());
            return;
        }
        let day = day_number(ts);
        let hash = key_hash(day, key);
        // A key seen twice on a day counts once. Two keys whose hashes
        // share their low 64 bits would count once too: the day would then
        // differ from the table and be compared event by event.
        if self.distinct.insert(hash as u64) {
            self.seen.days.entry(day).or_default().add(hash);
            self.seen.max_ts = Some(self.seen.max_ts.map_or(ts, |m| m.max(ts)));
        }
    }

    /// What it saw.
    pub fn finish(self) -> Seen {
        self.seen
    }
}

/// A table's key and time columns over a range of its time: what the
/// verify kinds compare with the source.
#[derive(Debug, Clone, Copy)]
pub struct TableRange<'a> {
    /// The table, quoted.
    pub table: &'a str,
    /// An expression giving its event key as text.
    pub key_sql: &'a str,
    /// Its time column (epoch ms), quoted.
    pub ts: &'a str,
    /// The first event time compared (`None`: the beginning).
    pub from_ms: Option<i64>,
    /// The end (exclusive) of the event time compared.
    pub until_ms: i64,
}

impl TableRange<'_> {
    /// Streams `(key, ts)` of the rows in range, a row with no key left
    /// out, to `each`; returns the rows read.
    async fn each_row(
        &self,
        warehouse: &Warehouse,
        mut each: impl FnMut(String, i64),
    ) -> Result<u64, TaskError> {
        use futures::TryStreamExt;
        use sqlx::Row;
        let sql = warehouse.backend.sql(&format!(
            "SELECT {} AS v0, {ts} AS v1 FROM {} WHERE {ts} >= ? AND {ts} < ?",
            self.key_sql,
            self.table,
            ts = self.ts,
        ));
        let mut rows = sqlx::query(&sql)
            .bind(self.from_ms.unwrap_or(i64::MIN / 2))
            .bind(self.until_ms)
            .fetch(&warehouse.pool);
        let reading = |e| from_sqlx(format!("reading {}", self.table), e);
        let mut read = 0;
        while let Some(r) = rows.try_next().await.map_err(reading)? {
            let key = workflows::sql::text(&r, "v0").map_err(reading)?;
            let ts: i64 = r.try_get("v1").map_err(reading)?;
            read += 1;
            if let Some(key) = key {
                each(key, ts);
            }
        }
        Ok(read)
    }
}

/// A table's keys per day, summed up, and the rows read.
pub struct TableDays {
    /// Per day number.
    pub days: BTreeMap<i64, DayDigest>,
    /// Rows read.
    pub rows: u64,
}

/// Reads the table's keys in `range` as a stream and sums them up per day,
/// leaving out the keys in `during`, holding no key.
///
/// # Errors
/// Reading the table failed.
pub async fn table_days(
    warehouse: &Warehouse,
    range: TableRange<'_>,
    during: &HashSet<String>,
) -> Result<TableDays, TaskError> {
    let mut days: BTreeMap<i64, DayDigest> = BTreeMap::new();
    let rows = range
        .each_row(warehouse, |key, ts| {
            if !during.contains(&key) {
                let day = day_number(ts);
                days.entry(day).or_default().add(key_hash(day, &key));
            }
        })
        .await?;
    Ok(TableDays { days, rows })
}

/// How a comparison of a table with the source over a range splits:
/// days settled by the extract's digests, and days to compare event by
/// event.
#[derive(Debug, Default)]
pub struct Split {
    /// Days whose digests agree: how many, their events and rows.
    pub agreed_days: usize,
    /// Events on those days.
    pub agreed_events: u64,
    /// Days before this day number, and `differing`, are compared event by
    /// event (`i64::MIN`: none before).
    pub exact_before: i64,
    /// Days read whole whose digests differ.
    pub differing: BTreeSet<i64>,
    /// Keys left out on both sides.
    pub during: HashSet<String>,
}

impl Split {
    /// Whether day number `day` is compared event by event.
    pub fn exact(&self, day: i64) -> bool {
        day < self.exact_before || self.differing.contains(&day)
    }

    /// Whether some day is: the source must be read.
    pub fn needs_source(&self, from_ms: Option<i64>) -> bool {
        !self.differing.is_empty()
            || from_ms.map_or(self.exact_before > i64::MIN, |f| {
                day_number(f) < self.exact_before
            })
    }

    /// The end (exclusive, epoch ms) of the range the source must be read
    /// over, for a comparison before `until_ms`.
    pub fn source_until(&self, until_ms: i64) -> i64 {
        let last = self
            .differing
            .last()
            .map(|d| (d + 1).saturating_mul(DAY_MS));
        let before =
            (self.exact_before > i64::MIN).then(|| self.exact_before.saturating_mul(DAY_MS));
        last.into_iter()
            .chain(before)
            .max()
            .unwrap_or(until_ms)
            .min(until_ms)
    }
}

/// Compares the extract's digests `seen` (if it recorded them) with the
/// table's in `range` (read by [`table_days`]); returns the split and the
/// rows read.
///
/// # Errors
/// Reading the table failed.
pub async fn split(
    seen: Option<Seen>,
    warehouse: &Warehouse,
    range: TableRange<'_>,
) -> Result<(Split, u64), TaskError> {
    let (from_ms, until_ms) = (range.from_ms, range.until_ms);
    let whole_from = seen.as_ref().and_then(|s| s.whole_from(until_ms));
    let (Some(seen), Some(whole_from)) = (seen, whole_from) else {
        // Everything is compared event by event.
        return Ok((
            Split {
                exact_before: i64::MAX,
                ..Split::default()
            },
            0,
        ));
    };
    let during: HashSet<String> = seen.during.into_iter().collect();
    let start = from_ms.map_or(whole_from, |f| whole_from.max(day_number(f)));
    let table_from = (start > i64::MIN).then(|| start.saturating_mul(DAY_MS));
    let held = table_days(
        warehouse,
        TableRange {
            from_ms: table_from.or(from_ms),
            ..range
        },
        &during,
    )
    .await?;
    let mut out = Split {
        exact_before: whole_from,
        during,
        ..Split::default()
    };
    let days: BTreeSet<i64> = seen
        .days
        .range(start..)
        .map(|(d, _)| *d)
        .chain(held.days.keys().copied())
        .collect();
    for day in days {
        let source = seen.days.get(&day).copied().unwrap_or_default();
        if held.days.get(&day).copied().unwrap_or_default() == source {
            out.agreed_days += 1;
            out.agreed_events += source.keys;
        } else {
            out.differing.insert(day);
        }
    }
    Ok((out, held.rows))
}

/// The days a [`Split`] leaves to compare event by event, from both sides,
/// without the keys stored during the run (on either count).
#[derive(Debug, Default)]
pub struct Exact {
    /// Source documents read.
    pub read: u64,
    /// The source's distinct valid keys per date.
    pub source: BTreeMap<String, HashSet<String>>,
    /// The table's rows, `(key, time)`.
    pub table: Vec<(String, i64)>,
}

/// Reads the days of `range` that `split` compares event by event, from
/// `source` through `selection` and from the table; nothing when it
/// compares none. `arrived_ms` is when the run's extract began (less the
/// ObjectId's precision): a document stored since may or may not be loaded
/// yet, so it is left out on both sides, and the next run checks it.
///
/// # Errors
/// Reading the source or the table failed.
pub async fn exact_days(
    source: &Source,
    selection: &Selection,
    warehouse: &Warehouse,
    range: TableRange<'_>,
    split: &Split,
    arrived_ms: Option<i64>,
) -> Result<Exact, TaskError> {
    if !split.needs_source(range.from_ms) {
        return Ok(Exact::default());
    }
    let until_ms = split.source_until(range.until_ms);
    let keep = |day: i64| split.exact(day);
    let SourceKeys {
        read,
        mut days,
        during,
    } = source_keys(
        source,
        selection,
        range.from_ms,
        until_ms,
        arrived_ms,
        &keep,
    )
    .await?;
    let left_out = |k: &String| during.contains(k) || split.during.contains(k);
    for keys in days.values_mut() {
        keys.retain(|k| !left_out(k));
    }
    let mut table = Vec::new();
    TableRange { until_ms, ..range }
        .each_row(warehouse, |key, ts| {
            if split.exact(day_number(ts)) && !left_out(&key) {
                table.push((key, ts));
            }
        })
        .await?;
    Ok(Exact {
        read,
        source: days,
        table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = DAY_MS;

    #[test]
    fn a_day_counts_each_key_once_and_leaves_out_late_stored_documents() {
        let mut b = SeenBuilder::new(None, None, 100 * DAY);
        b.add("a", 3 * DAY + 5, Some(0));
        b.add("a", 3 * DAY + 9, Some(0)); // a duplicate of the same day
        b.add("b", 3 * DAY + 7, None);
        b.add("a", 4 * DAY, Some(0)); // the same key on another day
        b.add("late", 4 * DAY + 1, Some(100 * DAY)); // stored after the read began
        let seen = b.finish();
        assert_eq!(seen.days[&3].keys, 2);
        assert_eq!(
            seen.days[&3].sum,
            key_hash(3, "a").wrapping_add(key_hash(3, "b"))
        );
        assert_eq!(seen.days[&4].keys, 1);
        assert_eq!(seen.during, vec!["late".to_owned()]);
        assert_eq!(seen.max_ts, Some(4 * DAY));
        // The same keys in another order sum up the same.
        let mut c = DayDigest::default();
        c.add(key_hash(3, "b"));
        c.add(key_hash(3, "a"));
        assert_eq!(c, seen.days[&3]);
    }

    #[test]
    fn only_days_read_from_their_start_stand_for_the_source() {
        let seen = |since, until, max_ts| Seen {
            since_ms: since,
            until_ms: until,
            max_ts,
            ..Seen::default()
        };
        assert_eq!(
            seen(None, None, Some(5 * DAY)).whole_from(6 * DAY),
            Some(i64::MIN)
        );
        // Read from mid-day 2: day 2 is not whole, day 3 is.
        assert_eq!(
            seen(Some(2 * DAY + 1), None, None).whole_from(6 * DAY),
            Some(3)
        );
        assert_eq!(seen(Some(2 * DAY), None, None).whole_from(6 * DAY), Some(2));
        // Events at or after the end compared: the digests hold more.
        assert_eq!(seen(None, None, Some(6 * DAY)).whole_from(6 * DAY), None);
        // A window that stops short of the end.
        assert_eq!(seen(None, Some(5 * DAY), None).whole_from(6 * DAY), None);
    }

    #[test]
    fn the_source_is_read_only_over_the_days_compared_event_by_event() {
        let none = Split {
            exact_before: i64::MIN,
            ..Split::default()
        };
        assert!(!none.needs_source(None));
        assert!(!none.needs_source(Some(4 * DAY)));
        let history = Split {
            exact_before: 3,
            ..Split::default()
        };
        assert!(history.needs_source(None));
        assert!(history.needs_source(Some(2 * DAY)));
        assert!(!history.needs_source(Some(3 * DAY)));
        assert_eq!(history.source_until(10 * DAY), 3 * DAY);
        assert!(history.exact(2) && !history.exact(3));
        let differing = Split {
            exact_before: 3,
            differing: [5, 7].into(),
            ..Split::default()
        };
        assert!(differing.needs_source(Some(3 * DAY)));
        assert_eq!(differing.source_until(10 * DAY), 8 * DAY);
        assert_eq!(differing.source_until(7 * DAY + 5), 7 * DAY + 5);
        assert!(differing.exact(5) && !differing.exact(6) && differing.exact(7));
        let all = Split {
            exact_before: i64::MAX,
            ..Split::default()
        };
        assert!(all.needs_source(Some(0)));
        assert_eq!(all.source_until(10 * DAY), 10 * DAY);
    }
}
