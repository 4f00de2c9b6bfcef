//! The first pass of a subset: which entities to take. It keeps, per
//! stratum, the entities with the smallest seeded hashes (never every
//! event), so the choice depends only on the seed and the data, not on the
//! order the source returns documents in, and an entity with a small hash
//! stands for every stratum it belongs to.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bson::{Bson, Document};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{field, By, FACT_TYPES, MODEL_TYPES};
use crate::filter::Filter;
use crate::reports::legacy::valid;
use crate::reports::Range;
use crate::slice::LATE_AFTER_MS;
use workflows::time::day_of;

/// The busiest and the quietest days each give a stratum of this many days.
const EXTREME_DAYS: usize = 2;

/// The entities with the smallest hashes, at most `keep`.
#[derive(Debug, Default)]
struct Smallest {
    keep: usize,
    best: BTreeSet<(u64, String)>,
}

impl Smallest {
    fn new(keep: usize) -> Self {
        Self {
            keep,
            best: BTreeSet::new(),
        }
    }

    fn offer(&mut self, hash: u64, id: &str) {
        if self.best.len() >= self.keep
            && self
                .best
                .last()
                .is_some_and(|(h, i)| (hash, id) >= (*h, i.as_str()))
        {
            return;
        }
        if self.best.insert((hash, id.to_owned())) && self.best.len() > self.keep {
            self.best.pop_last();
        }
    }
}

/// What the first pass reads, and the choice it makes.
pub(super) struct Sampler {
    by: By,
    seed: u64,
    want: usize,
    range: Range,
    filters: HashMap<&'static str, Filter>,
    strata: BTreeMap<String, Smallest>,
    all: Smallest,
    /// Valid fact documents per day in the range (a producer's copies
    /// each count), and a few of the day's entities.
    days: BTreeMap<String, (u64, Smallest)>,
    /// Each user's latest plan (time, `_id`, plan), and who changed plan.
    plans: HashMap<String, (i64, String, String)>,
    changers: HashSet<String>,
    /// Per viewer, the entity with the smallest hash among those they
    /// viewed (by presentations) or themselves (by users).
    viewers: HashMap<String, (u64, String)>,
    latest_ts: i64,
}

/// The entities chosen, each with the stratum that chose it.
#[derive(Debug, Default)]
pub struct Choice {
    /// Entity id -> the stratum it was taken for (`any` when taken to make
    /// up the number).
    pub chosen: BTreeMap<String, String>,
    /// Every stratum the data holds, with how many of the entities chosen
    /// are among those it offered (0: not covered; ask for more).
    pub strata: BTreeMap<String, usize>,
}

impl Choice {
    /// The strata no entity chosen stands for.
    pub fn uncovered(&self) -> Vec<&str> {
        self.strata
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(s, _)| s.as_str())
            .collect()
    }
}

impl Sampler {
    pub(super) fn new(by: By, want: usize, seed: u64, range: Range) -> Self {
        Self {
            by,
            seed,
            want,
            range,
            filters: MODEL_TYPES
                .iter()
                .map(|t| {
                    (
                        *t,
                        Filter::new(valid(t)).expect("the rules are supported filters"),
                    )
                })
                .collect(),
            strata: BTreeMap::new(),
            all: Smallest::new(want),
            days: BTreeMap::new(),
            plans: HashMap::new(),
            changers: HashSet::new(),
            viewers: HashMap::new(),
            latest_ts: i64::MIN,
        }
    }

    fn hash(&self, id: &str) -> u64 {
        xxh3_64_with_seed(id.as_bytes(), self.seed)
    }

    fn offer(&mut self, stratum: &str, id: &str) {
        let hash = self.hash(id);
        let want = self.want;
        self.strata
            .entry(stratum.to_owned())
            .or_insert_with(|| Smallest::new(want))
            .offer(hash, id);
    }

