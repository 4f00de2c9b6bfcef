//! The diagonal slice: a small, deterministic sample of entities and days
//! that cuts across every dimension of the data (days, plans, devices,
//! channels, payload versions and the dirt of the event model), with every
//! report row that touches a sampled entity on its day, legacy and
//! warehouse side by side. It is the release test a reviewer reads and
//! signs.
//!
//! Two reads of the source: the first ([`strata`]) finds what each stratum
//! holds and keeps a few seeded candidates per stratum; the second reads
//! only the sampled entities' events, to find the report rows they touch.
//! Both sides of the reports are then computed for the touched days only,
//! at the daily grain, and compared under the reconciliation's rules.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bson::{doc, Bson, Document};
use chrono_tz::Tz;
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::Value as Json;

use crate::filter::Filter;
use crate::reconciliation::drill::day_bounds;
use crate::reconciliation::{agree, wh_error, ReconcileError, Rule, Status, RULES};
use crate::reports::legacy::{valid, Events};
use crate::reports::{self, compare_keys, Grain, Range, ReportName};
use crate::schema::lookup;
use crate::source::{Item, SourceError};
use crate::warehouse::Warehouse;
use workflows::time::day_of;

pub mod render;
pub mod strata;
#[cfg(test)]
mod tests;

pub use strata::{dst_days, Entity, EntityKind, StratumSpec, LATE_AFTER_MS};
use strata::{Candidate, Survey, FACT_TYPES};

/// What to sample.
#[derive(Debug, Clone)]
pub struct Options {
    /// Samples wanted; raised to the number of strata the data holds, so
    /// that each is covered.
    pub size: usize,
    /// The seed of the choice.
    pub seed: u64,
    /// The event time range (whole UTC days).
    pub range: Range,
    /// The time zone whose daylight-saving changes give day strata.
    pub time_zone: Tz,
    /// The command line that reproduces the slice, printed in it.
    pub command: String,
}

/// A stratum and what covers it.
#[derive(Debug, Clone, Serialize)]
pub struct Stratum {
    /// Where it sits and what it means.
    #[serde(flatten)]
    pub spec: StratumSpec,
    /// How many candidates the data offered (0: the stratum is empty).
    pub candidates: u64,
    /// The samples that cover it, by number.
    pub samples: Vec<usize>,
}

/// One sampled entity on one day.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Its number in the document, from 1.
    pub n: usize,
    /// The entity.
    pub entity: Entity,
    /// The UTC day.
    pub day: String,
    /// The strata it was chosen for.
    pub strata: Vec<String>,
    /// The event or fact that made it a candidate.
    pub why: String,
    /// How many report rows it touches.
    pub rows: usize,
}

/// How one report row compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Both sides have it, with agreeing measures.
    Equal,
    /// Both sides have it; some measures disagree.
    Differs,
    /// Only the legacy analytics have it.
    LegacyOnly,
    /// Only the warehouse has it.
    WarehouseOnly,
    /// The sampled events say it exists; neither side has it.
    Absent,
}

impl Verdict {
    /// Whether the row agrees.
    pub fn agrees(self) -> bool {
        self == Self::Equal
    }
}

/// A report row touched by samples.
#[derive(Debug, Clone, Serialize)]
pub struct SliceRow {
    /// The group key, the day first.
    pub key: Vec<Json>,
    /// The legacy measures.
    pub legacy: Option<Vec<Json>>,
    /// The warehouse measures.
    pub warehouse: Option<Vec<Json>>,
    /// The verdict.
    pub verdict: Verdict,
    /// The measures that disagree.
    pub differing: Vec<&'static str>,
    /// The samples that touch it.
    pub samples: Vec<usize>,
}

/// One report's touched rows.
#[derive(Debug, Clone, Serialize)]
pub struct SliceReport {
    /// The report.
    pub report: ReportName,
    /// Its fields at the daily grain.
    pub columns: Vec<&'static str>,
    /// How many are the group key.
    pub groups: usize,
    /// Whether every row agrees.
    pub status: Status,
    /// The rows, in report order.
    pub rows: Vec<SliceRow>,
}

/// A whole slice.
#[derive(Debug, Clone, Serialize)]
pub struct Slice {
    /// When it was made (UTC, RFC 3339).
    pub generated_at: String,
    /// The command that reproduces it.
    pub command: String,
    /// The seed.
    pub seed: u64,
    /// Samples asked for.
    pub size: usize,
    /// The time zone of the daylight-saving strata.
    pub time_zone: String,
    /// The first day, when bounded.
    pub from: Option<String>,
    /// The first day not read, when bounded.
    pub to: Option<String>,
    /// Documents read in the first pass.
    pub documents: u64,
    /// Documents of a known type that break the event model (they count
    /// nowhere).
    pub invalid: u64,
    /// Whether every touched row agrees.
    pub status: Status,
    /// The comparison rules.
    pub rules: &'static [Rule],
    /// Every stratum, empty ones included.
    pub strata: Vec<Stratum>,
    /// The samples.
    pub samples: Vec<Sample>,
    /// The touched rows per report.
    pub reports: Vec<SliceReport>,
}

