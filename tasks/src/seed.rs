//! A deterministic generator of synthetic events following the reference
//! event model, dirt included: producer duplicates (the same `event_id`
//! stored twice), late arrivals (file order is arrival order, not `ts`
//! order), invalid documents, unknown types, v1 and v2 payloads, anonymous
//! viewers, users with no registration, titles with quotes and emoji, and a
//! mix of relaxed and canonical Extended JSON lines.
//!
//! The same options always give the same bytes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;

use bson::{doc, oid::ObjectId, Bson, Document};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// Documents to write, dirt included.
    pub events: u64,
    /// The random seed.
    pub seed: u64,
    /// The first instant (epoch ms).
    pub start_ms: i64,
    /// Days the events span.
    pub days: u32,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            events: 10_000,
            seed: 1,
            start_ms: 1_767_571_200_000,
            days: 14,
        } // 2026-01-05T00:00:00Z
    }
}

/// What was generated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedStats {
    /// Documents written.
    pub written: u64,
    /// Extra copies of an event (same `event_id`).
    pub duplicates: u64,
    /// Documents of a known type that break the model.
    pub invalid: u64,
    /// Documents of a type the model does not know.
    pub unknown_types: u64,
    /// Documents written after one with a later `ts`.
    pub late: u64,
}

const PLANS: &[&str] = &["free", "pro", "team"];
const COUNTRIES: &[&str] = &["US", "DE", "FR", "GB", "JP", "BR", "IN", "ES", "NL", "SE"];
const DEVICES: &[&str] = &["desktop", "mobile", "tablet"];
const CHANNELS: &[&str] = &["email", "link", "slack", "embed"];
const REFERRERS: &[&str] = &[
    "https://news.example.com/",
    "https://search.example.org/?q=deck",
    "https://mail.example.net/",
];
const TITLE_WORDS: &[&str] = &[
    "Quarterly",
    "Roadmap",
    "\"Launch\"",
    "Résumé",
    "Plan 🚀",
    "Q3 — review",
    "Team's",
    "数据",
    "Café ☕",
    "O'Brien",
    "<Draft>",
    "Pitch",
    "Onboarding",
    "Kickoff 🎉",
    "Metrics",
];

/// An event waiting for its arrival.
struct Pending {
    arrival_ms: i64,
    seq: u64,
    doc: Document,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.arrival_ms, self.seq) == (o.arrival_ms, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.arrival_ms, self.seq).cmp(&(o.arrival_ms, o.seq))
    }
}

struct Gen<W: Write> {
    rng: ChaCha8Rng,
    out: W,
    opts: SeedOptions,
    stats: SeedStats,
    heap: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    max_written_ts: i64,
    users: Vec<(String, bool)>,
    presentations: Vec<(String, u32)>,
}

