//! The first pass of a slice: one read of the events that finds what each
//! stratum holds, keeping a few seeded candidates per stratum (never every
//! event), then the choice of the samples.
//!
//! A candidate is an entity (a presentation, a user or a session) on a UTC
//! day, with the event that made it one. Each stratum keeps the candidates
//! with the smallest seeded hash, so the choice depends only on the seed
//! and the data, not on the order the source returns them in.

use std::collections::{BTreeMap, HashMap, HashSet};

use bson::{Bson, Document};
use chrono::{Duration, NaiveDate, Offset, TimeZone};
use chrono_tz::Tz;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::filter::Filter;
use crate::reports::legacy::{valid, Changes, History};
use crate::reports::Range;
use crate::schema::lookup;
use workflows::time::day_of;

/// The event types the reports read.
pub(crate) const FACT_TYPES: &[&str] = &[
    "presentation.viewed",
    "slide.viewed",
    "presentation.shared",
    "session.started",
    "session.ended",
];

/// Every event type of the model.
pub(crate) const ALL_TYPES: &[&str] = &[
    "user.registered",
    "user.plan_changed",
    "presentation.created",
    "presentation.renamed",
    "presentation.viewed",
    "slide.viewed",
    "presentation.shared",
    "session.started",
    "session.ended",
];

/// An event inserted at least this long after its time arrived late.
pub const LATE_AFTER_MS: i64 = 3_600_000;

/// What a sample is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    /// A presentation: its views, slide views and shares.
    Presentation,
    /// A user: what they viewed, shared and started.
    User,
    /// A session: its start, end and what was viewed in it.
    Session,
}

impl EntityKind {
    /// The name as printed.
    pub fn name(self) -> &'static str {
        match self {
            Self::Presentation => "presentation",
            Self::User => "user",
            Self::Session => "session",
        }
    }
}

/// An entity of the event model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Entity {
    /// What it is.
    pub kind: EntityKind,
    /// Its id.
    pub id: String,
}

/// An entity on a day, and the event that made it a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Candidate {
    pub entity: Entity,
    pub day: String,
    pub anchor: String,
}

/// The candidates with the smallest seeded hashes, at most `keep`.
#[derive(Debug, Clone, Default)]
pub(super) struct Reservoir {
    keep: usize,
    seen: u64,
    best: BTreeMap<(u64, Entity, String), String>,
}

impl Reservoir {
    fn new(keep: usize) -> Self {
        Self {
            keep,
            ..Self::default()
        }
    }

    fn offer(&mut self, hash: u64, c: Candidate) {
        self.seen += 1;
        let key = (hash, c.entity, c.day);
        if self.best.contains_key(&key) {
            return;
        }
        if self.best.len() < self.keep {
            self.best.insert(key, c.anchor);
        } else if self.best.last_key_value().is_some_and(|(k, _)| key < *k) {
            self.best.pop_last();
            self.best.insert(key, c.anchor);
        }
    }

    /// The kept candidates, best first.
    pub(super) fn candidates(&self) -> Vec<Candidate> {
        self.best
            .iter()
            .map(|((_, entity, day), anchor)| Candidate {
                entity: entity.clone(),
                day: day.clone(),
                anchor: anchor.clone(),
            })
            .collect()
    }

    /// How many candidates were offered (repeats included).
    pub(super) fn seen(&self) -> u64 {
        self.seen
    }

    /// Counts candidates offered elsewhere (a day's, kept by the day).
    fn count(&mut self, more: u64) {
        self.seen += more;
    }
}

/// A session's first start (time, device) and first end, as far as seen.
#[derive(Debug, Clone, Default)]
pub(super) struct SessionSpan {
    pub start: Option<(i64, String)>,
    pub end: Option<i64>,
}

/// What the first pass learnt.
#[derive(Debug, Default)]
pub(super) struct Survey {
    seed: u64,
    keep: usize,
    range: Range,
    filters: HashMap<&'static str, Filter>,
    /// Documents read.
    pub read: u64,
    /// Documents of a known type that break the event model.
    pub invalid: u64,
    /// Lines that are not documents, and documents without a known type.
    pub skipped: u64,
    /// Plan changes per user as read.
    changes: Changes,
    /// The plans over time, once read.
    history: History,
    /// Users with at least one `user.plan_changed`.
    changers: HashSet<String>,
    /// Every session's span.
    pub sessions: HashMap<String, SessionSpan>,
    /// Valid distinct fact events per day in the range.
    pub days: BTreeMap<String, u64>,
    /// Per day, a few candidates.
    per_day: BTreeMap<String, Reservoir>,
    /// The latest view of each viewer, and of each presentation.
    last_view_by_user: HashMap<String, i64>,
    last_view_of: HashMap<String, i64>,
    renamed: HashSet<String>,
    event_ids: HashSet<u64>,
    latest_ts: i64,
    /// Per stratum name, its candidates.
    pub strata: BTreeMap<String, Reservoir>,
}

