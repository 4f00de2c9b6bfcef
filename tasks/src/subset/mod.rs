//! `cutover subset`: a smaller copy of the events that a development
//! environment can hold, closed under the event model's relations, and
//! anonymised when asked.
//!
//! It reads the source in four passes, holding what the subset is made of
//! (its entities, sessions and users) and never every event:
//!
//! 1. **sample**: the entities wanted (presentations or users), stratified
//!    by plans, plan changers, devices, channels, payload versions, busy and
//!    quiet days, late and invalid documents ([`sample`]);
//! 2. **facts**: the sampled entities' views, slide views and shares (and
//!    by users, the sessions they started) name the sessions, users and
//!    presentations they depend on;
//! 3. **dimensions**: those sessions' starts and ends, and those
//!    presentations' creations, name their users too;
//! 4. **copy**: every document of the closure (the facts, both ends of each
//!    session, each presentation's creation and renames, each user's
//!    registration and plan changes; dirt as it is: producer copies, late
//!    arrivals, invalid documents that belong to it) is set aside in a
//!    temporary file, in source order.
//!
//! Then it writes them out (anonymised with `_id`s re-minted in the same
//! order, see [`anonymize`]) and checks that each of the five legacy
//! reports computed on the copy equals the same report on the whole source
//! restricted to the sample (its facts, with every user's whole history),
//! through the pseudonyms.

pub mod anonymize;
mod sample;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use bson::{oid::ObjectId, Bson, Document};
use futures::TryStreamExt;
use serde_json::Value as Json;

pub use anonymize::Anonymizer;
pub use sample::Choice;

use crate::reports::legacy::{from_legacy, Events, LegacyError, Tally};
use crate::reports::{Grain, Range, Report, ReportName};
use crate::slice::strata::{ALL_TYPES as MODEL_TYPES, FACT_TYPES};
use crate::source::{Item, Source, SourceError};

/// What the sample is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// Presentations: their views, slide views and shares.
    Presentations,
    /// Users: what they viewed, shared and started.
    Users,
}

impl By {
    /// The field naming the entity in a document.
    fn field(self) -> &'static str {
        match self {
            Self::Presentations => "presentation_id",
            Self::Users => "user_id",
        }
    }

    /// The entities' name, plural.
    pub fn name(self) -> &'static str {
        match self {
            Self::Presentations => "presentations",
            Self::Users => "users",
        }
    }
}

/// What to copy and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// What the sample is drawn from.
    pub by: By,
    /// How many entities.
    pub size: usize,
    /// The seed of the choice.
    pub seed: u64,
    /// The event time of the facts copied (their dimensions whenever).
    pub range: Range,
    /// Pseudonyms, when anonymised.
    pub anonymize: Option<Anonymizer>,
    /// Days every time moves by (also set in the anonymizer).
    pub shift_days: i64,
}

/// Where the copy goes.
#[derive(Debug, Clone)]
pub enum Out {
    /// An events file (one canonical Extended JSON document a line), written
    /// whole or not at all.
    File(PathBuf),
    /// A MongoDB collection, which must be empty.
    Mongo {
        /// The client.
        client: mongodb::Client,
        /// The database.
        database: String,
        /// The collection.
        collection: String,
    },
}

impl Out {
    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Mongo {
                database,
                collection,
                ..
            } => format!("{database}.{collection}"),
        }
    }
}

