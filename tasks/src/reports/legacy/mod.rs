//! The reports as the application computes them today, straight from the
//! events: MongoDB aggregation pipelines over the event collection, or, for
//! the embedded default, the same rules applied to the events file.
//!
//! The rules are the event model's: days are UTC days of `ts`; an event
//! counts once per `event_id`; a document of a known type that breaks the
//! model (a field missing or of the wrong type, a negative dwell) counts
//! nowhere. [`valid`] states those rules once, as MongoDB filters; MongoDB
//! evaluates them in `$match`, [`Filter`] on the events file.
//!
//! The pipelines stay within what MongoDB wire-protocol servers other than
//! MongoDB itself commonly evaluate correctly: `$group` by one field path
//! (a compound group key is built as one string with `$concat` in a
//! `$project`), `$first` after `$sort` rather than `$min` of dates, no date
//! arithmetic, and a date test written as a comparison with the earliest
//! date rather than `$type: "date"`. Some steps run in the application, as
//! they do in the legacy code: counting the distinct non-null viewers of a
//! group from its `$addToSet`, joining each session's first start with its
//! first end (two pipelines), and the point-in-time join of views with plan
//! changes for `views_by_plan` (two pipelines, merged in order).

use std::collections::{BTreeMap, HashMap, HashSet};

use bson::{Bson, Document};
use futures::stream::BoxStream;
use futures::TryStreamExt;
use serde_json::Value as Json;

use super::{average, Days, Grain, Range, Report, ReportName};
use crate::filter::Filter;
use crate::source::{Query, Source, SourceError};
use workflows::time::day_of;

mod pipelines;
mod spill;

use pipelines::types;
pub use pipelines::{pipeline, plan_history_pipeline, session_ends_pipeline, valid};

/// Separates the parts of a compound group key built with `$concat`.
pub(crate) const SEP: &str = "\u{1f}";

/// A legacy report could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// An aggregation failed.
    #[error("MongoDB aggregation for report {report} on {namespace}")]
    Aggregate {
        /// The report.
        report: &'static str,
        /// `database.collection`.
        namespace: String,
        /// The driver's error.
        #[source]
        source: mongodb::error::Error,
    },
    /// The events could not be spilled to, or read back from, a
    /// temporary file.
    #[error("spilling the events to a temporary file")]
    Spill(#[source] std::io::Error),
    /// An aggregation returned a document of an unexpected shape.
    #[error("MongoDB aggregation for report {report} returned {found}")]
    Shape {
        /// The report.
        report: &'static str,
        /// What came back.
        found: String,
    },
}

/// Where the events are.
#[derive(Debug, Clone)]
pub struct Events<'a> {
    /// The source.
    pub source: &'a Source,
    /// The MongoDB database.
    pub database: &'a str,
    /// The collection.
    pub collection: &'a str,
}

impl Events<'_> {
    /// A query for the event model's documents of `types` (field `type`,
    /// time `ts`), from the beginning, with no further condition.
    pub fn query(&self, types: &[&str]) -> Query {
        Query {
            database: self.database.to_owned(),
            collection: self.collection.to_owned(),
            type_field: "type".into(),
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            filter: None,
            ts_field: "ts".into(),
            since_ms: None,
            until_ms: None,
            batch_size: 10_000,
        }
    }
}

/// Computes a report at a grain as the legacy analytics do.
///
/// # Errors
/// The source cannot be read or an aggregation failed.
pub async fn from_legacy(
    events: &Events<'_>,
    name: ReportName,
    range: Range,
    grain: Grain,
) -> Result<Report, LegacyError> {
    let rows = match events.source {
        Source::Mongo(_) => {
            let side = Side::read(events, name).await?;
            let docs: Vec<Document> = aggregate(events, name, pipeline(name, range, grain))
                .await?
                .try_collect()
                .await?;
            side.rows(name, grain, &docs)?
        }
        Source::File(_) | Source::Feed(_) => from_file(events, name, range, grain).await?,
    };
    Ok(Report::new(name, grain, rows))
}