fn text(doc: &Document, path: &str) -> Option<String> {
    lookup(doc, path).and_then(Bson::as_str).map(str::to_owned)
}

/// The entity an event of type `ty` is about, for the strata that do not
/// say otherwise.
pub(super) fn entity_of(ty: &str, doc: &Document) -> Option<Entity> {
    let (kind, field) = match ty {
        "session.started" | "session.ended" => (EntityKind::Session, "session_id"),
        "user.registered" | "user.plan_changed" => (EntityKind::User, "user_id"),
        _ => (EntityKind::Presentation, "presentation_id"),
    };
    Some(Entity {
        kind,
        id: text(doc, field)?,
    })
}

impl Survey {
    pub(super) fn new(seed: u64, keep: usize, range: Range) -> Self {
        Self {
            seed,
            keep,
            range,
            filters: ALL_TYPES
                .iter()
                .map(|t| {
                    (
                        *t,
                        Filter::new(valid(t)).expect("the rules are supported filters"),
                    )
                })
                .collect(),
            latest_ts: i64::MIN,
            ..Self::default()
        }
    }

    fn hash(&self, stratum: &str, entity: &Entity, day: &str) -> u64 {
        let text = format!(
            "{stratum}\u{1f}{}\u{1f}{}\u{1f}{day}",
            entity.kind.name(),
            entity.id
        );
        xxh3_64_with_seed(text.as_bytes(), self.seed)
    }

    fn offer(&mut self, stratum: &str, entity: Entity, day: &str, anchor: &str) {
        let hash = self.hash(stratum, &entity, day);
        let keep = self.keep;
        self.strata
            .entry(stratum.to_owned())
            .or_insert_with(|| Reservoir::new(keep))
            .offer(
                hash,
                Candidate {
                    entity,
                    day: day.to_owned(),
                    anchor: anchor.to_owned(),
                },
            );
    }

    /// Takes one document (every document of the source, in any order).
    pub(super) fn add(&mut self, doc: &Document) {
        self.read += 1;
        let Some(ty) = doc
            .get_str("type")
            .ok()
            .and_then(|t| ALL_TYPES.iter().find(|k| **k == t).copied())
        else {
            self.skipped += 1;
            return;
        };
        if !self.filters[ty].matches(doc) {
            self.invalid += 1;
            return;
        }
        let ts = doc.get_datetime("ts").expect("valid").timestamp_millis();
        // As the legacy join orders versions at the same time.
        let id = doc.get_str("_id").map(str::to_owned).unwrap_or_else(|_| {
            doc.get_object_id("_id")
                .map(|o| o.to_hex())
                .unwrap_or_default()
        });
        match ty {
            "user.registered" | "user.plan_changed" => {
                // Every stored copy is a version, as the legacy join reads it.
                let user = text(doc, "user_id").unwrap_or_default();
                if ty == "user.plan_changed" {
                    self.changers.insert(user.clone());
                }
                let plan = text(doc, "payload.plan").unwrap_or_default();
                self.changes.entry(user).or_default().push((ts, id, plan));
                return;
            }
            "session.started" | "session.ended" => {
                let span = self
                    .sessions
                    .entry(text(doc, "session_id").unwrap_or_default())
                    .or_default();
                if ty == "session.started" {
                    if span.start.as_ref().is_none_or(|(t, _)| ts < *t) {
                        span.start = Some((ts, text(doc, "payload.device").unwrap_or_default()));
                    }
                } else if span.end.is_none_or(|t| ts < t) {
                    span.end = Some(ts);
                }
            }
            "presentation.renamed" => {
                self.renamed
                    .insert(text(doc, "presentation_id").unwrap_or_default());
                return;
            }
            "presentation.created" => return,
            _ => {}
        }
        let late = match doc.get("_id") {
            Some(Bson::ObjectId(o)) => o.timestamp().timestamp_millis() - ts >= LATE_AFTER_MS,
            // Without an insertion time, arrival order tells.
            _ => self.latest_ts - ts >= LATE_AFTER_MS,
        };
        self.latest_ts = self.latest_ts.max(ts);
        if !self.range.contains(ts) {
            return;
        }
        let Some(entity) = entity_of(ty, doc) else {
            return;
        };
        let day = day_of(ts);
        let anchor = format!("{ty} {id}");
        let event_id = doc.get_str("event_id").unwrap_or_default();
        if !self
            .event_ids
            .insert(xxh3_64_with_seed(event_id.as_bytes(), 0))
        {
            self.offer("dirt.duplicate", entity, &day, &anchor);
            return;
        }
        if late {
            self.offer("dirt.late", entity.clone(), &day, &anchor);
        }
        *self.days.entry(day.clone()).or_default() += 1;
        let hash = self.hash("day", &entity, &day);
        let keep = self.keep;
        self.per_day
            .entry(day.clone())
            .or_insert_with(|| Reservoir::new(keep))
            .offer(
                hash,
                Candidate {
                    entity: entity.clone(),
                    day: day.clone(),
                    anchor: anchor.clone(),
                },
            );
        match ty {
            "presentation.viewed" => {
                match text(doc, "user_id") {
                    None => self.offer("plan.anonymous", entity.clone(), &day, &anchor),
                    Some(user) => {
                        let last = self.last_view_by_user.entry(user).or_insert(ts);
                        *last = (*last).max(ts);
                    }
                }
                let last = self.last_view_of.entry(entity.id).or_insert(ts);
                *last = (*last).max(ts);
            }
            "slide.viewed" => {
                let version = match doc.get("v") {
                    Some(Bson::Int32(2)) | Some(Bson::Int64(2)) => "payload.v2",
                    _ => "payload.v1",
                };
                self.offer(version, entity, &day, &anchor);
            }
            "presentation.shared" => {
                let channel = format!(
                    "channel.{}",
                    text(doc, "payload.channel").unwrap_or_default()
                );
                self.offer(&channel, entity, &day, &anchor);
            }
            "session.started" => {
                let device = format!("device.{}", text(doc, "payload.device").unwrap_or_default());
                self.offer(&device, entity, &day, &anchor);
            }
            _ => {}
        }
    }