/// A subset could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SubsetError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A legacy report failed on the copy.
    #[error(transparent)]
    Legacy(#[from] LegacyError),
    /// A file could not be written or read.
    #[error("{what} {}", path.display())]
    File {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// MongoDB refused.
    #[error("{what} {namespace}")]
    Mongo {
        /// What was done.
        what: &'static str,
        /// `database.collection`.
        namespace: String,
        /// The driver's error.
        #[source]
        source: mongodb::error::Error,
    },
    /// The output collection holds documents.
    #[error("{0} already holds documents: a subset is written into an empty collection (drop it, or name another with --out-collection)")]
    NotEmpty(String),
    /// Nothing to sample.
    #[error("the source holds no {0} with valid events{1}")]
    Nothing(&'static str, String),
}

/// What was read, chosen, written and checked.
#[derive(Debug, Default)]
pub struct Summary {
    /// Documents read in the first pass.
    pub read: u64,
    /// Documents of MongoDB left out as stored after the cut (a minute
    /// before the subset started).
    pub later: u64,
    /// Lines that are not documents: how many, and the first few reasons.
    pub unreadable: u64,
    /// The first few of them.
    pub unreadable_sample: Vec<String>,
    /// The entities chosen and the strata.
    pub choice: Choice,
    /// Sessions, users and presentations the copy holds.
    pub sessions: usize,
    /// Users whose registration and plan changes are copied.
    pub users: usize,
    /// Presentations whose creation and renames are copied.
    pub presentations: usize,
    /// Documents written.
    pub written: u64,
    /// Of them, documents of the model's types that break it (kept).
    pub invalid: u64,
    /// Of them, further stored copies of an event id (kept).
    pub copies: u64,
    /// Each report: rows on the copy, and the first difference if any.
    pub reports: Vec<(ReportName, usize, Option<String>)>,
}

impl Summary {
    /// Whether every report survived the cut.
    pub fn reports_equal(&self) -> bool {
        self.reports.iter().all(|(_, _, d)| d.is_none())
    }
}

/// A string field of a document.
fn field<'a>(doc: &'a Document, name: &str) -> Option<&'a str> {
    doc.get_str(name).ok()
}

/// Whether a document's time is in `range`; one without a time belongs to
/// any.
fn in_range(doc: &Document, range: Range) -> bool {
    doc.get_datetime("ts")
        .map_or(true, |t| range.contains(t.timestamp_millis()))
}

/// What the subset holds, as far as known.
#[derive(Debug)]
struct Closure {
    by: By,
    range: Range,
    seeds: HashSet<String>,
    sessions: HashSet<String>,
    users: HashSet<String>,
    presentations: HashSet<String>,
}

const FACTS: &[&str] = &["presentation.viewed", "slide.viewed", "presentation.shared"];
const SESSION: &[&str] = &["session.started", "session.ended"];
const USER: &[&str] = &["user.registered", "user.plan_changed"];
const PRESENTATION: &[&str] = &["presentation.created", "presentation.renamed"];

impl Closure {
    fn new(by: By, range: Range, seeds: HashSet<String>) -> Self {
        let (users, presentations) = match by {
            By::Users => (seeds.clone(), HashSet::new()),
            By::Presentations => (HashSet::new(), seeds.clone()),
        };
        Self {
            by,
            range,
            seeds,
            sessions: HashSet::new(),
            users,
            presentations,
        }
    }

    /// Whether `doc` is a fact of the sample: a view, slide view or share
    /// of a sampled entity (by users, a session one started), in range,
    /// valid or not.
    fn is_fact(&self, doc: &Document) -> bool {
        let Some(ty) = field(doc, "type") else {
            return false;
        };
        let counts = FACTS.contains(&ty) || (self.by == By::Users && ty == "session.started");
        counts
            && field(doc, self.by.field()).is_some_and(|e| self.seeds.contains(e))
            && in_range(doc, self.range)
    }

    /// Pass 2: what the facts depend on.
    fn facts(&mut self, doc: &Document) {
        if self.is_fact(doc) {
            let pick = |set: &mut HashSet<String>, name: &str| {
                if let Some(v) = field(doc, name) {
                    if !set.contains(v) {
                        set.insert(v.to_owned());
                    }
                }
            };
            pick(&mut self.sessions, "session_id");
            pick(&mut self.users, "user_id");
            pick(&mut self.presentations, "presentation_id");
        }
    }

    /// Pass 3: the users of the sessions and presentations.
    fn dimensions(&mut self, doc: &Document) {
        let Some(ty) = field(doc, "type") else { return };
        let belongs = (SESSION.contains(&ty)
            && field(doc, "session_id").is_some_and(|s| self.sessions.contains(s)))
            || (ty == "presentation.created"
                && field(doc, "presentation_id").is_some_and(|p| self.presentations.contains(p)));
        if belongs {
            if let Some(u) = field(doc, "user_id") {
                if !self.users.contains(u) {
                    self.users.insert(u.to_owned());
                }
            }
        }
    }

