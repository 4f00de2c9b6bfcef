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
use futures::TryStreamExt;
use serde_json::Value as Json;

use super::{average, Grain, Range, Report, ReportName};
use crate::filter::Filter;
use crate::source::{Item, Query, Source, SourceError};
use workflows::time::day_of;

mod pipelines;

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
        Source::Mongo(client) => {
            let coll = client
                .database(events.database)
                .collection::<Document>(events.collection);
            let run = |pipeline: Vec<Document>| {
                let coll = coll.clone();
                async move {
                    let cursor = coll.aggregate(pipeline).allow_disk_use(true).await?;
                    cursor.try_collect::<Vec<Document>>().await
                }
            };
            let failed = |source| LegacyError::Aggregate {
                report: name.name(),
                namespace: format!("{}.{}", events.database, events.collection),
                source,
            };
            let groups = run(pipeline(name, range, grain)).await.map_err(failed)?;
            if name == ReportName::ViewsByPlan {
                let history = run(plan_history_pipeline()).await.map_err(failed)?;
                views_by_plan_from_mongo(&groups, &history)?
            } else if name == ReportName::SessionsDaily {
                let ends = run(session_ends_pipeline()).await.map_err(failed)?;
                sessions_from_mongo(&groups, &ends)?
            } else {
                groups
                    .iter()
                    .map(|g| group_row(name, grain, g))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| LegacyError::Shape {
                        report: name.name(),
                        found: format!("{:?}", groups.first()),
                    })?
            }
        }
        Source::File(_) | Source::Feed(_) => from_file(events, name, range, grain).await?,
    };
    Ok(Report::new(name, grain, rows))
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

/// Plan changes per user, sorted by time then `_id` as the source sorts.
type History = HashMap<String, Vec<(i64, String)>>;

/// The version in force at `ts` of a history sorted by time (versions at
/// the same time in the order that decides between them): the last at or
/// before `ts`.
pub(crate) fn version_at<T>(history: &[(i64, T)], ts: i64) -> Option<&T> {
    let n = history.partition_point(|(t, _)| *t <= ts);
    n.checked_sub(1).map(|i| &history[i].1)
}

fn plan_at(history: &History, user: Option<&str>, ts: i64) -> String {
    let Some(user) = user else {
        return "anonymous".into();
    };
    history
        .get(user)
        .and_then(|changes| version_at(changes, ts))
        .cloned()
        .unwrap_or_else(|| "unknown".into())
}

fn views_by_plan(
    views: impl Iterator<Item = (i64, Option<String>)>,
    history: &History,
) -> Vec<Vec<Json>> {
    let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (ts, user) in views {
        let plan = plan_at(history, user.as_deref(), ts);
        *counts.entry((day_of(ts), plan)).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((day, plan), n)| vec![day.into(), plan.into(), n.into()])
        .collect()
}

fn views_by_plan_from_mongo(
    views: &[Document],
    history_docs: &[Document],
) -> Result<Vec<Vec<Json>>, LegacyError> {
    let shape = |d: &Document| LegacyError::Shape {
        report: ReportName::ViewsByPlan.name(),
        found: format!("{d:?}"),
    };
    let mut history: History = HashMap::new();
    for d in history_docs {
        let (Ok(user), Ok(ts), Ok(plan)) = (
            d.get_str("user_id"),
            d.get_datetime("ts"),
            d.get_str("plan"),
        ) else {
            return Err(shape(d));
        };
        history
            .entry(user.to_owned())
            .or_default()
            .push((ts.timestamp_millis(), plan.to_owned()));
    }
    let views = views
        .iter()
        .map(|v| {
            let ts = v
                .get_datetime("ts")
                .map_err(|_| shape(v))?
                .timestamp_millis();
            Ok((ts, v.get_str("user_id").ok().map(str::to_owned)))
        })
        .collect::<Result<Vec<_>, LegacyError>>()?;
    Ok(views_by_plan(views.into_iter(), &history))
}

