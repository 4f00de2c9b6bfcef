//! The drill-down of a differing day: from the differing report rows to
//! the events behind them.
//!
//! Each report reads one event type into one fact table ([`Spec`]). The
//! valid source events of the day (under the legacy rules,
//! [`crate::reports::legacy::valid`]) are compared with the fact rows of the
//! day, narrowed to the differing rows' keys where the fact table holds the
//! key (a presentation, a channel, a device). A window holding more than
//! `drill_limit` events on either side is bisected by time: both halves are
//! counted (distinct events in the source, rows in the table) and the
//! halves whose counts differ are searched first; when no half differs in
//! count (a value, not an event, differs), both are searched, at most
//! [`MAX_WINDOWS`] windows in all. Findings:
//!
//! - `missing_from_facts`: a valid source event with no fact row;
//! - `quarantined`: the same, but the loader set the event aside (with its
//!   reason), while the legacy analytics count it;
//! - `not_in_source`: a fact row with no valid source event;
//! - `value_differs`: both have it, a field differs;
//! - `dimension_version`: a view's user has another plan at the view's time
//!   in `dim_user` than in the source's plan changes (`views_by_plan`).

use std::collections::{BTreeMap, HashMap, HashSet};

use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::Value as Json;
use sqlx::Row;

use super::{wh_error, Options, ReconcileError};
use crate::filter::Filter;
use crate::reports::legacy::{valid, version_at, Events};
use crate::reports::ReportName;
use crate::schema::lookup;
use crate::source::{Item, Query, Source};
use crate::warehouse::Warehouse;
use workflows::time::format_ms;
use workflows::Backend;

/// At most this many windows are read in one drill-down.
pub const MAX_WINDOWS: usize = 64;

/// Keys of differing rows above this many do not narrow the reads.
const MAX_NARROW: usize = 500;

/// What a finding says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A valid source event has no fact row.
    MissingFromFacts,
    /// A valid source event was quarantined by the loader.
    Quarantined,
    /// A fact row has no valid source event.
    NotInSource,
    /// A field differs between the event and its fact row.
    ValueDiffers,
    /// The user dimension's version at the event's time differs.
    DimensionVersion,
}

impl Kind {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::MissingFromFacts => "missing_from_facts",
            Self::Quarantined => "quarantined",
            Self::NotInSource => "not_in_source",
            Self::ValueDiffers => "value_differs",
            Self::DimensionVersion => "dimension_version",
        }
    }
}

/// One event or row that explains a difference.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What it is.
    pub kind: Kind,
    /// The event (for sessions, the session; for a dimension version, the
    /// view).
    pub id: String,
    /// The event time.
    pub ts: String,
    /// The rest, for people.
    pub detail: String,
}

/// The drill-down of one day.
#[derive(Debug, Clone, Serialize)]
pub struct Drill {
    /// Findings, at most the sample size, in time order.
    pub findings: Vec<Finding>,
    /// Findings in all.
    pub total: usize,
    /// Findings in all, per kind.
    pub kinds: BTreeMap<Kind, usize>,
    /// Source events and fact rows read.
    pub read: (usize, usize),
    /// The time windows read, as `from .. to` instants.
    pub windows: Vec<String>,
    /// What the drill-down could not cover, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How a fact column is read and where the source holds it.
struct Field {
    column: &'static str,
    paths: &'static [&'static str],
    int: bool,
}

/// How a report's events map to its fact table.
struct Spec {
    ty: &'static str,
    table: &'static str,
    /// The fact key and the source path that holds it.
    key: (&'static str, &'static str),
    /// The fact's time column.
    ts: &'static str,
    /// The fact column and source path of the report key that narrows
    /// reads (the second group field).
    narrow: Option<(&'static str, &'static str)>,
    fields: &'static [Field],
}