    fn holds(&self, doc: &Document, name: &str, set: &HashSet<String>) -> bool {
        field(doc, name).is_some_and(|v| set.contains(v))
    }

    /// Pass 4: whether the copy takes `doc`.
    fn wanted(&self, doc: &Document) -> bool {
        if self.is_fact(doc) {
            return true;
        }
        match field(doc, "type") {
            Some(t) if SESSION.contains(&t) => self.holds(doc, "session_id", &self.sessions),
            Some(t) if USER.contains(&t) => self.holds(doc, "user_id", &self.users),
            Some(t) if PRESENTATION.contains(&t) => {
                self.holds(doc, "presentation_id", &self.presentations)
            }
            // A fact of an entity not sampled (or out of range).
            Some(t) if FACTS.contains(&t) => false,
            // Another type, or none: it goes with what it names.
            _ => {
                self.holds(doc, "presentation_id", &self.presentations)
                    || self.holds(doc, "session_id", &self.sessions)
                    || self.holds(doc, "user_id", &self.users)
            }
        }
    }

    /// Whether `doc` is part of the whole source restricted to the sample:
    /// its facts, its sessions, and every user's and presentation's
    /// history (what the reports on the copy must equal).
    fn restricted(&self, doc: &Document) -> bool {
        if self.is_fact(doc) {
            return true;
        }
        match field(doc, "type") {
            Some(t) if SESSION.contains(&t) => self.holds(doc, "session_id", &self.sessions),
            Some(t) => USER.contains(&t) || PRESENTATION.contains(&t),
            None => false,
        }
    }
}

/// Progress: a line to show.
pub type Progress<'a> = &'a (dyn Fn(String) + Sync);

/// What the passes read: every document of `database.collection`, but on
/// MongoDB only those stored (by their ObjectId's time) before `cut_ms`, so
/// that all four passes read the same documents while the application
/// writes more.
struct Reads<'a> {
    source: &'a Source,
    database: &'a str,
    collection: &'a str,
    cut_ms: Option<i64>,
    progress: Progress<'a>,
}

impl Reads<'_> {
    /// Reads every document, passing each to `each` and each line that is
    /// not a document to `unreadable`; returns the documents read and those
    /// left out as stored after the cut.
    async fn pass(
        &self,
        label: &str,
        mut each: impl FnMut(&Document) -> Result<(), SubsetError>,
        mut unreadable: impl FnMut(String),
    ) -> Result<(u64, u64), SubsetError> {
        let mut stream = self
            .source
            .every(self.database, self.collection, 10_000)
            .await?;
        let (mut read, mut later) = (0u64, 0u64);
        (self.progress)(format!("{label}: reading"));
        while let Some(item) = stream.try_next().await? {
            read += 1;
            if read.is_multiple_of(50_000) {
                (self.progress)(format!("{label}: {read} documents read"));
            }
            match item {
                Item::Doc(doc, _) => {
                    let stored = match doc.get("_id") {
                        Some(Bson::ObjectId(o)) => Some(o.timestamp().timestamp_millis()),
                        _ => None,
                    };
                    if let (Some(cut), Some(stored)) = (self.cut_ms, stored) {
                        if stored >= cut {
                            later += 1;
                            continue;
                        }
                    }
                    each(&doc)?;
                }
                Item::Unreadable { reason, .. } => unreadable(reason),
            }
        }
        Ok((read - later, later))
    }
}

/// How long before it starts a subset of MongoDB stops taking documents:
/// more than the clock skew between the application's hosts and this one.
const CUT_BEFORE_MS: i64 = 60_000;