impl Slice {
    /// Rows compared and rows that differ.
    pub fn totals(&self) -> (usize, usize) {
        self.reports.iter().fold((0, 0), |(n, d), r| {
            (
                n + r.rows.len(),
                d + r.rows.iter().filter(|x| !x.verdict.agrees()).count(),
            )
        })
    }
}

fn source_error(report: &'static str, day: &str) -> impl FnOnce(SourceError) -> ReconcileError {
    let day = day.to_owned();
    move |source| ReconcileError::Source {
        report,
        day,
        source,
    }
}

/// Candidates kept per stratum: enough for every sample to come from one.
fn keep(size: usize) -> usize {
    size.clamp(4, 256)
}

/// Makes a slice; `step` hears what is being done, for progress.
///
/// # Errors
/// The source or the warehouse cannot be read.
pub async fn slice(
    events: &Events<'_>,
    wh: &Warehouse,
    options: &Options,
    step: &(dyn Fn(String) + Sync),
) -> Result<Slice, ReconcileError> {
    let generated_at = workflows::time::timestamp(chrono::Utc::now());
    let mut survey = Survey::new(options.seed, keep(options.size), options.range);
    let mut stream = events
        .source
        .stream(&events.query(strata::ALL_TYPES))
        .await
        .map_err(source_error("the strata", "every day"))?;
    while let Some(item) = stream
        .try_next()
        .await
        .map_err(source_error("the strata", "every day"))?
    {
        match item {
            Item::Doc(doc, _) => survey.add(&doc),
            Item::Unreadable { .. } => survey.skipped += 1,
        }
        if survey.read.is_multiple_of(50_000) {
            step(format!(
                "finding the strata: {} documents read",
                survey.read
            ));
        }
    }
    drop(stream);
    survey.finish(options.time_zone);
    let (strata, mut samples) = choose(&survey, options);
    step(format!(
        "reading the events of {} sampled entities",
        samples.len()
    ));
    let touches = touches(events, &survey, &samples, options.range).await?;
    let reports = compare(events, wh, touches, step).await?;
    for s in &mut samples {
        s.rows = reports
            .iter()
            .flat_map(|r| &r.rows)
            .filter(|r| r.samples.contains(&s.n))
            .count();
    }
    let status = if reports.iter().all(|r| r.status == Status::Equal) {
        Status::Equal
    } else {
        Status::Differs
    };
    Ok(Slice {
        generated_at,
        command: options.command.clone(),
        seed: options.seed,
        size: options.size,
        time_zone: options.time_zone.to_string(),
        from: options.range.from_ms.map(day_of),
        to: options.range.to_ms.map(day_of),
        documents: survey.read,
        invalid: survey.invalid,
        status,
        rules: RULES,
        strata,
        samples,
        reports,
    })
}

/// Chooses the samples: one per stratum the data holds (a candidate that
/// is already a sample covers the stratum too), then more in turn, each
/// stratum's next best, until `size` samples.
fn choose(survey: &Survey, options: &Options) -> (Vec<Stratum>, Vec<Sample>) {
    let specs = strata::specs(options.time_zone, survey.strata.keys().cloned());
    let lists: Vec<Vec<Candidate>> = specs
        .iter()
        .map(|s| {
            survey
                .strata
                .get(&s.name)
                .map(strata::Reservoir::candidates)
                .unwrap_or_default()
        })
        .collect();
    let mut strata: Vec<Stratum> = specs
        .into_iter()
        .map(|spec| Stratum {
            candidates: survey.strata.get(&spec.name).map_or(0, |r| r.seen()),
            spec,
            samples: Vec::new(),
        })
        .collect();
    let mut samples: Vec<Sample> = Vec::new();
    let present = lists.iter().filter(|l| !l.is_empty()).count();
    let size = options.size.max(present);
    let deepest = lists.iter().map(Vec::len).max().unwrap_or(0);
    for round in 0..deepest {
        for (i, list) in lists.iter().enumerate() {
            let Some(c) = list.get(round) else { continue };
            let name = strata[i].spec.name.clone();
            if let Some(s) = samples
                .iter_mut()
                .find(|s| s.entity == c.entity && s.day == c.day)
            {
                // Only the first round counts a repeat as coverage.
                if round == 0 && !s.strata.contains(&name) {
                    s.strata.push(name);
                    strata[i].samples.push(s.n);
                }
                continue;
            }
            if round > 0 && samples.len() >= size {
                continue;
            }
            let n = samples.len() + 1;
            samples.push(Sample {
                n,
                entity: c.entity.clone(),
                day: c.day.clone(),
                strata: vec![name],
                why: c.anchor.clone(),
                rows: 0,
            });
            strata[i].samples.push(n);
        }
        if samples.len() >= size {
            break;
        }
    }
    (strata, samples)
}