    /// Takes one document of the source.
    pub(super) fn add(&mut self, doc: &Document) {
        let Some(ty) = doc
            .get_str("type")
            .ok()
            .and_then(|t| MODEL_TYPES.iter().find(|k| **k == t).copied())
        else {
            return;
        };
        let entity = field(doc, self.by.field());
        if !self.filters[ty].matches(doc) {
            if let Some(e) = entity {
                self.offer("dirt.invalid", e);
            }
            return;
        }
        let ts = doc.get_datetime("ts").expect("valid").timestamp_millis();
        if matches!(ty, "user.registered" | "user.plan_changed") {
            let user = field(doc, "user_id").unwrap_or_default().to_owned();
            let id = match doc.get("_id") {
                Some(Bson::ObjectId(o)) => o.to_hex(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let plan = crate::schema::lookup(doc, "payload.plan")
                .and_then(Bson::as_str)
                .unwrap_or_default()
                .to_owned();
            if ty == "user.plan_changed" {
                self.changers.insert(user.clone());
            }
            let version = (ts, id, plan);
            match self.plans.get_mut(&user) {
                Some(latest) if *latest >= version => {}
                Some(latest) => *latest = version,
                None => {
                    self.plans.insert(user, version);
                }
            }
            return;
        }
        if !FACT_TYPES.contains(&ty) || !self.range.contains(ts) {
            return;
        }
        let Some(entity) = entity.map(str::to_owned) else {
            // An anonymous view, by users: nobody to take.
            return;
        };
        let late = match doc.get("_id") {
            Some(Bson::ObjectId(o)) => o.timestamp().timestamp_millis() - ts >= LATE_AFTER_MS,
            _ => self.latest_ts - ts >= LATE_AFTER_MS,
        };
        self.latest_ts = self.latest_ts.max(ts);
        if late {
            self.offer("dirt.late", &entity);
        }
        let hash = self.hash(&entity);
        self.all.offer(hash, &entity);
        let want = self.want;
        let day = self
            .days
            .entry(day_of(ts))
            .or_insert_with(|| (0, Smallest::new(want)));
        day.0 += 1;
        day.1.offer(hash, &entity);
        let text = |path: &str| {
            crate::schema::lookup(doc, path)
                .and_then(Bson::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match ty {
            "presentation.viewed" => {
                self.offer(&format!("device.{}", text("payload.device")), &entity);
                match field(doc, "user_id") {
                    None => self.offer("plan.anonymous", &entity),
                    Some(user) => {
                        let best = self
                            .viewers
                            .entry(user.to_owned())
                            .or_insert((hash, entity.clone()));
                        if (hash, &entity) < (best.0, &best.1) {
                            *best = (hash, entity.clone());
                        }
                    }
                }
            }
            "slide.viewed" => {
                let version = match doc.get("v") {
                    Some(Bson::Int32(2) | Bson::Int64(2)) => "payload.v2",
                    _ => "payload.v1",
                };
                self.offer(version, &entity);
            }
            "presentation.shared" => {
                self.offer(&format!("channel.{}", text("payload.channel")), &entity);
            }
            "session.started" => {
                self.offer(&format!("device.{}", text("payload.device")), &entity);
            }
            _ => {}
        }
    }

    /// Ends the pass and chooses: the best entity of each stratum that no
    /// entity chosen already stands for (the rarest strata first), then the
    /// next best of each in turn, until the number wanted is reached; then
    /// the best of all to make it up.
    pub(super) fn choose(mut self) -> Choice {
        let viewers = std::mem::take(&mut self.viewers);
        for (user, (_, entity)) in viewers {
            let plan = self
                .plans
                .get(&user)
                .map_or("unknown", |(_, _, p)| p.as_str())
                .to_owned();
            self.offer(&format!("plan.{plan}"), &entity);
            if self.changers.contains(&user) {
                self.offer("plan.changer", &entity);
            }
        }
        let mut by_size: Vec<(u64, String)> = self
            .days
            .iter()
            .map(|(d, (n, _))| (*n, d.clone()))
            .collect();
        by_size.sort();
        let quiet: Vec<String> = by_size
            .iter()
            .take(EXTREME_DAYS)
            .map(|(_, d)| d.clone())
            .collect();
        let busy: Vec<String> = by_size
            .iter()
            .rev()
            .take(EXTREME_DAYS)
            .map(|(_, d)| d.clone())
            .collect();
        for (stratum, days) in [("day.busiest", busy), ("day.quietest", quiet)] {
            for day in days {
                let entities: Vec<(u64, String)> = self.days[&day].1.best.iter().cloned().collect();
                for (_, id) in entities {
                    self.offer(stratum, &id);
                }
            }
        }
        // Rarest strata first: each takes its best entity unless one
        // already taken stands for it; then in turn, the next best of each.
        let mut strata: Vec<(String, Vec<String>)> = std::mem::take(&mut self.strata)
            .into_iter()
            .map(|(s, r)| (s, r.best.into_iter().map(|(_, id)| id).collect()))
            .collect();
        strata.sort_by_key(|(s, ids)| (ids.len(), s.clone()));
        let mut chosen: BTreeMap<String, String> = BTreeMap::new();
        for (stratum, ids) in &strata {
            if chosen.len() >= self.want {
                break;
            }
            if !ids.iter().any(|id| chosen.contains_key(id)) {
                chosen.insert(ids[0].clone(), stratum.clone());
            }
        }
        let mut cursors = vec![0usize; strata.len()];
        while chosen.len() < self.want {
            let mut progressed = false;
            for ((stratum, ids), at) in strata.iter().zip(&mut cursors) {
                if chosen.len() >= self.want {
                    break;
                }
                while *at < ids.len() && chosen.contains_key(&ids[*at]) {
                    *at += 1;
                }
                if let Some(id) = ids.get(*at) {
                    chosen.insert(id.clone(), stratum.clone());
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        for (_, id) in std::mem::take(&mut self.all.best) {
            if chosen.len() >= self.want {
                break;
            }
            chosen.entry(id).or_insert_with(|| "any".to_owned());
        }
        let choice = Choice {
            strata: strata
                .iter()
                .map(|(s, ids)| {
                    (
                        s.clone(),
                        ids.iter().filter(|id| chosen.contains_key(*id)).count(),
                    )
                })
                .collect(),
            chosen,
        };
        choice
    }
}