/// Makes the subset of `database.collection` in `source` that `opts`
/// describes, writes it to `out` and checks the reports on it.
///
/// # Errors
/// The source cannot be read, the output cannot be written (a file is then
/// left as it was; a collection holds what was inserted), or the source
/// holds nothing to sample.
pub async fn subset(
    source: &Source,
    database: &str,
    collection: &str,
    out: &Out,
    opts: &Options,
    progress: Progress<'_>,
) -> Result<Summary, SubsetError> {
    let mut summary = Summary::default();
    if let Out::Mongo {
        client,
        database,
        collection,
    } = out
    {
        let namespace = format!("{database}.{collection}");
        let held = client
            .database(database)
            .collection::<Document>(collection)
            .find_one(bson::doc! {})
            .await
            .map_err(|e| SubsetError::Mongo {
                what: "reading",
                namespace: namespace.clone(),
                source: e,
            })?;
        if held.is_some() {
            return Err(SubsetError::NotEmpty(namespace));
        }
    }

    let reads = Reads {
        source,
        database,
        collection,
        cut_ms: matches!(source, Source::Mongo(_))
            .then(|| chrono::Utc::now().timestamp_millis() - CUT_BEFORE_MS),
        progress,
    };

    // 1. Sample.
    let mut sampler = sample::Sampler::new(opts.by, opts.size, opts.seed, opts.range);
    let (mut unreadable, mut sample_reasons) = (0u64, Vec::new());
    (summary.read, summary.later) = reads
        .pass(
            "1/4 sampling",
            |doc| {
                sampler.add(doc);
                Ok(())
            },
            |reason| {
                unreadable += 1;
                if sample_reasons.len() < 5 {
                    sample_reasons.push(reason);
                }
            },
        )
        .await?;
    summary.unreadable = unreadable;
    summary.unreadable_sample = sample_reasons;
    summary.choice = sampler.choose();
    if summary.choice.chosen.is_empty() {
        let range = match (opts.range.from_ms, opts.range.to_ms) {
            (None, None) => String::new(),
            _ => " in the range asked for".to_owned(),
        };
        return Err(SubsetError::Nothing(opts.by.name(), range));
    }

    // 2. and 3. The closure.
    let seeds = summary.choice.chosen.keys().cloned().collect();
    let mut closure = Closure::new(opts.by, opts.range, seeds);
    reads
        .pass(
            "2/4 facts",
            |doc| {
                closure.facts(doc);
                Ok(())
            },
            |_| {},
        )
        .await?;
    reads
        .pass(
            "3/4 sessions and users",
            |doc| {
                closure.dimensions(doc);
                Ok(())
            },
            |_| {},
        )
        .await?;
    summary.sessions = closure.sessions.len();
    summary.users = closure.users.len();
    summary.presentations = closure.presentations.len();

    // 4. Set the copy aside, and the restricted source's reports.
    let spill_dir = match out {
        Out::File(p) => dir_of(p).to_owned(),
        Out::Mongo { .. } => std::env::temp_dir(),
    };
    let spill_err = |source| SubsetError::File {
        what: "setting the copy aside in",
        path: spill_dir.clone(),
        source,
    };
    let spill = temp_in(&spill_dir).map_err(spill_err)?;
    let mut writer = BufWriter::new(spill.as_file());
    let mut tallies: Vec<Tally> = ReportName::ALL
        .iter()
        .map(|(_, r)| Tally::new(*r, Range::default(), Grain::Report))
        .collect();
    let mut ids: Vec<ObjectId> = Vec::new();
    let mut event_ids: HashSet<u128> = HashSet::new();
    let rules = rules();
    reads
        .pass(
            "4/4 copying",
            |doc| {
                if closure.restricted(doc) {
                    for t in &mut tallies {
                        t.add(doc);
                    }
                }
                if closure.wanted(doc) {
                    doc.to_writer(&mut writer)
                        .map_err(|e| spill_err(std::io::Error::other(e.to_string())))?;
                    summary.written += 1;
                    if let Some(Bson::ObjectId(o)) = doc.get("_id") {
                        ids.push(*o);
                    }
                    match field(doc, "type").and_then(|t| rules.iter().find(|(k, _)| *k == t)) {
                        Some((_, f)) if !f.matches(doc) => summary.invalid += 1,
                        Some(_) => {
                            let id = field(doc, "event_id").unwrap_or_default();
                            if !event_ids.insert(xxhash_rust::xxh3::xxh3_128(id.as_bytes())) {
                                summary.copies += 1;
                            }
                        }
                        None => {}
                    }
                }
                Ok(())
            },
            |_| {},
        )
        .await?;
    writer.flush().map_err(spill_err)?;
    drop(writer);
    ids.sort_unstable();
    ids.dedup();

    // Write the copy out.
    progress(format!(
        "writing {} documents to {}",
        summary.written,
        out.describe()
    ));
    let copy = BufReader::new(spill.reopen().map_err(spill_err)?);
    write(copy, out, opts, &ids, summary.written).await?;
    drop(spill);

    // Check the reports.
    progress("checking the five reports on the copy".into());
    let expected: Vec<Report> = tallies
        .into_iter()
        .zip(ReportName::ALL)
        .map(|(t, (_, name))| map_report(*name, t.finish(), opts))
        .collect();
    let actual = reports_of(out).await?;
    for ((name, want), got) in ReportName::ALL
        .iter()
        .map(|(_, n)| *n)
        .zip(expected)
        .zip(actual)
    {
        summary
            .reports
            .push((name, got.rows.len(), first_difference(&want, &got)));
    }
    Ok(summary)
}