/// A legacy report at the daily grain, its rows one at a time in day
/// order (in no particular order within a day). From MongoDB the
/// aggregation's output is sorted by day on the server and turned into
/// report rows a day at a time, so only one day's groups are held (with,
/// for `views_by_plan`, every user's plan history and, for
/// `sessions_daily`, every session's end). From the events file the events
/// are spilled to temporary parts and counted a piece at a time (see
/// [`spill`]), so no day is held whole.
///
/// # Errors
/// The source cannot be read or an aggregation failed; later, a document
/// of another shape.
pub async fn daily(
    events: &Events<'_>,
    name: ReportName,
    range: Range,
) -> Result<BoxStream<'static, Result<Vec<Json>, LegacyError>>, LegacyError> {
    match events.source {
        Source::Mongo(_) => {
            let side = Side::read(events, name).await?;
            let mut stages = pipeline(name, range, Grain::Daily);
            stages.extend(pipelines::by_day(name));
            let docs = aggregate(events, name, stages).await?;
            let days = Days::new(docs, move |d: &Document| doc_day(name, d));
            Ok(Box::pin(
                futures::stream::try_unfold((days, side), move |(mut days, side)| async move {
                    let Some((_, docs)) = days.next().await? else {
                        return Ok::<_, LegacyError>(None);
                    };
                    let rows = side.rows(name, Grain::Daily, &docs)?;
                    Ok(Some((
                        futures::stream::iter(rows.into_iter().map(Ok)),
                        (days, side),
                    )))
                })
                .try_flatten(),
            ))
        }
        Source::File(_) | Source::Feed(_) => spill::rows(events, name, range, Grain::Daily).await,
    }
}

/// The output of an aggregation pipeline over the events, as it arrives.
async fn aggregate(
    events: &Events<'_>,
    name: ReportName,
    pipeline: Vec<Document>,
) -> Result<BoxStream<'static, Result<Document, LegacyError>>, LegacyError> {
    let Source::Mongo(client) = events.source else {
        unreachable!("aggregations run on MongoDB sources only");
    };
    let namespace = format!("{}.{}", events.database, events.collection);
    let failed = move |source| LegacyError::Aggregate {
        report: name.name(),
        namespace: namespace.clone(),
        source,
    };
    let cursor = client
        .database(events.database)
        .collection::<Document>(events.collection)
        .aggregate(pipeline)
        .allow_disk_use(true)
        .await
        .map_err(&failed)?;
    Ok(Box::pin(cursor.map_err(failed)))
}

/// The day of an aggregation output document of a report at the daily
/// grain: the start of its group key, or the day of its time.
fn doc_day(name: ReportName, d: &Document) -> Result<String, LegacyError> {
    let day = match name {
        ReportName::ViewsByPlan => d
            .get_datetime("ts")
            .ok()
            .map(|t| day_of(t.timestamp_millis())),
        ReportName::SessionsDaily => d
            .get_datetime("start")
            .ok()
            .map(|t| day_of(t.timestamp_millis())),
        _ => d
            .get_str("_id")
            .ok()
            .and_then(|k| k.split(SEP).next())
            .map(str::to_owned),
    };
    day.ok_or_else(|| shape(name, d))
}

fn shape(name: ReportName, d: &Document) -> LegacyError {
    LegacyError::Shape {
        report: name.name(),
        found: format!("{d:?}"),
    }
}

/// What a report needs beside its own pipeline's output: every user's plan
/// history (`views_by_plan`), every session's first end
/// (`sessions_daily`).
enum Side {
    None,
    History(History),
    Ends(HashMap<String, i64>),
}

impl Side {
    /// Reads what `name` needs, as it arrives.
    async fn read(events: &Events<'_>, name: ReportName) -> Result<Self, LegacyError> {
        Ok(match name {
            ReportName::ViewsByPlan => {
                let mut docs = aggregate(events, name, plan_history_pipeline()).await?;
                let mut history = History::default();
                while let Some(d) = docs.try_next().await? {
                    let (Ok(user), Ok(ts), Ok(plan)) = (
                        d.get_str("user_id"),
                        d.get_datetime("ts"),
                        d.get_str("plan"),
                    ) else {
                        return Err(shape(name, &d));
                    };
                    history.push(user, ts.timestamp_millis(), plan);
                }
                Self::History(history)
            }
            ReportName::SessionsDaily => {
                let mut docs = aggregate(events, name, session_ends_pipeline()).await?;
                let mut ends = HashMap::new();
                while let Some(d) = docs.try_next().await? {
                    let (Ok(id), Ok(end)) = (d.get_str("_id"), d.get_datetime("end")) else {
                        return Err(shape(name, &d));
                    };
                    ends.insert(id.to_owned(), end.timestamp_millis());
                }
                Self::Ends(ends)
            }
            _ => Self::None,
        })
    }