const fn text(column: &'static str, paths: &'static [&'static str]) -> Field {
    Field {
        column,
        paths,
        int: false,
    }
}

const fn int(column: &'static str, paths: &'static [&'static str]) -> Field {
    Field {
        column,
        paths,
        int: true,
    }
}

/// The view's user is the second field (`views_by_plan` reads it).
const VIEW_FIELDS: &[Field] = &[
    text("presentation_id", &["presentation_id"]),
    text("user_id", &["user_id"]),
];
const ENGAGEMENT_FIELDS: &[Field] = &[
    int("slide", &["payload.slide"]),
    int("dwell_ms", &["payload.dwell_ms", "payload.dwellMs"]),
];
const SHARE_FIELDS: &[Field] = &[
    text("presentation_id", &["presentation_id"]),
    text("channel", &["payload.channel"]),
];
const SESSION_FIELDS: &[Field] = &[text("device", &["payload.device"])];

fn spec(name: ReportName) -> Spec {
    match name {
        ReportName::ViewsDaily | ReportName::ViewsByPlan => Spec {
            ty: "presentation.viewed",
            table: "fact_views",
            key: ("event_id", "event_id"),
            ts: "ts_ms",
            narrow: (name == ReportName::ViewsDaily)
                .then_some(("presentation_id", "presentation_id")),
            fields: VIEW_FIELDS,
        },
        ReportName::SlideEngagement => Spec {
            ty: "slide.viewed",
            table: "fact_engagement",
            key: ("event_id", "event_id"),
            ts: "ts_ms",
            narrow: Some(("presentation_id", "presentation_id")),
            fields: ENGAGEMENT_FIELDS,
        },
        ReportName::SharesDaily => Spec {
            ty: "presentation.shared",
            table: "fact_shares",
            key: ("event_id", "event_id"),
            ts: "ts_ms",
            narrow: Some(("channel", "payload.channel")),
            fields: SHARE_FIELDS,
        },
        ReportName::SessionsDaily => Spec {
            ty: "session.started",
            table: "fact_sessions",
            key: ("session_id", "session_id"),
            ts: "started_ms",
            narrow: Some(("device", "payload.device")),
            fields: SESSION_FIELDS,
        },
    }
}

/// The values of `values` a text column of the warehouse can hold:
/// PostgreSQL's text holds no NUL character (the loader quarantines such
/// values there), and binding one fails the statement.
fn storable<'v>(backend: Backend, values: impl Iterator<Item = &'v str>) -> Vec<&'v str> {
    values
        .filter(|v| backend != Backend::Postgres || !v.contains('\0'))
        .collect()
}

/// The bounds of a UTC day `YYYY-MM-DD` in epoch ms.
pub fn day_bounds(day: &str) -> Option<(i64, i64)> {
    let d = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
    let from = d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
    Some((from, from + 86_400_000))
}

/// One event of the source or row of the facts: its time and fields (and
/// in the source, the `_id`s of its copies).
#[derive(Debug, Clone)]
struct Seen {
    ts: i64,
    fields: Vec<Json>,
    docs: Vec<String>,
}

fn bson_json(v: Option<&Bson>) -> Json {
    match v {
        Some(Bson::String(s)) => Json::from(s.as_str()),
        Some(Bson::Int32(i)) => Json::from(*i),
        Some(Bson::Int64(i)) => Json::from(*i),
        _ => Json::Null,
    }
}

struct Drilling<'a> {
    events: &'a Events<'a>,
    wh: &'a Warehouse,
    spec: Spec,
    /// The narrowing keys, if any.
    keys: Option<Vec<String>>,
}

