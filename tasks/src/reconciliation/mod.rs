//! Reconciliation of the legacy reports with the warehouse's, per report
//! and per UTC day: both sides are computed at the daily grain
//! ([`Grain::Daily`]), folded into one [`Summary`] per day (rows, the sum of
//! every measure, an order-independent checksum of the rows) and compared
//! under the declared [`RULES`]. A day whose summaries differ is drilled
//! down to its differing report rows and then to the events behind them
//! ([`drill`]); every reconciliation is stored in the warehouse
//! ([`record`]) and printed by [`render`].
//!
//! Only report rows cross the wire (one per group and day; for
//! `views_by_plan` from MongoDB, one per view, as the legacy code joins the
//! plan in force in the application); events are read only for a differing
//! day, in windows of at most `drill_limit` events.
//!
//! Both sides arrive sorted by day and are compared one day at a time, a
//! row at a time: a day's summaries are kept as its rows go by, and its
//! rows are written to a temporary file, read back only if the day
//! differs. A report of any length, with days of any size, is reconciled
//! holding a row of each side, plus what each differing day's result keeps
//! (its summaries, a sample of differing rows, the keys that narrow its
//! drill-down).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::time::Instant;

use futures::stream::BoxStream;
use futures::TryStreamExt;

use serde::Serialize;
use serde_json::Value as Json;
use xxhash_rust::xxh3::xxh3_64;

use crate::reports::legacy::{Events, LegacyError};
use crate::reports::{self, compare_keys, Grain, Range, Report, ReportName};
use crate::source::SourceError;
use crate::warehouse::Warehouse;

pub mod drill;
pub mod record;
pub mod render;
#[cfg(test)]
mod tests;

/// How a field is compared.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "compare", rename_all = "snake_case")]
pub enum Tolerance {
    /// Equal values only.
    Exact,
    /// Equal within this fraction of the larger magnitude.
    Relative {
        /// The fraction.
        within: f64,
    },
}

/// One declared comparison rule: what a field means on both sides and how
/// it is compared, printed with every result.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rule {
    /// The field or fields.
    pub field: &'static str,
    /// How they are compared.
    pub tolerance: Tolerance,
    /// Whether they enter the row checksum.
    pub in_checksum: bool,
    /// The normalisation both sides share.
    pub normalisation: &'static str,
}

/// Every rule, in one place.
pub const RULES: &[Rule] = &[
    Rule {
        field: "day",
        tolerance: Tolerance::Exact,
        in_checksum: true,
        normalisation: "the UTC day of the event time (sessions_daily: of the session's first \
                        start) as YYYY-MM-DD on both sides",
    },
    Rule {
        field: "group keys",
        tolerance: Tolerance::Exact,
        in_checksum: true,
        normalisation: "ids, devices, channels and plans as text; slide as a 64-bit integer",
    },
    Rule {
        field: "counts and totals",
        tolerance: Tolerance::Exact,
        in_checksum: true,
        normalisation: "64-bit integers (SQL sums cast to BIGINT)",
    },
    Rule {
        field: "avg_dwell_ms",
        tolerance: Tolerance::Relative { within: 1e-9 },
        in_checksum: false,
        normalisation: "a double, total_dwell_ms / views, rounded by each engine in its own way",
    },
];

/// The rule of a report field.
pub fn rule(field: &str) -> &'static Rule {
    RULES
        .iter()
        .find(|r| r.field == field)
        .unwrap_or(if field == "day" { &RULES[0] } else { &RULES[2] })
}