    /// The report rows of some of the pipeline's output documents: for a
    /// report at the daily grain, those of whole days.
    fn rows(
        &self,
        name: ReportName,
        grain: Grain,
        docs: &[Document],
    ) -> Result<Vec<Vec<Json>>, LegacyError> {
        match (name, self) {
            (ReportName::ViewsByPlan, Self::History(history)) => {
                let views = docs
                    .iter()
                    .map(|v| {
                        let ts = v.get_datetime("ts").map_err(|_| shape(name, v))?;
                        Ok((
                            ts.timestamp_millis(),
                            v.get_str("user_id").ok().map(str::to_owned),
                        ))
                    })
                    .collect::<Result<Vec<_>, LegacyError>>()?;
                Ok(views_by_plan(views.into_iter(), history))
            }
            (ReportName::SessionsDaily, Self::Ends(ends)) => {
                let sessions = docs
                    .iter()
                    .map(|d| {
                        let (Ok(id), Ok(start), Ok(device)) = (
                            d.get_str("_id"),
                            d.get_datetime("start"),
                            d.get_str("device"),
                        ) else {
                            return Err(shape(name, d));
                        };
                        let start = start.timestamp_millis();
                        Ok((start, device.to_owned(), ends.get(id).copied()))
                    })
                    .collect::<Result<Vec<_>, LegacyError>>()?;
                Ok(sessions_daily(sessions))
            }
            _ => docs
                .iter()
                .map(|g| group_row(name, grain, g).ok_or_else(|| shape(name, g)))
                .collect(),
        }
    }
}