/// The directory a file is in.
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A temporary file in `dir`, its owner's only, removed when dropped.
fn temp_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".cutover-subset-")
        .tempfile_in(dir)
}

fn rules() -> Vec<(&'static str, crate::filter::Filter)> {
    MODEL_TYPES
        .iter()
        .map(|t| {
            (
                *t,
                crate::filter::Filter::new(crate::reports::legacy::valid(t))
                    .expect("the rules are supported filters"),
            )
        })
        .collect()
}

/// A document of the copy as written: anonymised, or its times shifted.
fn output_doc(doc: &Document, opts: &Options, ids: &[ObjectId]) -> Document {
    let oid = match doc.get("_id") {
        Some(Bson::ObjectId(o)) => Some(*o),
        _ => None,
    };
    if let Some(a) = &opts.anonymize {
        let minted = oid.map(|o| {
            let rank = ids.binary_search(&o).unwrap_or_else(|i| i) as u64;
            anonymize::mint(o, rank, opts.shift_days)
        });
        return a.document(doc, minted);
    }
    if opts.shift_days == 0 {
        return doc.clone();
    }
    let mut out = doc.clone();
    if let Some(o) = oid {
        out.insert("_id", anonymize::shift(o, opts.shift_days));
    }
    if let Ok(ts) = doc.get_datetime("ts") {
        out.insert(
            "ts",
            bson::DateTime::from_millis(
                ts.timestamp_millis()
                    .saturating_add(opts.shift_days.saturating_mul(86_400_000)),
            ),
        );
    }
    out
}

/// Writes the documents set aside to `out`.
async fn write(
    mut copy: BufReader<std::fs::File>,
    out: &Out,
    opts: &Options,
    ids: &[ObjectId],
    count: u64,
) -> Result<(), SubsetError> {
    let mut next = move || -> Option<Document> {
        // Only documents this process wrote are read back.
        Document::from_reader(&mut copy).ok()
    };
    match out {
        Out::File(path) => {
            let failed = |source| SubsetError::File {
                what: "writing",
                path: path.clone(),
                source,
            };
            let tmp = temp_in(dir_of(path)).map_err(failed)?;
            let mut w = BufWriter::new(tmp.as_file());
            for _ in 0..count {
                let Some(doc) = next() else { break };
                let json = Bson::Document(output_doc(&doc, opts, ids)).into_canonical_extjson();
                serde_json::to_writer(&mut w, &json).map_err(|e| failed(e.into()))?;
                w.write_all(b"\n").map_err(failed)?;
            }
            w.flush().map_err(failed)?;
            drop(w);
            tmp.persist(path).map_err(|e| failed(e.error))?;
        }
        Out::Mongo {
            client,
            database,
            collection,
        } => {
            let coll = client.database(database).collection::<Document>(collection);
            let namespace = format!("{database}.{collection}");
            let mut batch = Vec::with_capacity(1_000);
            for i in 0..count {
                let Some(doc) = next() else { break };
                batch.push(output_doc(&doc, opts, ids));
                if batch.len() == 1_000 || i + 1 == count {
                    coll.insert_many(std::mem::take(&mut batch))
                        .await
                        .map_err(|e| SubsetError::Mongo {
                            what: "inserting into",
                            namespace: namespace.clone(),
                            source: e,
                        })?;
                }
            }
            if !batch.is_empty() {
                coll.insert_many(batch)
                    .await
                    .map_err(|e| SubsetError::Mongo {
                        what: "inserting into",
                        namespace,
                        source: e,
                    })?;
            }
        }
    }
    Ok(())
}