/// Whether two values of `field` agree under its rule.
pub fn agree(field: &str, a: &Json, b: &Json) -> bool {
    match (rule(field).tolerance, a.as_f64(), b.as_f64()) {
        (Tolerance::Relative { within }, Some(x), Some(y)) => {
            (x - y).abs() <= within * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

/// What one side's report holds on one day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Report rows.
    pub rows: u64,
    /// The sum of every measure over the rows.
    pub sums: BTreeMap<&'static str, Json>,
    /// The sum of a 64-bit hash of every row (group key and every measure
    /// in the checksum), as hex: independent of the rows' order.
    pub checksum: String,
}

fn cell(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => "\u{0}".into(),
        other => other.to_string(),
    }
}

impl Summary {
    /// The summary of rows of a report with these columns and group fields.
    pub fn of(columns: &[&'static str], groups: usize, rows: &[&Vec<Json>]) -> Self {
        let mut sums = Sums::default();
        for row in rows {
            sums.add(columns, groups, row);
        }
        sums.finish()
    }

    /// Whether two summaries agree under the rules.
    pub fn agrees(&self, other: &Self) -> bool {
        self.rows == other.rows
            && self.checksum == other.checksum
            && self.sums.len() == other.sums.len()
            && self
                .sums
                .iter()
                .all(|(c, v)| other.sums.get(c).is_some_and(|w| agree(c, v, w)))
    }
}

/// A [`Summary`] kept as rows go by, in any order.
#[derive(Default)]
struct Sums {
    rows: u64,
    ints: BTreeMap<&'static str, i64>,
    doubles: BTreeMap<&'static str, f64>,
    checksum: u64,
    /// The row's text, hashed into the checksum; reused.
    text: String,
}

impl Sums {
    fn add(&mut self, columns: &[&'static str], groups: usize, row: &[Json]) {
        self.text.clear();
        for v in row.iter().take(groups) {
            self.text.push_str(&cell(v));
            self.text.push('\u{1f}');
        }
        for (c, v) in columns.iter().zip(row.iter()).skip(groups) {
            match v.as_i64() {
                Some(i) if !v.is_f64() => *self.ints.entry(c).or_default() += i,
                _ => *self.doubles.entry(c).or_default() += v.as_f64().unwrap_or_default(),
            }
            if rule(c).in_checksum {
                self.text.push_str(&cell(v));
                self.text.push('\u{1f}');
            }
        }
        self.checksum = self.checksum.wrapping_add(xxh3_64(self.text.as_bytes()));
        self.rows += 1;
    }

    fn finish(self) -> Summary {
        let mut sums: BTreeMap<&'static str, Json> = self
            .ints
            .into_iter()
            .map(|(c, v)| (c, Json::from(v)))
            .collect();
        sums.extend(self.doubles.into_iter().map(|(c, v)| (c, Json::from(v))));
        Summary {
            rows: self.rows,
            sums,
            checksum: format!("{:016x}", self.checksum),
        }
    }
}

/// Whether a report, a day or a reconciliation agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Both sides agree.
    Equal,
    /// They differ.
    Differs,
}

/// A report row that differs: on one side only, or with measures that
/// disagree.
#[derive(Debug, Clone, Serialize)]
pub struct RowDiff {
    /// The group key (the day first).
    pub key: Vec<Json>,
    /// The measures that disagree (every measure when a side lacks the row).
    pub fields: Vec<&'static str>,
    /// The legacy row's measures, if it has the row.
    pub legacy: Option<Vec<Json>>,
    /// The warehouse row's measures, if it has the row.
    pub warehouse: Option<Vec<Json>>,
}

/// One day of one report.
#[derive(Debug, Clone, Serialize)]
pub struct DayResult {
    /// The UTC day.
    pub day: String,
    /// Whether the sides agree.
    pub status: Status,
    /// The legacy side (none when it has no row that day).
    pub legacy: Option<Summary>,
    /// The warehouse side.
    pub warehouse: Option<Summary>,
    /// How many report rows differ.
    pub rows_differing: usize,
    /// The first differing rows, at most the sample size.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<RowDiff>,
    /// The keys of every differing row (they narrow the drill-down).
    #[serde(skip)]
    pub keys: Vec<Vec<Json>>,
    /// The events behind the differing rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<drill::Drill>,
}

/// One report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportResult {
    /// The report.
    pub report: ReportName,
    /// Its fields at the daily grain.
    pub columns: Vec<&'static str>,
    /// How many of them are the group key.
    pub groups: usize,
    /// Whether every day agrees.
    pub status: Status,
    /// Report rows on the legacy side.
    pub legacy_rows: usize,
    /// Report rows on the warehouse side.
    pub warehouse_rows: usize,
    /// Every day either side has, in order.
    pub days: Vec<DayResult>,
    /// Seconds spent on the report.
    pub seconds: f64,
}

impl ReportResult {
    /// The days that differ.
    pub fn differing(&self) -> impl Iterator<Item = &DayResult> {
        self.days.iter().filter(|d| d.status == Status::Differs)
    }
}

/// A whole reconciliation.
#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    /// Its id.
    pub id: String,
    /// When it started (UTC, RFC 3339).
    pub started_at: String,
    /// Who ran it: `cli`, or the DAG and task.
    pub origin: String,
    /// The first day (or instant) compared, when bounded.
    pub from: Option<String>,
    /// The first day (or instant) not compared, when bounded.
    pub to: Option<String>,
    /// Whether every report agrees.
    pub status: Status,
    /// The rules applied.
    pub rules: &'static [Rule],
    /// Per report.
    pub reports: Vec<ReportResult>,
}