impl<W: Write> Gen<W> {
    fn uuid(&mut self) -> String {
        let bytes: [u8; 16] = self.rng.gen();
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    fn event(&mut self, ty: &str, ts: i64) -> Document {
        let mut d = doc! {
            "event_id": self.uuid(),
            "type": ty,
            "ts": bson::DateTime::from_millis(ts),
        };
        if self.rng.gen_bool(0.5) {
            d.insert("v", 1);
        }
        d
    }

    /// Queues an event; some arrive late, some are stored twice.
    fn push(&mut self, doc: Document) {
        let ts = doc
            .get_datetime("ts")
            .map(|d| d.timestamp_millis())
            .unwrap_or(self.opts.start_ms);
        let late = self.rng.gen_bool(0.03);
        let delay = if late {
            self.rng.gen_range(3_600_000..6 * 3_600_000)
        } else {
            0
        };
        if self.rng.gen_bool(0.01) {
            let copy_delay = self.rng.gen_range(0..2 * 3_600_000);
            self.stats.duplicates += 1;
            self.queue(ts + delay + copy_delay, doc.clone());
        }
        self.queue(ts + delay, doc);
    }

    fn queue(&mut self, arrival_ms: i64, doc: Document) {
        self.seq += 1;
        self.heap.push(Reverse(Pending {
            arrival_ms,
            seq: self.seq,
            doc,
        }));
    }

    /// Writes every queued event that has arrived by `now_ms`.
    fn drain(&mut self, now_ms: i64) -> std::io::Result<bool> {
        while self
            .heap
            .peek()
            .is_some_and(|Reverse(p)| p.arrival_ms <= now_ms)
        {
            let Reverse(p) = self.heap.pop().expect("peeked");
            if !self.write(p)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn write(&mut self, p: Pending) -> std::io::Result<bool> {
        if self.stats.written >= self.opts.events {
            return Ok(false);
        }
        let mut doc = doc! { "_id": object_id(p.arrival_ms, self.stats.written) };
        doc.extend(p.doc);
        if let Ok(ts) = doc.get_datetime("ts").map(|d| d.timestamp_millis()) {
            if ts < self.max_written_ts {
                self.stats.late += 1;
            }
            self.max_written_ts = self.max_written_ts.max(ts);
        }
        let json = if self.rng.gen_bool(0.3) {
            Bson::Document(doc).into_canonical_extjson()
        } else {
            Bson::Document(doc).into_relaxed_extjson()
        };
        serde_json::to_writer(&mut self.out, &json)?;
        self.out.write_all(b"\n")?;
        self.stats.written += 1;
        Ok(self.stats.written < self.opts.events)
    }

    /// Occasionally a broken document of a known type, or an unknown type.
    fn dirt(&mut self, ts: i64, session_id: &str) {
        let roll: f64 = self.rng.gen();
        if roll < 0.03 {
            let ty = *[
                "presentation.deleted",
                "billing.invoice_paid",
                "experiment.assigned",
            ]
            .choose(&mut self.rng)
            .expect("non-empty");
            let mut d = self.event(ty, ts);
            d.insert("payload", doc! { "note": "not part of the model" });
            self.stats.unknown_types += 1;
            self.push(d);
        } else if roll < 0.07 {
            let (pid, slides) = self
                .presentations
                .choose(&mut self.rng)
                .cloned()
                .expect("non-empty");
            let mut d = self.event("slide.viewed", ts);
            d.insert("presentation_id", pid.clone());
            d.insert("session_id", session_id);
            d.insert("user_id", Bson::Null);
            let slide = self.rng.gen_range(1..=slides) as i32;
            match self.rng.gen_range(0..5) {
                0 => d.insert(
                    "payload",
                    doc! { "slide": slide.to_string(), "dwell_ms": 1200 },
                ),
                1 => d.insert(
                    "payload",
                    doc! { "slide": slide, "dwell_ms": -self.rng.gen_range(1..5000_i32) },
                ),
                2 => d.insert("payload", doc! { "dwell_ms": 900 }),
                3 => {
                    d.remove("presentation_id");
                    d.insert("payload", doc! { "slide": slide, "dwell_ms": 900 })
                }
                _ => {
                    let mut v = self.event("presentation.viewed", ts);
                    v.insert("presentation_id", pid);
                    v.insert("session_id", session_id);
                    v.insert("user_id", Bson::Null);
                    v.insert(
                        "payload",
                        doc! { "device": "smartwatch", "referrer": Bson::Null },
                    );
                    d = v;
                    None
                }
            };
            self.stats.invalid += 1;
            self.push(d);
        }
    }

    fn run(&mut self) -> std::io::Result<()> {
        let start = self.opts.start_ms;
        let span = i64::from(self.opts.days.max(1)) * 86_400_000;
        let n = self.opts.events.max(50);
        let n_users = (n / 40).max(8) as usize;
        let n_pres = (n / 80).max(4) as usize;

        // Users (a few never registered: their plan is unknown) and
        // presentations, during the first hours.
        for i in 0..n_users {
            let id = format!("u{:06}", i + 1);
            let registered = !self.rng.gen_bool(0.03);
            if registered {
                let ts = start + self.rng.gen_range(0..6 * 3_600_000);
                let mut d = self.event("user.registered", ts);
                d.insert("user_id", id.clone());
                let plan = *PLANS.choose(&mut self.rng).expect("non-empty");
                let country = *COUNTRIES.choose(&mut self.rng).expect("non-empty");
                d.insert("payload", doc! { "plan": plan, "country": country });
                self.push(d);
            }
            self.users.push((id, registered));
        }
        for i in 0..n_pres {
            let id = format!("p{:06}", i + 1);
            let slides = self.rng.gen_range(3..25u32);
            let ts = start + self.rng.gen_range(6 * 3_600_000..12 * 3_600_000);
            let owner = self
                .users
                .choose(&mut self.rng)
                .expect("non-empty")
                .0
                .clone();
            let mut d = self.event("presentation.created", ts);
            d.insert("user_id", owner);
            d.insert("presentation_id", id.clone());
            let title = self.title();
            d.insert(
                "payload",
                doc! { "title": title, "slide_count": slides as i32 },
            );
            self.push(d);
            self.presentations.push((id, slides));
        }

        // Sessions, in order of their start.
        let sessions_expected = (n / 14).max(1) as i64;
        let step = ((span - 12 * 3_600_000) / sessions_expected).max(1);
        let mut clock = start + 12 * 3_600_000;
        loop {
            clock += self.rng.gen_range(0..=2 * step);
            if !self.drain(clock)? {
                return Ok(());
            }
            self.session(clock);
            if self.stats.written + self.heap.len() as u64 >= self.opts.events + 64
                && self.heap.len() > 64
            {
                // Enough queued: let it all arrive.
                if !self.drain(i64::MAX)? {
                    return Ok(());
                }
            }
        }
    }

    fn title(&mut self) -> String {
        let k = self.rng.gen_range(1..4);
        (0..k)
            .map(|_| *TITLE_WORDS.choose(&mut self.rng).expect("non-empty"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn session(&mut self, start: i64) {
        let session_id = format!("s{}", &self.uuid()[..13]);
        let anonymous = self.rng.gen_bool(0.3);
        let user = if anonymous {
            None
        } else {
            Some(
                self.users
                    .choose(&mut self.rng)
                    .expect("non-empty")
                    .0
                    .clone(),
            )
        };
        let user_bson = user.clone().map_or(Bson::Null, Bson::String);
        let device = *DEVICES.choose(&mut self.rng).expect("non-empty");
        let mut t = start;

        let mut d = self.event("session.started", t);
        d.insert("session_id", session_id.clone());
        d.insert("user_id", user_bson.clone());
        d.insert("payload", doc! { "device": device });
        self.push(d);

        if let Some(u) = &user {
            if self.rng.gen_bool(0.04) {
                t += self.rng.gen_range(1_000..60_000);
                let mut d = self.event("user.plan_changed", t);
                d.insert("user_id", u.clone());
                d.insert(
                    "payload",
                    doc! { "plan": *PLANS.choose(&mut self.rng).expect("non-empty") },
                );
                self.push(d);
            }
        }

        for _ in 0..self.rng.gen_range(1..=3) {
            let (pid, slides) = self
                .presentations
                .choose(&mut self.rng)
                .cloned()
                .expect("non-empty");
            t += self.rng.gen_range(500..30_000);
            let mut d = self.event("presentation.viewed", t);
            d.insert("presentation_id", pid.clone());
            d.insert("session_id", session_id.clone());
            d.insert("user_id", user_bson.clone());
            let referrer = if self.rng.gen_bool(0.4) {
                Bson::String((*REFERRERS.choose(&mut self.rng).expect("non-empty")).to_owned())
            } else {
                Bson::Null
            };
            d.insert("payload", doc! { "device": device, "referrer": referrer });
            self.push(d);

            for _ in 0..self.rng.gen_range(1..=8) {
                t += self.rng.gen_range(200..20_000);
                let slide = self.rng.gen_range(1..=slides) as i32;
                let dwell = self.rng.gen_range(0..120_000_i32);
                let v2 = self.rng.gen_bool(0.5);
                let mut d = self.event("slide.viewed", t);
                d.insert("presentation_id", pid.clone());
                d.insert("session_id", session_id.clone());
                d.insert("user_id", user_bson.clone());
                if v2 {
                    d.insert("v", 2);
                    d.insert("payload", doc! { "slide": slide, "dwellMs": dwell });
                } else {
                    d.insert("payload", doc! { "slide": slide, "dwell_ms": dwell });
                }
                self.push(d);
            }
            if let Some(u) = &user {
                if self.rng.gen_bool(0.15) {
                    t += self.rng.gen_range(1_000..10_000);
                    let mut d = self.event("presentation.shared", t);
                    d.insert("presentation_id", pid.clone());
                    d.insert("user_id", u.clone());
                    d.insert(
                        "payload",
                        doc! { "channel": *CHANNELS.choose(&mut self.rng).expect("non-empty") },
                    );
                    self.push(d);
                }
            }
            if self.rng.gen_bool(0.02) {
                t += 1_000;
                let mut d = self.event("presentation.renamed", t);
                d.insert("presentation_id", pid.clone());
                let title = self.title();
                d.insert("payload", doc! { "title": title });
                self.push(d);
            }
        }
        self.dirt(t, &session_id);
        if self.rng.gen_bool(0.85) {
            t += self.rng.gen_range(1_000..600_000);
            let mut d = self.event("session.ended", t);
            d.insert("session_id", session_id);
            d.insert("payload", Document::new());
            self.push(d);
        }
    }
}

/// A deterministic ObjectId whose time part is the arrival time.
fn object_id(arrival_ms: i64, n: u64) -> ObjectId {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&((arrival_ms / 1000) as u32).to_be_bytes());
    b[4..12].copy_from_slice(&n.to_be_bytes());
    ObjectId::from_bytes(b)
}

/// Writes `opts.events` documents, one Extended JSON document per line.
///
/// # Errors
/// Writing failed.
pub fn generate(opts: &SeedOptions, out: impl Write) -> std::io::Result<SeedStats> {
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(opts.seed),
        out,
        opts: opts.clone(),
        stats: SeedStats::default(),
        heap: BinaryHeap::new(),
        seq: 0,
        max_written_ts: i64::MIN,
        users: Vec::new(),
        presentations: Vec::new(),
    };
    g.run()?;
    g.out.flush()?;
    Ok(g.stats)
}

/// Inserts the same documents [`generate`] writes into a MongoDB
/// collection, in arrival order, `batch` documents per `insert_many`.
///
/// # Errors
/// MongoDB refused an insert.
pub async fn insert_into(
    opts: &SeedOptions,
    coll: &mongodb::Collection<Document>,
    batch: usize,
    progress: &indicatif::ProgressBar,
) -> Result<SeedStats, mongodb::error::Error> {
    let mut text = Vec::new();
    let stats = generate(opts, &mut text).expect("writing to memory");
    let mut docs = Vec::with_capacity(batch);
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let json: serde_json::Value = serde_json::from_slice(line).expect("generated JSON");
        if let Ok(Bson::Document(d)) = Bson::try_from(json) {
            docs.push(d);
        }
        if docs.len() == batch {
            progress.inc(docs.len() as u64);
            coll.insert_many(std::mem::take(&mut docs)).await?;
        }
    }
    if !docs.is_empty() {
        progress.inc(docs.len() as u64);
        coll.insert_many(docs).await?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_dirty() {
        let opts = SeedOptions {
            events: 5_000,
            ..SeedOptions::default()
        };
        let mut a = Vec::new();
        let stats = generate(&opts, &mut a).unwrap();
        let mut b = Vec::new();
        generate(&opts, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(stats.written, 5_000);
        assert_eq!(a.iter().filter(|c| **c == b'\n').count(), 5_000);
        assert!(
            stats.duplicates > 0 && stats.invalid > 0 && stats.unknown_types > 0 && stats.late > 0,
            "{stats:?}"
        );
        let text = String::from_utf8(a).unwrap();
        assert!(
            text.contains("$numberLong") && text.contains("dwellMs") && text.contains("dwell_ms")
        );
        for line in text.lines() {
            crate::source::parse_line(line).unwrap();
        }
    }
}