/// A report of the whole source restricted to the sample, in the copy's
/// terms: days shifted, presentation ids through their pseudonyms.
fn map_report(name: ReportName, report: Report, opts: &Options) -> Report {
    let columns = report.columns.clone();
    let rows = report
        .rows
        .into_iter()
        .map(|row| {
            row.into_iter()
                .zip(&columns)
                .map(|(v, c)| match (*c, v) {
                    ("day", Json::String(d)) => {
                        Json::String(anonymize::shift_day(&d, opts.shift_days))
                    }
                    ("presentation_id", Json::String(p)) => Json::String(match &opts.anonymize {
                        Some(a) => a.id("presentation_id", &p),
                        None => p,
                    }),
                    (_, v) => v,
                })
                .collect()
        })
        .collect();
    Report::new(name, Grain::Report, rows)
}

/// The five reports computed on the copy: by the legacy rules over the
/// file, or by the legacy MongoDB aggregations over the collection.
async fn reports_of(out: &Out) -> Result<Vec<Report>, SubsetError> {
    match out {
        Out::File(path) => {
            let source = Source::File(path.clone());
            let mut tallies: Vec<Tally> = ReportName::ALL
                .iter()
                .map(|(_, r)| Tally::new(*r, Range::default(), Grain::Report))
                .collect();
            let mut stream = source.every("", "", 10_000).await?;
            while let Some(item) = stream.try_next().await? {
                if let Item::Doc(doc, _) = item {
                    for t in &mut tallies {
                        t.add(&doc);
                    }
                }
            }
            Ok(tallies.into_iter().map(Tally::finish).collect())
        }
        Out::Mongo {
            client,
            database,
            collection,
        } => {
            let source = Source::Mongo(client.clone());
            let events = Events {
                source: &source,
                database,
                collection,
            };
            let mut out = Vec::new();
            for (_, name) in ReportName::ALL {
                out.push(from_legacy(&events, *name, Range::default(), Grain::Report).await?);
            }
            Ok(out)
        }
    }
}

/// The rows that differ between two reports, described with the first
/// of them; `None` when they are equal.
fn first_difference(want: &Report, got: &Report) -> Option<String> {
    if want.rows == got.rows {
        return None;
    }
    let by_key = |report: &Report| -> BTreeMap<String, Json> {
        report
            .rows
            .iter()
            .map(|r| {
                let key = Json::from(r[..want.groups.min(r.len())].to_vec()).to_string();
                (key, Json::from(r.clone()))
            })
            .collect()
    };
    let (wanted, held) = (by_key(want), by_key(got));
    let differing: Vec<(&String, Option<&Json>, Option<&Json>)> = wanted
        .keys()
        .chain(held.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|k| (k, wanted.get(k), held.get(k)))
        .filter(|(_, w, g)| w != g)
        .collect();
    let show = |r: Option<&Json>| r.map_or_else(|| "no row".to_owned(), Json::to_string);
    let (k, w, g) = differing.first()?;
    Some(format!(
        "{} rows differ; the first, {k}: the source restricted to the sample has {}, the copy {}",
        differing.len(),
        show(*w),
        show(*g)
    ))
}