impl Reconciliation {
    /// Days compared and days that differ, over every report.
    pub fn totals(&self) -> (usize, usize) {
        self.reports.iter().fold((0, 0), |(n, d), r| {
            (n + r.days.len(), d + r.differing().count())
        })
    }
}

/// What to reconcile.
#[derive(Debug, Clone)]
pub struct Options {
    /// The reports.
    pub reports: Vec<ReportName>,
    /// The event time range (whole UTC days).
    pub range: Range,
    /// Differing rows and events kept per day.
    pub sample: usize,
    /// Events read at most per window of a drill-down; a larger window is
    /// bisected by time first.
    pub drill_limit: usize,
    /// Who runs it.
    pub origin: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            reports: ReportName::ALL.iter().map(|(_, r)| *r).collect(),
            range: Range::default(),
            sample: 20,
            drill_limit: 20_000,
            origin: "cli".into(),
        }
    }
}

/// A reconciliation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The legacy side failed.
    #[error("computing {report} as the legacy analytics do")]
    Legacy {
        /// The report.
        report: &'static str,
        /// Why.
        #[source]
        source: LegacyError,
    },
    /// The warehouse failed.
    #[error("{what} in the warehouse")]
    Warehouse {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A side handed out its days out of order, so that comparing them
    /// day by day would be wrong.
    #[error(
        "the {side} side of {report} gave the day {day} after {after}: its days must come in order"
    )]
    Order {
        /// The report.
        report: &'static str,
        /// `legacy` or `warehouse`.
        side: &'static str,
        /// The day out of order.
        day: String,
        /// The day before it.
        after: String,
    },
    /// A day's rows could not be written aside or read back.
    #[error("writing a day's report rows to a temporary file, or reading them back")]
    Aside(#[source] std::io::Error),
    /// The source failed during a drill-down.
    #[error("reading the events for the drill-down of {report} on {day}")]
    Source {
        /// The report.
        report: &'static str,
        /// The day.
        day: String,
        /// Why.
        #[source]
        source: SourceError,
    },
}