    /// Ends the pass: the strata that need the whole history.
    pub(super) fn finish(&mut self, tz: Tz) {
        self.history = History::from_changes(std::mem::take(&mut self.changes));
        let viewers: Vec<(String, i64)> = self
            .last_view_by_user
            .iter()
            .map(|(u, t)| (u.clone(), *t))
            .collect();
        for (user, ts) in viewers {
            let plan = self.plan_at(Some(&user), ts).to_owned();
            let entity = Entity {
                kind: EntityKind::User,
                id: user.clone(),
            };
            let day = day_of(ts);
            let anchor = format!("their last view, on plan {plan}");
            if self.changers.contains(&user) {
                self.offer("plan.changer", entity.clone(), &day, &anchor);
            }
            self.offer(&format!("plan.{plan}"), entity, &day, &anchor);
        }
        let renamed: Vec<(String, i64)> = self
            .renamed
            .iter()
            .filter_map(|p| self.last_view_of.get(p).map(|t| (p.clone(), *t)))
            .collect();
        for (p, ts) in renamed {
            let entity = Entity {
                kind: EntityKind::Presentation,
                id: p,
            };
            self.offer("dirt.renamed", entity, &day_of(ts), "its last day of views");
        }
        let backwards: Vec<(String, i64, i64)> = self
            .sessions
            .iter()
            .filter_map(|(s, span)| {
                let (start, _) = span.start.as_ref()?;
                let end = span.end?;
                (end < *start && self.range.contains(*start)).then(|| (s.clone(), *start, end))
            })
            .collect();
        for (s, start, end) in backwards {
            let entity = Entity {
                kind: EntityKind::Session,
                id: s,
            };
            let anchor = format!("ended {} ms before it started", start - end);
            self.offer(
                "dirt.session_end_before_start",
                entity,
                &day_of(start),
                &anchor,
            );
        }
        let days: Vec<(String, u64)> = self.days.iter().map(|(d, n)| (d.clone(), *n)).collect();
        let mut chosen: Vec<(&str, Vec<String>)> = Vec::new();
        if let (Some(first), Some(last)) = (days.first(), days.last()) {
            chosen.push(("day.first", vec![first.0.clone()]));
            chosen.push(("day.last", vec![last.0.clone()]));
        }
        // The busiest and quietest: the earliest on a tie.
        let busiest = days
            .iter()
            .max_by_key(|(d, n)| (*n, std::cmp::Reverse(d.clone())));
        let quietest = days.iter().min_by_key(|(d, n)| (*n, d.clone()));
        chosen.extend(busiest.map(|(d, _)| ("day.busiest", vec![d.clone()])));
        chosen.extend(quietest.map(|(d, _)| ("day.quietest", vec![d.clone()])));
        let changes = dst_days(tz, self.days.keys().map(String::as_str));
        for (stratum, offset) in [
            ("day.dst_before", -1),
            ("day.dst_change", 0),
            ("day.dst_after", 1),
        ] {
            let wanted: Vec<String> = changes.iter().map(|d| shift(d, offset)).collect();
            chosen.push((stratum, wanted));
        }
        for (stratum, wanted) in chosen {
            for day in wanted {
                let Some(r) = self.per_day.get(&day) else {
                    continue;
                };
                let (kept, seen) = (r.candidates(), r.seen());
                let more = seen - kept.len() as u64;
                for c in kept {
                    self.offer(stratum, c.entity, &c.day, &c.anchor);
                }
                if let Some(st) = self.strata.get_mut(stratum) {
                    st.count(more);
                }
            }
        }
    }