/// Report rows touched by samples: per report, per key text, the key and
/// the samples.
type Touches = BTreeMap<ReportName, BTreeMap<String, (Vec<Json>, BTreeSet<usize>)>>;

fn touch(t: &mut Touches, report: ReportName, key: Vec<Json>, sample: usize) {
    let text = serde_json::to_string(&key).unwrap_or_default();
    t.entry(report)
        .or_default()
        .entry(text)
        .or_insert_with(|| (key, BTreeSet::new()))
        .1
        .insert(sample);
}

/// The second pass: the sampled entities' events, and the report rows
/// they touch under the legacy rules.
async fn touches(
    events: &Events<'_>,
    survey: &Survey,
    samples: &[Sample],
    range: Range,
) -> Result<Touches, ReconcileError> {
    let mut t = Touches::new();
    let mut by_entity: HashMap<&Entity, Vec<&Sample>> = HashMap::new();
    for s in samples {
        by_entity.entry(&s.entity).or_default().push(s);
    }
    let session_row = |session: &str| {
        let span = survey.sessions.get(session)?;
        let (start, device) = span.start.as_ref()?;
        range
            .contains(*start)
            .then(|| vec![Json::from(day_of(*start)), Json::from(device.as_str())])
    };
    // A session's own row, whatever its day.
    for s in samples
        .iter()
        .filter(|s| s.entity.kind == EntityKind::Session)
    {
        if let Some(key) = session_row(&s.entity.id) {
            touch(&mut t, ReportName::SessionsDaily, key, s.n);
        }
    }
    let ids = |kind: EntityKind| -> Vec<String> {
        let set: BTreeSet<&str> = samples
            .iter()
            .filter(|s| s.entity.kind == kind)
            .map(|s| s.entity.id.as_str())
            .collect();
        set.into_iter().map(str::to_owned).collect()
    };
    let mut arms: Vec<Document> = Vec::new();
    for (kind, field) in [
        (EntityKind::Presentation, "presentation_id"),
        (EntityKind::User, "user_id"),
        (EntityKind::Session, "session_id"),
    ] {
        let ids = ids(kind);
        if !ids.is_empty() {
            arms.push(doc! { field: { "$in": ids } });
        }
    }
    if arms.is_empty() {
        return Ok(t);
    }
    let rules: Vec<Document> = FACT_TYPES.iter().map(|ty| valid(ty)).collect();
    let query = crate::source::Query {
        filter: Some(
            Filter::new(doc! { "$and": [ { "$or": rules }, { "$or": arms } ] })
                .expect("the rules are supported filters"),
        ),
        since_ms: range.from_ms,
        until_ms: range.to_ms,
        ..events.query(FACT_TYPES)
    };
    let failed = source_error("the sampled entities", "their days");
    let mut stream = events.source.stream(&query).await.map_err(failed)?;
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(item) = stream
        .try_next()
        .await
        .map_err(source_error("the sampled entities", "their days"))?
    {
        let Item::Doc(doc, _) = item else { continue };
        let (Ok(ty), Ok(ts)) = (doc.get_str("type"), doc.get_datetime("ts")) else {
            continue;
        };
        let ts = ts.timestamp_millis();
        if !seen.insert(doc.get_str("event_id").unwrap_or_default().to_owned()) {
            continue;
        }
        let day = day_of(ts);
        let text = |p: &str| lookup(&doc, p).and_then(Bson::as_str).map(str::to_owned);
        let mut mine: Vec<usize> = Vec::new();
        for (kind, field) in [
            (EntityKind::Presentation, "presentation_id"),
            (EntityKind::User, "user_id"),
            (EntityKind::Session, "session_id"),
        ] {
            let Some(id) = text(field) else { continue };
            let entity = Entity { kind, id };
            for s in by_entity.get(&entity).into_iter().flatten() {
                if s.day == day && !mine.contains(&s.n) {
                    mine.push(s.n);
                }
            }
        }
        if mine.is_empty() {
            continue;
        }
        let presentation = Json::from(text("presentation_id").unwrap_or_default());
        let mut keys: Vec<(ReportName, Vec<Json>)> = Vec::new();
        match ty {
            "presentation.viewed" => {
                keys.push((
                    ReportName::ViewsDaily,
                    vec![Json::from(day.as_str()), presentation],
                ));
                let plan = survey.plan_at(text("user_id").as_deref(), ts);
                keys.push((
                    ReportName::ViewsByPlan,
                    vec![Json::from(day.as_str()), Json::from(plan)],
                ));
                if let Some(key) = text("session_id").and_then(|s| session_row(&s)) {
                    keys.push((ReportName::SessionsDaily, key));
                }
            }
            "slide.viewed" => {
                let slide = match lookup(&doc, "payload.slide") {
                    Some(Bson::Int32(i)) => i64::from(*i),
                    Some(Bson::Int64(i)) => *i,
                    _ => 0,
                };
                keys.push((
                    ReportName::SlideEngagement,
                    vec![Json::from(day.as_str()), presentation, Json::from(slide)],
                ));
            }
            "presentation.shared" => keys.push((
                ReportName::SharesDaily,
                vec![
                    Json::from(day.as_str()),
                    Json::from(text("payload.channel").unwrap_or_default()),
                ],
            )),
            "session.started" | "session.ended" => {
                if let Some(key) = text("session_id").and_then(|s| session_row(&s)) {
                    keys.push((ReportName::SessionsDaily, key));
                }
            }
            _ => {}
        }
        for (report, key) in keys {
            for n in &mine {
                touch(&mut t, report, key.clone(), *n);
            }
        }
    }
    Ok(t)
}