pub(crate) fn wh_error(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> ReconcileError {
    let what = what.into();
    move |source| ReconcileError::Warehouse { what, source }
}

/// Reconciles the reports of `options` over its range; `step` hears what
/// is being done, for progress.
///
/// # Errors
/// A side could not be read.
pub async fn reconcile(
    events: &Events<'_>,
    wh: &Warehouse,
    options: &Options,
    step: &(dyn Fn(String) + Sync),
) -> Result<Reconciliation, ReconcileError> {
    let started_at = workflows::time::timestamp(chrono::Utc::now());
    let mut results = Vec::new();
    for &name in &options.reports {
        let began = Instant::now();
        let (mut days, legacy_rows, warehouse_rows) =
            day_by_day(events, wh, name, options, step).await?;
        for day in days.iter_mut().filter(|d| d.status == Status::Differs) {
            step(format!("{}: the events behind {}", name.name(), day.day));
            let keys = std::mem::take(&mut day.keys);
            day.events = Some(drill::explain(events, wh, name, &day.day, &keys, options).await?);
        }
        let status = if days.iter().all(|d| d.status == Status::Equal) {
            Status::Equal
        } else {
            Status::Differs
        };
        results.push(ReportResult {
            report: name,
            columns: name.columns_at(Grain::Daily).to_vec(),
            groups: name.group_fields(Grain::Daily),
            status,
            legacy_rows,
            warehouse_rows,
            days,
            seconds: began.elapsed().as_secs_f64(),
        });
    }
    let status = if results.iter().all(|r| r.status == Status::Equal) {
        Status::Equal
    } else {
        Status::Differs
    };
    // A bound at midnight reads as its day, another as its instant.
    let day = |ms: Option<i64>| {
        ms.map(|ms| {
            if ms.rem_euclid(86_400_000) == 0 {
                workflows::time::day_of(ms)
            } else {
                workflows::time::format_ms(ms)
            }
        })
    };
    Ok(Reconciliation {
        id: uuid::Uuid::now_v7().to_string(),
        started_at,
        origin: options.origin.clone(),
        from: day(options.range.from_ms),
        to: day(options.range.to_ms),
        status,
        rules: RULES,
        reports: results,
    })
}

/// Compares both sides of a report one day at a time, as their rows
/// arrive in day order: a day's summaries are kept as its rows go by, and
/// the rows themselves are only written aside, to be read back and
/// matched if the day differs. What is held is one row of each side, plus,
/// per differing day, its summaries, a sample of its rows and the keys
/// that narrow its drill-down. Returns the days and the report rows each
/// side had.
async fn day_by_day(
    events: &Events<'_>,
    wh: &Warehouse,
    name: ReportName,
    options: &Options,
    step: &(dyn Fn(String) + Sync),
) -> Result<(Vec<DayResult>, usize, usize), ReconcileError> {
    let report = name.name();
    step(format!("{report}: both sides, day by day"));
    let legacy = reports::legacy::daily(events, name, options.range)
        .await
        .map_err(|source| ReconcileError::Legacy { report, source })?
        .map_err(move |source| ReconcileError::Legacy { report, source });
    let ours = reports::warehouse::daily(wh, name, options.range).map_err(move |source| {
        ReconcileError::Warehouse {
            what: format!("reading report {report}"),
            source,
        }
    });
    let mut sides = [
        Side::start(report, "legacy", Box::pin(legacy)).await?,
        Side::start(report, "warehouse", Box::pin(ours)).await?,
    ];
    let (columns, groups) = (
        name.columns_at(Grain::Daily),
        name.group_fields(Grain::Daily),
    );
    let mut aside = Aside::new().map_err(ReconcileError::Aside)?;
    let mut days = Vec::new();
    loop {
        let day = match (sides[0].day(), sides[1].day()) {
            (None, None) => break,
            (Some(x), Some(y)) => x.min(y),
            (Some(x), None) | (None, Some(x)) => x,
        }
        .to_owned();
        aside.clear().map_err(ReconcileError::Aside)?;
        let mut sums = [None, None];
        for (i, side) in sides.iter_mut().enumerate() {
            while let Some(row) = side.take(&day).await? {
                sums[i]
                    .get_or_insert_with(Sums::default)
                    .add(columns, groups, &row);
                aside.write(i, &row).map_err(ReconcileError::Aside)?;
            }
        }
        let [l, w] = sums.map(|s| s.map(Sums::finish));
        let mut read_back = || -> std::io::Result<Vec<RowDiff>> {
            let x = Report::new(name, Grain::Daily, aside.read(0)?);
            let y = Report::new(name, Grain::Daily, aside.read(1)?);
            Ok(differing_rows(&x, &y))
        };
        let mut result =
            day_result(day, l, w, options.sample, &mut read_back).map_err(ReconcileError::Aside)?;
        result.keys = drill::narrowing(std::mem::take(&mut result.keys));
        if days.len() % 30 == 0 {
            step(format!("{report}: {}", result.day));
        }
        days.push(result);
    }
    let [legacy, warehouse] = sides.map(|s| s.rows);
    Ok((days, legacy, warehouse))
}

/// One side of a day-by-day comparison: its rows, one read ahead, checked
/// to come in day order.
struct Side {
    report: &'static str,
    side: &'static str,
    stream: BoxStream<'static, Result<Vec<Json>, ReconcileError>>,
    next: Option<Vec<Json>>,
    /// Rows handed out.
    rows: usize,
}

impl Side {
    async fn start(
        report: &'static str,
        side: &'static str,
        mut stream: BoxStream<'static, Result<Vec<Json>, ReconcileError>>,
    ) -> Result<Self, ReconcileError> {
        let next = stream.try_next().await?;
        Ok(Self {
            report,
            side,
            stream,
            next,
            rows: 0,
        })
    }

    /// The day of the next row.
    fn day(&self) -> Option<&str> {
        self.next.as_deref().map(day_of_row)
    }

    /// The next row if it is of `day`.
    async fn take(&mut self, day: &str) -> Result<Option<Vec<Json>>, ReconcileError> {
        if self.day() != Some(day) {
            return Ok(None);
        }
        let row = self.next.take();
        self.next = self.stream.try_next().await?;
        if let Some(next) = self.day().filter(|next| *next < day) {
            return Err(ReconcileError::Order {
                report: self.report,
                side: self.side,
                day: next.to_owned(),
                after: day.to_owned(),
            });
        }
        self.rows += 1;
        Ok(row)
    }
}

/// A day's rows of both sides, written to temporary files as they go by
/// and read back only when the day differs.
struct Aside {
    files: [BufWriter<File>; 2],
}

impl Aside {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            files: [
                BufWriter::new(tempfile::tempfile()?),
                BufWriter::new(tempfile::tempfile()?),
            ],
        })
    }

    /// Empties both sides for the next day.
    fn clear(&mut self) -> std::io::Result<()> {
        for w in &mut self.files {
            w.flush()?;
            w.get_mut().set_len(0)?;
            w.get_mut().rewind()?;
        }
        Ok(())
    }

    fn write(&mut self, side: usize, row: &[Json]) -> std::io::Result<()> {
        let w = &mut self.files[side];
        serde_json::to_writer(&mut *w, row)?;
        w.write_all(b"\n")
    }

    /// The rows of a side written since the last [`Aside::clear`].
    fn read(&mut self, side: usize) -> std::io::Result<Vec<Vec<Json>>> {
        let w = &mut self.files[side];
        w.flush()?;
        w.get_mut().rewind()?;
        let rows = BufReader::new(w.get_ref())
            .lines()
            .map(|line| -> std::io::Result<Vec<Json>> { Ok(serde_json::from_str(&line?)?) })
            .collect();
        w.get_mut().seek(SeekFrom::End(0))?;
        rows
    }
}