    /// The viewer's plan at `ts`, as the legacy report decides it.
    pub(super) fn plan_at(&self, user: Option<&str>, ts: i64) -> &str {
        self.history.plan_at(user, ts)
    }
}

fn shift(day: &str, by: i64) -> String {
    NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map(|d| (d + Duration::days(by)).format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The UTC days, among the days from the first to the last of `days` (and
/// the day after the last), in which `tz` changes its offset from UTC.
pub fn dst_days<'d>(tz: Tz, days: impl Iterator<Item = &'d str>) -> Vec<String> {
    let days: Vec<NaiveDate> = days
        .filter_map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .collect();
    let (Some(first), Some(last)) = (days.iter().min(), days.iter().max()) else {
        return Vec::new();
    };
    let offset = |d: NaiveDate| {
        let t = d.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
    };
    let mut out = Vec::new();
    let mut d = *first;
    while d <= *last {
        let next = d + Duration::days(1);
        if offset(d) != offset(next) {
            out.push(d.format("%Y-%m-%d").to_string());
        }
        d = next;
    }
    out
}

/// A stratum's place in the document: its group, name and meaning.
#[derive(Debug, Clone, Serialize)]
pub struct StratumSpec {
    /// The group it belongs to.
    pub group: &'static str,
    /// Its name.
    pub name: String,
    /// What it holds.
    pub about: String,
}

/// Every stratum the event model defines, in the document's order, then
/// any other value the data holds (a plan, device or channel of its own).
pub(super) fn specs(tz: Tz, seen: impl Iterator<Item = String>) -> Vec<StratumSpec> {
    let s = |group, name: &str, about: String| StratumSpec {
        group,
        name: name.to_owned(),
        about,
    };
    let mut out = vec![
        s("days", "day.first", "the first day with events".into()),
        s("days", "day.last", "the last day with events".into()),
        s("days", "day.busiest", "the day with the most events".into()),
        s(
            "days",
            "day.quietest",
            "the day with the fewest events".into(),
        ),
        s(
            "days",
            "day.dst_before",
            format!("the day before a daylight-saving change in {tz}"),
        ),
        s(
            "days",
            "day.dst_change",
            format!("the UTC day of a daylight-saving change in {tz}"),
        ),
        s(
            "days",
            "day.dst_after",
            format!("the day after a daylight-saving change in {tz}"),
        ),
    ];
    for plan in ["free", "pro", "team"] {
        out.push(s(
            "plans",
            &format!("plan.{plan}"),
            format!("a viewer on plan {plan}"),
        ));
    }
    out.extend([
        s("plans", "plan.changer", "a viewer who changed plan".into()),
        s("plans", "plan.anonymous", "a view with no user".into()),
        s(
            "plans",
            "plan.unknown",
            "a viewer with no registration or plan change".into(),
        ),
    ]);
    for device in ["desktop", "mobile", "tablet"] {
        out.push(s(
            "devices",
            &format!("device.{device}"),
            format!("a session on a {device}"),
        ));
    }
    for channel in ["email", "link", "slack", "embed"] {
        out.push(s(
            "channels",
            &format!("channel.{channel}"),
            format!("a share by {channel}"),
        ));
    }
    out.extend([
        s(
            "payloads",
            "payload.v1",
            "a slide view with a v1 payload (dwell_ms)".into(),
        ),
        s(
            "payloads",
            "payload.v2",
            "a slide view with a v2 payload (dwellMs)".into(),
        ),
        s(
            "dirt",
            "dirt.late",
            "an event stored an hour or more after its time".into(),
        ),
        s(
            "dirt",
            "dirt.duplicate",
            "a producer duplicate (an event_id stored again)".into(),
        ),
        s(
            "dirt",
            "dirt.session_end_before_start",
            "a session whose end came before its start".into(),
        ),
        s(
            "dirt",
            "dirt.renamed",
            "a renamed presentation, on its last day of views".into(),
        ),
    ]);
    let mut extra: Vec<String> = seen.filter(|n| !out.iter().any(|s| s.name == *n)).collect();
    extra.sort();
    for name in extra {
        let (prefix, value) = name.split_once('.').unwrap_or(("", &name));
        let group = match prefix {
            "plan" => "plans",
            "device" => "devices",
            "channel" => "channels",
            _ => "other",
        };
        out.push(s(
            group,
            &name,
            format!("{prefix} {value}, found in the data"),
        ));
    }
    out
}