impl Drilling<'_> {
    fn filter(&self) -> Document {
        let mut all = vec![valid(self.spec.ty)];
        if let (Some((_, path)), Some(keys)) = (self.spec.narrow, &self.keys) {
            all.push(doc! { path: { "$in": keys.clone() } });
        }
        doc! { "$and": all }
    }

    fn query(&self, from: i64, to: i64) -> Query {
        Query {
            filter: Some(Filter::new(self.filter()).expect("the rules are supported filters")),
            since_ms: Some(from),
            until_ms: Some(to),
            ..self.events.query(&[self.spec.ty])
        }
    }

    /// Distinct valid events in the window: an aggregation on MongoDB, a
    /// pass over the file otherwise.
    async fn source_count(&self, from: i64, to: i64) -> Result<usize, crate::source::SourceError> {
        let key = format!("${}", self.spec.key.1);
        if let Source::Mongo(client) = self.events.source {
            let pipeline = vec![
                doc! { "$match": { "$and": [
                    self.filter(),
                    { "ts": { "$gte": bson::DateTime::from_millis(from), "$lt": bson::DateTime::from_millis(to) } },
                ] } },
                doc! { "$group": { "_id": key } },
                doc! { "$group": { "_id": Bson::Null, "n": { "$sum": 1 } } },
            ];
            let ns = format!("{}.{}", self.events.database, self.events.collection);
            let docs: Vec<Document> = client
                .database(self.events.database)
                .collection::<Document>(self.events.collection)
                .aggregate(pipeline)
                .await
                .map_err(|e| crate::source::SourceError::Mongo(format!("aggregate on {ns}"), e))?
                .try_collect()
                .await
                .map_err(|e| crate::source::SourceError::Mongo(format!("aggregate on {ns}"), e))?;
            return Ok(docs
                .first()
                .and_then(|d| match d.get("n") {
                    Some(Bson::Int32(n)) => usize::try_from(*n).ok(),
                    Some(Bson::Int64(n)) => usize::try_from(*n).ok(),
                    Some(Bson::Double(n)) => Some(*n as usize),
                    _ => None,
                })
                .unwrap_or(0));
        }
        Ok(self.source_events(from, to).await?.len())
    }

    /// The valid events of the window by key; of copies of one event, the
    /// one stored last (the greatest `_id`), as the loader keeps it.
    async fn source_events(
        &self,
        from: i64,
        to: i64,
    ) -> Result<HashMap<String, Seen>, crate::source::SourceError> {
        let mut stream = self.events.source.stream(&self.query(from, to)).await?;
        let mut out: HashMap<String, (String, Seen)> = HashMap::new();
        while let Some(item) = stream.try_next().await? {
            let Item::Doc(doc, _) = item else { continue };
            let Some(Bson::String(key)) = lookup(&doc, self.spec.key.1) else {
                continue;
            };
            let Ok(ts) = doc.get_datetime("ts") else {
                continue;
            };
            let id = crate::quarantine::doc_id_of(&doc).unwrap_or_default();
            let fields = self
                .spec
                .fields
                .iter()
                .map(|f| {
                    bson_json(
                        f.paths
                            .iter()
                            .find_map(|p| lookup(&doc, p).filter(|v| !matches!(v, Bson::Null))),
                    )
                })
                .collect();
            let mut seen = Seen {
                ts: ts.timestamp_millis(),
                fields,
                docs: vec![id.clone()],
            };
            // Sessions: the first start counts, as the legacy report takes it.
            let keep = match out.get(key) {
                None => true,
                Some((old_id, old)) if self.spec.key.0 == "session_id" => {
                    (seen.ts, &id) < (old.ts, old_id)
                }
                Some((old_id, _)) => id > *old_id,
            };
            if let Some((_, old)) = out.get_mut(key) {
                if keep {
                    seen.docs.append(&mut old.docs);
                } else {
                    old.docs.push(id);
                    continue;
                }
            }
            out.insert(key.clone(), (id, seen));
        }
        Ok(out.into_iter().map(|(k, (_, s))| (k, s)).collect())
    }

    /// The narrowing keys the warehouse can hold, when reads are narrowed.
    fn fact_keys(&self) -> Option<Vec<&str>> {
        self.spec.narrow?;
        let keys = self.keys.as_ref()?;
        Some(storable(self.wh.backend, keys.iter().map(String::as_str)))
    }

    fn where_sql(&self, m: &mut workflows::sql::Markers) -> String {
        let s = &self.spec;
        let mut w = format!("{ts} >= {} AND {ts} < {}", m.next(), m.next(), ts = s.ts);
        if let (Some((column, _)), Some(keys)) = (s.narrow, self.fact_keys()) {
            w.push_str(&format!(" AND {column} IN ({})", m.list(keys.len())));
        }
        w
    }

    fn bind<'q>(
        &'q self,
        sql: &'q str,
        from: i64,
        to: i64,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        let mut q = sqlx::query(sql).bind(from).bind(to);
        for k in self.fact_keys().into_iter().flatten() {
            q = q.bind(k);
        }
        q
    }

    /// Whether the narrowing leaves no key the warehouse can hold.
    fn nothing_in_facts(&self) -> bool {
        self.fact_keys().is_some_and(|k| k.is_empty())
    }

    async fn fact_count(&self, from: i64, to: i64) -> Result<usize, sqlx::Error> {
        if self.nothing_in_facts() {
            return Ok(0);
        }
        let mut m = self.wh.backend.markers();
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE {}",
            self.spec.table,
            self.where_sql(&mut m)
        );
        let n: i64 = self
            .bind(&sql, from, to)
            .fetch_one(&self.wh.pool)
            .await?
            .try_get(0)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn fact_rows(&self, from: i64, to: i64) -> Result<HashMap<String, Seen>, sqlx::Error> {
        if self.nothing_in_facts() {
            return Ok(HashMap::new());
        }
        let s = &self.spec;
        let mut m = self.wh.backend.markers();
        let columns: Vec<&str> = s.fields.iter().map(|f| f.column).collect();
        let sql = format!(
            "SELECT {}, {}, {} FROM {} WHERE {}",
            s.key.0,
            s.ts,
            columns.join(", "),
            s.table,
            self.where_sql(&mut m)
        );
        let rows = self.bind(&sql, from, to).fetch_all(&self.wh.pool).await?;
        rows.iter()
            .map(|r| {
                let key = workflows::sql::text(r, s.key.0)?.unwrap_or_default();
                let ts: i64 = r.try_get(s.ts)?;
                let fields = s
                    .fields
                    .iter()
                    .map(|f| {
                        Ok(if f.int {
                            r.try_get::<Option<i64>, _>(f.column)?
                                .map_or(Json::Null, Json::from)
                        } else {
                            workflows::sql::text(r, f.column)?.map_or(Json::Null, Json::from)
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                Ok((
                    key,
                    Seen {
                        ts,
                        fields,
                        docs: Vec::new(),
                    },
                ))
            })
            .collect()
    }

    /// The quarantine's reason for each of these events that it holds,
    /// found by a copy's `_id` (an event id may be clipped there).
    async fn quarantined(
        &self,
        events: &[(&String, &Seen)],
    ) -> Result<HashMap<String, String>, sqlx::Error> {
        let by_doc: HashMap<&str, &String> = events
            .iter()
            .flat_map(|(key, seen)| seen.docs.iter().map(move |d| (d.as_str(), *key)))
            .collect();
        let docs: Vec<&str> = by_doc.keys().copied().collect();
        let mut out = HashMap::new();
        for chunk in docs.chunks(500) {
            let mut m = self.wh.backend.markers();
            let sql = format!(
                "SELECT doc_id, dag, task, reason FROM cutover_quarantine WHERE doc_id IN ({})",
                m.list(chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&self.wh.pool).await? {
                let text = |c: &str| workflows::sql::text(&r, c).map(Option::unwrap_or_default);
                let doc = text("doc_id")?;
                if let Some(key) = by_doc.get(doc.as_str()) {
                    out.insert(
                        (*key).clone(),
                        format!("{} {}: {}", text("dag")?, text("task")?, text("reason")?),
                    );
                }
            }
        }
        Ok(out)
    }

    /// The windows to read: the day bisected until each window holds at
    /// most `limit` events on both sides together.
    async fn windows(
        &self,
        from: i64,
        to: i64,
        limit: usize,
        day: &str,
        report: &'static str,
    ) -> Result<(Vec<(i64, i64)>, Option<String>), ReconcileError> {
        let source_error = |source| ReconcileError::Source {
            report,
            day: day.to_owned(),
            source,
        };
        let count = |from: i64, to: i64| async move {
            let s = self.source_count(from, to).await.map_err(source_error)?;
            let f = self
                .fact_count(from, to)
                .await
                .map_err(wh_error(format!("counting {} rows", self.spec.table)))?;
            Ok::<_, ReconcileError>((s, f))
        };
        let mut queue = vec![(from, to, count(from, to).await?)];
        let mut read = Vec::new();
        let mut note = None;
        while let Some((a, b, (s, f))) = queue.pop() {
            if s + f <= limit || b - a < 2 {
                read.push((a, b));
                if read.len() >= MAX_WINDOWS {
                    if !queue.is_empty() {
                        note = Some(format!(
                            "{} more windows not read (at most {MAX_WINDOWS}); narrow the range or raise --drill-limit",
                            queue.len()
                        ));
                    }
                    break;
                }
                continue;
            }
            let mid = a + (b - a) / 2;
            let (l, r) = (count(a, mid).await?, count(mid, b).await?);
            let differs = |(s, f): (usize, usize)| s != f;
            let mut halves = Vec::new();
            if differs(r) || !differs(l) {
                halves.push((mid, b, r));
            }
            if differs(l) || !differs(r) {
                halves.push((a, mid, l));
            }
            // Popped last first: the earlier half is read first.
            queue.extend(halves);
        }
        read.sort_unstable();
        Ok((read, note))
    }
}

/// The keys of a day's differing rows that [`explain`] needs: one per
/// distinct narrowing value (the field after the day), none when they are
/// too many to narrow the reads. What a day keeps until its drill-down is
/// bounded, however many of its rows differ.
pub fn narrowing(keys: Vec<Vec<Json>>) -> Vec<Vec<Json>> {
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    for key in keys {
        let Some(value) = key.get(1).and_then(Json::as_str) else {
            continue;
        };
        if seen.insert(value.to_owned()) {
            if kept.len() == MAX_NARROW {
                return Vec::new();
            }
            kept.push(key);
        }
    }
    kept
}

/// Explains a differing day of a report: the events behind `keys`, the
/// group keys of its differing rows.
///
/// # Errors
/// The source or the warehouse could not be read.
pub async fn explain(
    events: &Events<'_>,
    wh: &Warehouse,
    name: ReportName,
    day: &str,
    keys: &[Vec<Json>],
    options: &Options,
) -> Result<Drill, ReconcileError> {
    let report = name.name();
    let Some((from, to)) = day_bounds(day) else {
        return Ok(Drill {
            findings: Vec::new(),
            total: 0,
            kinds: BTreeMap::new(),
            read: (0, 0),
            windows: Vec::new(),
            note: Some(format!("`{day}` is not a day")),
        });
    };
    let spec = spec(name);
    let narrow: Vec<String> = keys
        .iter()
        .filter_map(|k| k.get(1).and_then(Json::as_str).map(str::to_owned))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let keys = (spec.narrow.is_some() && !narrow.is_empty() && narrow.len() <= MAX_NARROW)
        .then_some(narrow);
    let d = Drilling {
        events,
        wh,
        spec,
        keys,
    };
    let source_error = |source| ReconcileError::Source {
        report,
        day: day.to_owned(),
        source,
    };
    let (windows, note) = d
        .windows(from, to, options.drill_limit.max(1), day, report)
        .await?;
    let mut findings = Vec::new();
    let mut read = (0, 0);
    for &(a, b) in &windows {
        let source = d.source_events(a, b).await.map_err(source_error)?;
        let facts = d
            .fact_rows(a, b)
            .await
            .map_err(wh_error(format!("reading {}", d.spec.table)))?;
        read.0 += source.len();
        read.1 += facts.len();
        let missing: Vec<(&String, &Seen)> = source
            .iter()
            .filter(|(k, _)| !facts.contains_key(*k))
            .collect();
        let quarantine = d
            .quarantined(&missing)
            .await
            .map_err(wh_error("reading the quarantine"))?;
        for (key, seen) in &source {
            match facts.get(key) {
                None => findings.push(Finding {
                    kind: if quarantine.contains_key(key) {
                        Kind::Quarantined
                    } else {
                        Kind::MissingFromFacts
                    },
                    id: key.clone(),
                    ts: format_ms(seen.ts),
                    detail: match quarantine.get(key) {
                        Some(reason) => format!(
                            "a valid {} the legacy report counts; quarantined by {reason}",
                            d.spec.ty
                        ),
                        None => format!(
                            "a valid {} ({}) with no row in {}",
                            d.spec.ty,
                            describe(&d.spec, &seen.fields),
                            d.spec.table
                        ),
                    },
                }),
                Some(fact) => {
                    let mut differs: Vec<String> = d
                        .spec
                        .fields
                        .iter()
                        .zip(seen.fields.iter().zip(&fact.fields))
                        .filter(|(_, (a, b))| a != b)
                        .map(|(f, (a, b))| {
                            format!("{} is {a} in the source, {b} in {}", f.column, d.spec.table)
                        })
                        .collect();
                    if seen.ts != fact.ts {
                        differs.push(format!(
                            "{} is {} in the source, {} in {}",
                            d.spec.ts,
                            format_ms(seen.ts),
                            format_ms(fact.ts),
                            d.spec.table
                        ));
                    }
                    if !differs.is_empty() {
                        findings.push(Finding {
                            kind: Kind::ValueDiffers,
                            id: key.clone(),
                            ts: format_ms(seen.ts),
                            detail: differs.join("; "),
                        });
                    }
                }
            }
        }
        for (key, fact) in &facts {
            if !source.contains_key(key) {
                findings.push(Finding {
                    kind: Kind::NotInSource,
                    id: key.clone(),
                    ts: format_ms(fact.ts),
                    detail: format!(
                        "a row of {} ({}) with no valid {} in the source",
                        d.spec.table,
                        describe(&d.spec, &fact.fields),
                        d.spec.ty
                    ),
                });
            }
        }
        if name == ReportName::SessionsDaily {
            findings.extend(
                session_ends(&d, &source, &facts)
                    .await
                    .map_err(|e| match e {
                        Failure::Source(source) => source_error(source),
                        Failure::Warehouse(e) => wh_error("reading fact_sessions")(e),
                    })?,
            );
        }
        if name == ReportName::ViewsByPlan {
            findings.extend(plan_versions(&d, &source).await.map_err(|e| match e {
                Failure::Source(source) => source_error(source),
                Failure::Warehouse(e) => wh_error("reading dim_user")(e),
            })?);
        }
    }
    findings.sort_by(|a, b| (&a.ts, &a.id, a.kind).cmp(&(&b.ts, &b.id, b.kind)));
    let mut kinds = BTreeMap::new();
    for f in &findings {
        *kinds.entry(f.kind).or_insert(0) += 1;
    }
    let total = findings.len();
    findings.truncate(options.sample);
    let note = note.or_else(|| {
        (total == 0).then(|| {
            "no event explains the difference in the windows read: the rows differ in a way \
             the events of this day do not show (e.g. a session's end on another day)"
                .to_owned()
        })
    });
    Ok(Drill {
        findings,
        total,
        kinds,
        read,
        windows: windows
            .iter()
            .map(|(a, b)| format!("{} .. {}", format_ms(*a), format_ms(*b)))
            .collect(),
        note,
    })
}

fn describe(spec: &Spec, fields: &[Json]) -> String {
    spec.fields
        .iter()
        .zip(fields)
        .map(|(f, v)| format!("{} {v}", f.column))
        .collect::<Vec<_>>()
        .join(", ")
}

enum Failure {
    Source(crate::source::SourceError),
    Warehouse(sqlx::Error),
}

/// Reads every valid event of `ty` whose `field` is one of `values`, in
/// any time.
async fn events_of(
    d: &Drilling<'_>,
    types: &[&str],
    field: &str,
    values: &[String],
) -> Result<Vec<Document>, crate::source::SourceError> {
    let mut out = Vec::new();
    for chunk in values.chunks(1000) {
        let rules: Vec<Document> = types.iter().map(|t| valid(t)).collect();
        let filter = doc! { "$and": [ { "$or": rules }, { field: { "$in": chunk.to_vec() } } ] };
        let query = Query {
            filter: Some(Filter::new(filter).expect("the rules are supported filters")),
            ..d.events.query(types)
        };
        let mut stream = d.events.source.stream(&query).await?;
        while let Some(item) = stream.try_next().await? {
            if let Item::Doc(doc, _) = item {
                out.push(doc);
            }
        }
    }
    Ok(out)
}

/// Sessions whose first valid end differs from the fact's.
async fn session_ends(
    d: &Drilling<'_>,
    source: &HashMap<String, Seen>,
    facts: &HashMap<String, Seen>,
) -> Result<Vec<Finding>, Failure> {
    let both: Vec<String> = source
        .keys()
        .filter(|k| facts.contains_key(*k))
        .cloned()
        .collect();
    let mut first_end: HashMap<String, (i64, String)> = HashMap::new();
    for doc in events_of(d, &["session.ended"], "session_id", &both)
        .await
        .map_err(Failure::Source)?
    {
        let (Ok(id), Ok(ts)) = (doc.get_str("session_id"), doc.get_datetime("ts")) else {
            continue;
        };
        let entry = (
            ts.timestamp_millis(),
            crate::quarantine::doc_id_of(&doc).unwrap_or_default(),
        );
        let slot = first_end.entry(id.to_owned()).or_insert(entry.clone());
        if entry < *slot {
            *slot = entry;
        }
    }
    let mut ended: HashMap<String, Option<i64>> = HashMap::new();
    let stored = storable(d.wh.backend, both.iter().map(String::as_str));
    for chunk in stored.chunks(500) {
        let mut m = d.wh.backend.markers();
        let sql = format!(
            "SELECT session_id, ended_ms FROM fact_sessions WHERE session_id IN ({})",
            m.list(chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&d.wh.pool).await.map_err(Failure::Warehouse)? {
            let id = workflows::sql::text(&r, "session_id")
                .map_err(Failure::Warehouse)?
                .unwrap_or_default();
            ended.insert(id, r.try_get("ended_ms").map_err(Failure::Warehouse)?);
        }
    }
    Ok(both
        .iter()
        .filter_map(|id| {
            let ours = ended.get(id).copied().flatten();
            let theirs = first_end.get(id).map(|(t, _)| *t);
            (ours != theirs).then(|| Finding {
                kind: Kind::ValueDiffers,
                id: id.clone(),
                ts: format_ms(source[id].ts),
                detail: format!(
                    "ended_ms is {} in the source, {} in fact_sessions",
                    theirs.map_or("none".into(), format_ms),
                    ours.map_or("none".into(), format_ms)
                ),
            })
        })
        .collect())
}

/// Views whose user has another plan at the view's time in `dim_user` than
/// in the source's plan changes.
async fn plan_versions(
    d: &Drilling<'_>,
    source: &HashMap<String, Seen>,
) -> Result<Vec<Finding>, Failure> {
    // fields[1] is the user.
    let users: Vec<String> = source
        .values()
        .filter_map(|s| s.fields[1].as_str().map(str::to_owned))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // The source: (ts, _id) -> (plan, event).
    let mut changes: HashMap<String, Vec<(i64, String, String, String)>> = HashMap::new();
    for doc in events_of(
        d,
        &["user.registered", "user.plan_changed"],
        "user_id",
        &users,
    )
    .await
    .map_err(Failure::Source)?
    {
        let (Ok(user), Ok(ts)) = (doc.get_str("user_id"), doc.get_datetime("ts")) else {
            continue;
        };
        let plan = lookup(&doc, "payload.plan")
            .and_then(Bson::as_str)
            .unwrap_or_default();
        changes.entry(user.to_owned()).or_default().push((
            ts.timestamp_millis(),
            crate::quarantine::doc_id_of(&doc).unwrap_or_default(),
            plan.to_owned(),
            doc.get_str("event_id").unwrap_or_default().to_owned(),
        ));
    }
    // Per user, (time, (plan, event_id)) in the order the legacy join reads.
    type Changes = HashMap<String, Vec<(i64, (String, String))>>;
    // Per user, (valid_from_ms, valid_to_ms, plan, version_id).
    type Versions = HashMap<String, Vec<(i64, Option<i64>, String, String)>>;
    let history: Changes = changes
        .into_iter()
        .map(|(u, mut c)| {
            c.sort();
            (u, c.into_iter().map(|(t, _, p, e)| (t, (p, e))).collect())
        })
        .collect();
    // The warehouse: every version of those users.
    let mut versions: Versions = HashMap::new();
    let stored = storable(d.wh.backend, users.iter().map(String::as_str));
    for chunk in stored.chunks(500) {
        let mut m = d.wh.backend.markers();
        let sql = format!(
            "SELECT user_id, plan, valid_from_ms, valid_to_ms, version_id FROM dim_user WHERE user_id IN ({})",
            m.list(chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for u in chunk {
            q = q.bind(*u);
        }
        for r in q.fetch_all(&d.wh.pool).await.map_err(Failure::Warehouse)? {
            let text = |c: &str| {
                workflows::sql::text(&r, c)
                    .map(Option::unwrap_or_default)
                    .map_err(Failure::Warehouse)
            };
            versions.entry(text("user_id")?).or_default().push((
                r.try_get("valid_from_ms").map_err(Failure::Warehouse)?,
                r.try_get("valid_to_ms").map_err(Failure::Warehouse)?,
                text("plan")?,
                text("version_id")?,
            ));
        }
    }
    let mut out = Vec::new();
    for (view, seen) in source {
        let Some(user) = seen.fields[1].as_str() else {
            continue;
        };
        let theirs = history
            .get(user)
            .and_then(|c| version_at(c, seen.ts))
            .map(|(plan, event)| (plan.as_str(), event.as_str()));
        let ours = versions.get(user).and_then(|vs| {
            vs.iter()
                .find(|(from, to, _, _)| *from <= seen.ts && to.is_none_or(|t| seen.ts < t))
                .map(|(from, to, plan, id)| (plan.as_str(), id.as_str(), *from, *to))
        });
        let differs = match (theirs, ours) {
            (Some((p, _)), Some((q, _, _, _))) => p != q,
            (None, None) => false,
            _ => true,
        };
        if differs {
            let source_side = theirs.map_or(
                "unknown (no plan change before the view)".into(),
                |(p, e)| format!("{p} (event {e})"),
            );
            let warehouse_side = ours.map_or(
                "no version valid at the view".into(),
                |(p, id, from, to)| {
                    format!(
                        "{p} (version {id}, valid {} .. {})",
                        format_ms(from),
                        to.map_or("now".into(), format_ms)
                    )
                },
            );
            out.push(Finding {
                kind: Kind::DimensionVersion,
                id: view.clone(),
                ts: format_ms(seen.ts),
                detail: format!(
                    "user {user}: the plan at the view is {source_side} in the source, {warehouse_side} in dim_user"
                ),
            });
        }
    }
    Ok(out)
}