fn day_of_row(row: &[Json]) -> &str {
    row.first().and_then(Json::as_str).unwrap_or_default()
}

/// The rows of each day, both sides.
fn by_day(report: &Report) -> BTreeMap<&str, Vec<&Vec<Json>>> {
    let mut days: BTreeMap<&str, Vec<&Vec<Json>>> = BTreeMap::new();
    for row in &report.rows {
        days.entry(day_of_row(row)).or_default().push(row);
    }
    days
}

/// The result of a day from its summaries; `diffs` gives its differing
/// rows, asked for only when the summaries do not agree.
fn day_result<E>(
    day: String,
    legacy: Option<Summary>,
    warehouse: Option<Summary>,
    sample: usize,
    diffs: impl FnOnce() -> Result<Vec<RowDiff>, E>,
) -> Result<DayResult, E> {
    let equal = matches!((&legacy, &warehouse), (Some(p), Some(q)) if p.agrees(q));
    let diffs = if equal { Vec::new() } else { diffs()? };
    Ok(DayResult {
        day,
        status: if equal {
            Status::Equal
        } else {
            Status::Differs
        },
        legacy,
        warehouse,
        rows_differing: diffs.len(),
        keys: diffs.iter().map(|d| d.key.clone()).collect(),
        rows: diffs.into_iter().take(sample).collect(),
        events: None,
    })
}