fn int(d: &Document, k: &str) -> Option<i64> {
    match d.get(k)? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

/// A result row from one `$group` output document.
fn group_row(name: ReportName, grain: Grain, g: &Document) -> Option<Vec<Json>> {
    let key = g.get_str("_id").ok()?;
    // A day comes first and a slide number last; neither holds the
    // separator, whatever the ids do.
    let (a, b) = match name {
        ReportName::SlideEngagement => key.rsplit_once(SEP)?,
        _ => key.split_once(SEP)?,
    };
    Some(match name {
        ReportName::ViewsDaily => {
            let viewers = g
                .get_array("viewers")
                .ok()?
                .iter()
                .filter(|v| !matches!(v, Bson::Null))
                .count();
            vec![a.into(), b.into(), int(g, "views")?.into(), viewers.into()]
        }
        ReportName::SlideEngagement => {
            let (views, total) = (int(g, "views")?, int(g, "total_dwell_ms")?);
            let slide = b.parse::<i64>().ok()?;
            let mut row: Vec<Json> = match grain {
                Grain::Report => vec![a.into()],
                Grain::Daily => {
                    let (day, presentation) = a.split_once(SEP)?;
                    vec![day.into(), presentation.into()]
                }
            };
            row.extend([
                slide.into(),
                views.into(),
                total.into(),
                average(total, views),
            ]);
            row
        }
        ReportName::SharesDaily => vec![a.into(), b.into(), int(g, "shares")?.into()],
        ReportName::SessionsDaily | ReportName::ViewsByPlan => return None,
    })
}

/// Every user's plans over time, each user's changes in the order that
/// decides the plan at an instant: by time, then `_id`.
#[derive(Debug, Default)]
pub struct History(HashMap<String, Vec<(i64, String)>>);

/// Plan changes per user as read, (time, `_id`, plan), in any order.
pub type Changes = HashMap<String, Vec<(i64, String, String)>>;

impl History {
    /// The history of changes read in any order.
    pub fn from_changes(changes: Changes) -> Self {
        Self(
            changes
                .into_iter()
                .map(|(user, mut changes)| {
                    changes.sort();
                    (user, changes.into_iter().map(|(t, _, p)| (t, p)).collect())
                })
                .collect(),
        )
    }

    /// Adds a change after those that precede it (as the source sorted
    /// them).
    fn push(&mut self, user: &str, ts: i64, plan: &str) {
        self.0
            .entry(user.to_owned())
            .or_default()
            .push((ts, plan.to_owned()));
    }

    /// The plan a view by `user` at `ts` counts under, as the legacy
    /// analytics decide it: `anonymous` without a user, `unknown` before
    /// the user's first plan.
    pub fn plan_at(&self, user: Option<&str>, ts: i64) -> &str {
        let Some(user) = user else {
            return "anonymous";
        };
        self.0
            .get(user)
            .and_then(|changes| version_at(changes, ts))
            .map_or("unknown", String::as_str)
    }
}

/// The version in force at `ts` of a history sorted by time (versions at
/// the same time in the order that decides between them): the last at or
/// before `ts`.
pub(crate) fn version_at<T>(history: &[(i64, T)], ts: i64) -> Option<&T> {
    let n = history.partition_point(|(t, _)| *t <= ts);
    n.checked_sub(1).map(|i| &history[i].1)
}

fn views_by_plan(
    views: impl Iterator<Item = (i64, Option<String>)>,
    history: &History,
) -> Vec<Vec<Json>> {
    let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (ts, user) in views {
        let plan = history.plan_at(user.as_deref(), ts);
        *counts.entry((day_of(ts), plan.to_owned())).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((day, plan), n)| vec![day.into(), plan.into(), n.into()])
        .collect()
}

/// Groups sessions (start, device, end) by the day of their start and
/// their device.
fn sessions_daily(
    sessions: impl IntoIterator<Item = (i64, String, Option<i64>)>,
) -> Vec<Vec<Json>> {
    let mut per: BTreeMap<(String, String), (i64, i64, i64)> = BTreeMap::new();
    for (start, device, end) in sessions {
        let g = per.entry((day_of(start), device)).or_default();
        g.0 += 1;
        if let Some(end) = end {
            g.1 += 1;
            g.2 += end - start;
        }
    }
    per.into_iter()
        .map(|((d, dev), (s, c, t))| vec![d.into(), dev.into(), s.into(), c.into(), t.into()])
        .collect()
}

/// Applies the same rules to the events file, a part at a time.
async fn from_file(
    events: &Events<'_>,
    name: ReportName,
    range: Range,
    grain: Grain,
) -> Result<Vec<Vec<Json>>, LegacyError> {
    spill::rows(events, name, range, grain)
        .await?
        .try_collect()
        .await
}

/// One report computed by the legacy rules from documents as they come,
/// in any order: what the report of an events file is computed with.
pub struct Tally {
    name: ReportName,
    rules: Vec<(&'static str, Filter)>,
    /// Event ids counted, as 128-bit hashes: a million ids in 16 MiB
    /// instead of their strings (two ids share a hash with a chance of
    /// about 2^-128 per pair).
    seen: HashSet<u128>,
    acc: FileAcc,
}

impl Tally {
    /// Starts report `name` over `range` at `grain`.
    pub fn new(name: ReportName, range: Range, grain: Grain) -> Self {
        Self {
            name,
            rules: types(name)
                .iter()
                .map(|t| {
                    (
                        *t,
                        Filter::new(valid(t)).expect("the rules are supported filters"),
                    )
                })
                .collect(),
            seen: HashSet::new(),
            acc: FileAcc {
                range,
                grain,
                ..FileAcc::default()
            },
        }
    }

    /// Takes one document of the source (any type; those the report does
    /// not read, and those that break the model, count nowhere).
    pub fn add(&mut self, doc: &Document) {
        if self.reads(doc) {
            self.take(doc);
        }
    }

    /// Whether the report reads `doc`: one of its types, valid.
    fn reads(&self, doc: &Document) -> bool {
        doc.get_str("type")
            .is_ok_and(|ty| self.rules.iter().any(|(t, f)| *t == ty && f.matches(doc)))
    }

    /// Counts a document the report reads (see [`Tally::reads`]).
    fn take(&mut self, doc: &Document) {
        let ty = doc.get_str("type").expect("valid");
        let id = doc.get_str("_id").map(str::to_owned).unwrap_or_else(|_| {
            doc.get_object_id("_id")
                .map(|o| o.to_hex())
                .unwrap_or_default()
        });
        let ts = doc.get_datetime("ts").expect("valid").timestamp_millis();
        if matches!(ty, "user.registered" | "user.plan_changed") {
            // Every stored copy counts as a change; copies agree.
            let user = doc.get_str("user_id").expect("valid").to_owned();
            let plan = crate::schema::lookup(doc, "payload.plan")
                .and_then(Bson::as_str)
                .unwrap_or_default()
                .to_owned();
            self.acc
                .history
                .entry(user)
                .or_default()
                .push((ts, id, plan));
            return;
        }
        let event_id = doc.get_str("event_id").expect("valid");
        if !self
            .seen
            .insert(xxhash_rust::xxh3::xxh3_128(event_id.as_bytes()))
        {
            return;
        }
        self.acc.add(self.name, ty, ts, doc);
    }

    /// The report.
    pub fn finish(self) -> Report {
        let grain = self.acc.grain;
        Report::new(self.name, grain, self.acc.finish(self.name))
    }
}

/// A session's start (ts, device) and end ts, as far as seen.
type SessionEnds = (Option<(i64, String)>, Option<i64>);

/// What the file pass gathers, per report.
#[derive(Default)]
struct FileAcc {
    /// The report's time range.
    range: Range,
    /// The report's grain.
    grain: Grain,
    /// Per group key: count, a second count or total, distinct viewers.
    groups: BTreeMap<(String, String), (i64, i64, HashSet<String>)>,
    /// Per session: start (ts, device), end ts.
    sessions: HashMap<String, SessionEnds>,
    /// Views for views_by_plan.
    views: Vec<(i64, Option<String>)>,
    /// Plan changes per user: (ts, _id, plan).
    history: Changes,
}

impl FileAcc {
    fn add(&mut self, name: ReportName, ty: &str, ts: i64, doc: &Document) {
        let s = |p: &str| {
            crate::schema::lookup(doc, p)
                .and_then(Bson::as_str)
                .map(str::to_owned)
        };
        let n = |p: &str| match crate::schema::lookup(doc, p) {
            Some(Bson::Int32(i)) => Some(i64::from(*i)),
            Some(Bson::Int64(i)) => Some(*i),
            _ => None,
        };
        if ty == "session.started" || ty == "session.ended" {
            let session = self
                .sessions
                .entry(s("session_id").unwrap_or_default())
                .or_default();
            if ty == "session.started" {
                let device = s("payload.device").unwrap_or_default();
                if session.0.as_ref().is_none_or(|(t, _)| ts < *t) {
                    session.0 = Some((ts, device));
                }
            } else if session.1.is_none_or(|t| ts < t) {
                session.1 = Some(ts);
            }
            return;
        }
        if !self.range.contains(ts) {
            return;
        }
        let mut bump = |a: String, b: String, second: i64, viewer: Option<String>| {
            let g = self.groups.entry((a, b)).or_default();
            g.0 += 1;
            g.1 += second;
            g.2.extend(viewer);
        };
        match name {
            ReportName::ViewsDaily => bump(
                day_of(ts),
                s("presentation_id").unwrap_or_default(),
                0,
                s("user_id"),
            ),
            ReportName::SlideEngagement => bump(
                match self.grain {
                    Grain::Report => s("presentation_id").unwrap_or_default(),
                    Grain::Daily => {
                        format!(
                            "{}{SEP}{}",
                            day_of(ts),
                            s("presentation_id").unwrap_or_default()
                        )
                    }
                },
                n("payload.slide").unwrap_or_default().to_string(),
                n("payload.dwell_ms")
                    .or_else(|| n("payload.dwellMs"))
                    .unwrap_or_default(),
                None,
            ),
            ReportName::SharesDaily => bump(
                day_of(ts),
                s("payload.channel").unwrap_or_default(),
                0,
                None,
            ),
            ReportName::ViewsByPlan => self.views.push((ts, s("user_id"))),
            ReportName::SessionsDaily => {}
        }
    }

    fn finish(self, name: ReportName) -> Vec<Vec<Json>> {
        self.rows(name).collect()
    }

    /// The report's rows, made as they are taken (the groups are freed as
    /// they go): in day order for a report with a day (at the daily grain,
    /// every report).
    fn rows(self, name: ReportName) -> Box<dyn Iterator<Item = Vec<Json>> + Send> {
        let grain = self.grain;
        match name {
            ReportName::ViewsDaily => Box::new(self.groups.into_iter().map(
                |((d, p), (views, _, viewers))| {
                    vec![d.into(), p.into(), views.into(), viewers.len().into()]
                },
            )),
            ReportName::SlideEngagement => Box::new(self.groups.into_iter().map(
                move |((p, slide), (views, total, _))| {
                    // At the daily grain `p` is the day and the presentation.
                    let mut row: Vec<Json> = match p.split_once(SEP) {
                        Some((day, p)) if grain == Grain::Daily => {
                            vec![day.into(), p.into()]
                        }
                        _ => vec![p.into()],
                    };
                    row.extend([
                        slide.parse::<i64>().unwrap_or_default().into(),
                        views.into(),
                        total.into(),
                        average(total, views),
                    ]);
                    row
                },
            )),
            ReportName::SharesDaily => Box::new(
                self.groups
                    .into_iter()
                    .map(|((d, c), (n, _, _))| vec![d.into(), c.into(), n.into()]),
            ),
            ReportName::SessionsDaily => {
                let range = self.range;
                Box::new(
                    sessions_daily(self.sessions.into_values().filter_map(|(start, end)| {
                        // The range applies to the start only.
                        let (start, device) = start?;
                        range.contains(start).then_some((start, device, end))
                    }))
                    .into_iter(),
                )
            }
            ReportName::ViewsByPlan => {
                let history = History::from_changes(self.history);
                Box::new(views_by_plan(self.views.into_iter(), &history).into_iter())
            }
        }
    }
}