fn sessions_from_mongo(
    starts: &[Document],
    ends: &[Document],
) -> Result<Vec<Vec<Json>>, LegacyError> {
    let shape = |d: &Document| LegacyError::Shape {
        report: ReportName::SessionsDaily.name(),
        found: format!("{d:?}"),
    };
    let mut end_of: HashMap<&str, i64> = HashMap::with_capacity(ends.len());
    for d in ends {
        let (Ok(id), Ok(end)) = (d.get_str("_id"), d.get_datetime("end")) else {
            return Err(shape(d));
        };
        end_of.insert(id, end.timestamp_millis());
    }
    let mut sessions = Vec::with_capacity(starts.len());
    for d in starts {
        let (Ok(id), Ok(start), Ok(device)) = (
            d.get_str("_id"),
            d.get_datetime("start"),
            d.get_str("device"),
        ) else {
            return Err(shape(d));
        };
        let start = start.timestamp_millis();
        sessions.push((start, device.to_owned(), end_of.get(id).copied()));
    }
    Ok(sessions_daily(sessions))
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

/// Applies the same rules to the events file, in one pass.
async fn from_file(
    events: &Events<'_>,
    name: ReportName,
    range: Range,
    grain: Grain,
) -> Result<Vec<Vec<Json>>, LegacyError> {
    let wanted = types(name);
    let rules: Vec<(&str, Filter)> = wanted
        .iter()
        .map(|t| {
            (
                *t,
                Filter::new(valid(t)).expect("the rules are supported filters"),
            )
        })
        .collect();
    let query = events.query(wanted);
    let mut stream = events.source.stream(&query).await?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut acc = FileAcc {
        range,
        grain,
        ..FileAcc::default()
    };
    while let Some(item) = stream.try_next().await? {
        let Item::Doc(doc, _) = item else { continue };
        let Ok(ty) = doc.get_str("type") else {
            continue;
        };
        if !rules.iter().any(|(t, f)| *t == ty && f.matches(&doc)) {
            continue;
        }
        let id = doc.get_str("_id").map(str::to_owned).unwrap_or_else(|_| {
            doc.get_object_id("_id")
                .map(|o| o.to_hex())
                .unwrap_or_default()
        });
        let ts = doc.get_datetime("ts").expect("valid").timestamp_millis();
        if matches!(ty, "user.registered" | "user.plan_changed") {
            // Every stored copy counts as a change; copies agree.
            let user = doc.get_str("user_id").expect("valid").to_owned();
            let plan = crate::schema::lookup(&doc, "payload.plan")
                .and_then(Bson::as_str)
                .unwrap_or_default()
                .to_owned();
            acc.history.entry(user).or_default().push((ts, id, plan));
            continue;
        }
        if !seen.insert(doc.get_str("event_id").expect("valid").to_owned()) {
            continue;
        }
        acc.add(name, ty, ts, &doc);
    }
    Ok(acc.finish(name))
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
    history: HashMap<String, Vec<(i64, String, String)>>,
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

    fn finish(mut self, name: ReportName) -> Vec<Vec<Json>> {
        match name {
            ReportName::ViewsDaily => self
                .groups
                .into_iter()
                .map(|((d, p), (views, _, viewers))| {
                    vec![d.into(), p.into(), views.into(), viewers.len().into()]
                })
                .collect(),
            ReportName::SlideEngagement => self
                .groups
                .into_iter()
                .map(|((p, slide), (views, total, _))| {
                    // At the daily grain `p` is the day and the presentation.
                    let mut row: Vec<Json> = match p.split_once(SEP) {
                        Some((day, p)) if self.grain == Grain::Daily => {
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
                })
                .collect(),
            ReportName::SharesDaily => self
                .groups
                .into_iter()
                .map(|((d, c), (n, _, _))| vec![d.into(), c.into(), n.into()])
                .collect(),
            ReportName::SessionsDaily => {
                let range = self.range;
                sessions_daily(self.sessions.into_values().filter_map(|(start, end)| {
                    // The range applies to the start only.
                    let (start, device) = start?;
                    range.contains(start).then_some((start, device, end))
                }))
            }
            ReportName::ViewsByPlan => {
                let history: History = self
                    .history
                    .drain()
                    .map(|(user, mut changes)| {
                        changes.sort();
                        (user, changes.into_iter().map(|(t, _, p)| (t, p)).collect())
                    })
                    .collect();
                views_by_plan(self.views.into_iter(), &history)
            }
        }
    }
}