/// Compares two reports of the same name at the daily grain, day by day,
/// keeping at most `sample` differing rows per day.
pub fn compare(legacy: &Report, ours: &Report, sample: usize) -> Vec<DayResult> {
    let (a, b) = (by_day(legacy), by_day(ours));
    let mut days: Vec<&str> = a.keys().chain(b.keys()).copied().collect();
    days.sort_unstable();
    days.dedup();
    days.into_iter()
        .map(|day| {
            let (x, y) = (a.get(day), b.get(day));
            let summary = |rows: Option<&Vec<&Vec<Json>>>| {
                rows.map(|r| Summary::of(&legacy.columns, legacy.groups, r))
            };
            let diffs = || {
                Ok::<_, std::convert::Infallible>(row_diffs(
                    &legacy.columns,
                    legacy.groups,
                    x.map_or(&[][..], Vec::as_slice),
                    y.map_or(&[][..], Vec::as_slice),
                ))
            };
            match day_result(day.to_owned(), summary(x), summary(y), sample, diffs) {
                Ok(result) => result,
                Err(never) => match never {},
            }
        })
        .collect()
}

/// The differing rows of two reports of the same name and grain (every
/// row, not only a day's), under the same rules as [`compare`]: what a
/// shadow read compares.
pub fn differing_rows(legacy: &Report, ours: &Report) -> Vec<RowDiff> {
    let (a, b): (Vec<&Vec<Json>>, Vec<&Vec<Json>>) =
        (legacy.rows.iter().collect(), ours.rows.iter().collect());
    row_diffs(&legacy.columns, legacy.groups, &a, &b)
}

/// The differing rows of two sorted row lists.
fn row_diffs(
    columns: &[&'static str],
    groups: usize,
    a: &[&Vec<Json>],
    b: &[&Vec<Json>],
) -> Vec<RowDiff> {
    let measures = |r: &Vec<Json>| r[groups..].to_vec();
    let all: Vec<&'static str> = columns[groups..].to_vec();
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => compare_keys(&x[..groups], &y[..groups]),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push(RowDiff {
                    key: a[i][..groups].to_vec(),
                    fields: all.clone(),
                    legacy: Some(measures(a[i])),
                    warehouse: None,
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(RowDiff {
                    key: b[j][..groups].to_vec(),
                    fields: all.clone(),
                    legacy: None,
                    warehouse: Some(measures(b[j])),
                });
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let fields: Vec<&'static str> = columns
                    .iter()
                    .enumerate()
                    .skip(groups)
                    .filter(|(c, name)| !agree(name, &a[i][*c], &b[j][*c]))
                    .map(|(_, name)| *name)
                    .collect();
                if !fields.is_empty() {
                    out.push(RowDiff {
                        key: a[i][..groups].to_vec(),
                        fields,
                        legacy: Some(measures(a[i])),
                        warehouse: Some(measures(b[j])),
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}