/// Computes both sides over the span of the touched days, a row at a time
/// (one pass over the events per report), and keeps the touched rows.
async fn compare(
    events: &Events<'_>,
    wh: &Warehouse,
    touches: Touches,
    step: &(dyn Fn(String) + Sync),
) -> Result<Vec<SliceReport>, ReconcileError> {
    let mut out = Vec::new();
    for (&name, touched) in &touches {
        let groups = name.group_fields(Grain::Daily);
        let days: BTreeSet<String> = touched
            .values()
            .filter_map(|(k, _)| k.first().and_then(Json::as_str).map(str::to_owned))
            .collect();
        let bounds: Vec<(i64, i64)> = days.iter().filter_map(|d| day_bounds(d)).collect();
        let span = Range {
            from_ms: bounds.iter().map(|b| b.0).min(),
            to_ms: bounds.iter().map(|b| b.1).max(),
        };
        // Only the touched rows are kept; both sides go by a row at a time.
        let index = |row: Vec<Json>, into: &mut HashMap<String, Vec<Json>>| {
            let key = serde_json::to_string(&row[..groups]).unwrap_or_default();
            if touched.contains_key(&key) {
                into.insert(key, row[groups..].to_vec());
            }
        };
        let legacy_error = |source| ReconcileError::Legacy {
            report: name.name(),
            source,
        };
        let mut legacy: HashMap<String, Vec<Json>> = HashMap::new();
        let mut ours: HashMap<String, Vec<Json>> = HashMap::new();
        if span.from_ms.is_some() {
            step(format!("{}: the legacy side", name.name()));
            let mut l = reports::legacy::daily(events, name, span)
                .await
                .map_err(legacy_error)?;
            while let Some(row) = l.try_next().await.map_err(legacy_error)? {
                index(row, &mut legacy);
            }
            step(format!("{}: the warehouse side", name.name()));
            let mut w = reports::warehouse::daily(wh, name, span);
            while let Some(row) = w
                .try_next()
                .await
                .map_err(wh_error(format!("reading report {}", name.name())))?
            {
                index(row, &mut ours);
            }
        }
        let columns = name.columns_at(Grain::Daily).to_vec();
        let mut rows: Vec<SliceRow> = touched
            .iter()
            .map(|(text, (key, samples))| {
                let (a, b) = (legacy.remove(text), ours.remove(text));
                let (verdict, differing) = match (&a, &b) {
                    (Some(x), Some(y)) => {
                        let differing: Vec<&'static str> = columns[groups..]
                            .iter()
                            .zip(x.iter().zip(y))
                            .filter(|(c, (p, q))| !agree(c, p, q))
                            .map(|(c, _)| *c)
                            .collect();
                        if differing.is_empty() {
                            (Verdict::Equal, differing)
                        } else {
                            (Verdict::Differs, differing)
                        }
                    }
                    (Some(_), None) => (Verdict::LegacyOnly, columns[groups..].to_vec()),
                    (None, Some(_)) => (Verdict::WarehouseOnly, columns[groups..].to_vec()),
                    (None, None) => (Verdict::Absent, columns[groups..].to_vec()),
                };
                SliceRow {
                    key: key.clone(),
                    legacy: a,
                    warehouse: b,
                    verdict,
                    differing,
                    samples: samples.iter().copied().collect(),
                }
            })
            .collect();
        rows.sort_by(|x, y| compare_keys(&x.key, &y.key));
        let status = if rows.iter().all(|r| r.verdict.agrees()) {
            Status::Equal
        } else {
            Status::Differs
        };
        out.push(SliceReport {
            report: name,
            columns,
            groups,
            status,
            rows,
        });
    }
    Ok(out)
}
