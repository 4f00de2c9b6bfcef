//! The incremental mode: consumes the live event feed from an SQS queue
//! into the same warehouse, through the DAGs' own extract, transform and
//! load tasks.
//!
//! Several receivers long-poll the queue and hand messages to one batcher,
//! which flushes a micro-batch when it holds `batch_messages` messages or its
//! oldest is `batch_age` old. A flush parses every body (MongoDB Extended
//! JSON), quarantines poison (not an event), routes each event to the DAGs
//! whose extracts take it (their `types` and `filter`, as on the events
//! file), and runs each of those DAGs once over its events, without its
//! verify tasks, in `after` order, recorded in the ledger as runs of trigger
//! `sqs`. A message is deleted only when every DAG that takes it has
//! committed; until then a heartbeat keeps it invisible. A message whose
//! event only DAGs this consumer does not run take is left for another
//! consumer (made visible again); one whose type no DAG in the folder takes
//! is deleted, as the nightly runs ignore it.
//!
//! A micro-batch that fails is not the end: a run that failed for a reason
//! that may pass (the warehouse locked or away) is tried again with its
//! messages after a back-off, and after a few tries its messages are
//! released to come back through the queue (and its redrive policy); a run
//! that failed for the data it was given is run again on halves of its
//! events until the event that breaks it is found, which is quarantined,
//! and the rest loads. The loads' merges
//! are keyed and order-independent, so redeliveries, duplicates and
//! out-of-order events leave the same rows as an in-order, once-only feed.
//! A feed batch never moves a watermark: the nightly runs own them.

pub mod queue;
pub mod status;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{Bson, Document};
use tokio::sync::{mpsc, watch};
use workflows::{Dag, RunOptions, RunState, Runner};

use crate::kinds::{build_tasks, without_verify, Env, TaskKind};
use crate::quarantine::{self, Raw, Rejected};
use crate::source::{file_match, parse_line, Query, Source};
use crate::warehouse::Warehouse;

pub use queue::{Queue, QueueError, Received};
pub use status::{ConsumerStatus, Totals};

/// The `dag` under which poison messages are quarantined.
pub const POISON_DAG: &str = "(sqs)";

/// How the consumer runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Concurrent long-polling receivers.
    pub receivers: NonZeroUsize,
    /// A micro-batch is flushed when it holds this many messages...
    pub batch_messages: NonZeroUsize,
    /// ...or when its oldest message has waited this long.
    pub batch_age: Duration,
    /// The longest a receive waits for a message (long polling, at most 20 s).
    pub wait: Duration,
    /// How long a received message stays invisible to other consumers;
    /// the queue's own setting when `None`. Held messages are extended by
    /// this much every third of it.
    pub visibility: Option<Duration>,
    /// Stop once nothing has arrived for this long, nothing is held, and
    /// the queue reports no message visible or in flight.
    pub until_idle: Option<Duration>,
    /// How the micro-batch runs are started (work directory, parallelism).
    pub run: RunOptions,
}

/// The consumer could not start, or lost its queue for good.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The queue cannot be used.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// None of the DAGs reads events.
    #[error("no DAG has an extract.mongo task, so no event would be loaded")]
    NoDags,
}

/// The consumer of one queue into one warehouse.
pub struct Consumer {
    queue: Queue,
    dags: Vec<Dag<TaskKind>>,
    warehouse: Warehouse,
    runner: Runner,
    settings: Settings,
    status: ConsumerStatus,
    /// Each DAG's extract queries, which route events to it.
    routes: Vec<Vec<Query>>,
    /// The extract queries of the DAGs in the folder this consumer does not
    /// run: their events are left for another consumer.
    others: Vec<Query>,
    /// The fields that name an event's type in any of those queries.
    type_fields: BTreeSet<String>,
    /// Messages left for other consumers: how often each came back, so
    /// that one that keeps coming back is left for longer each time.
    left: HashMap<String, (u32, Instant)>,
}

/// What one micro-batch did.
#[derive(Debug, Default, Clone)]
pub struct Flushed {
    /// Messages in the batch.
    pub messages: u64,
    /// Of those, deliveries after the first of one message.
    pub redelivered: u64,
    /// Messages whose body is an event.
    pub events: u64,
    /// Messages quarantined as poison.
    pub poison: u64,
    /// Messages deleted from the queue.
    pub deleted: u64,
    /// Messages left for other consumers (their events are taken only by
    /// DAGs this consumer does not run).
    pub left: u64,
    /// Messages of a type no DAG takes, deleted.
    pub ignored: u64,
    /// Events that alone made a DAG's run fail, quarantined.
    pub isolated: u64,
    /// DAGs whose run did not succeed.
    pub failed: Vec<String>,
    /// Messages to try again (their DAG failed for a reason that may pass).
    pub retry: Vec<Received>,
}

/// Receipt handles of messages held (received, not yet deleted or released),
/// each with the instant it becomes visible again unless extended, which
/// the heartbeat watches.
#[derive(Debug, Default, Clone)]
struct Held(Arc<Mutex<HashMap<String, Instant>>>);

impl Held {
    fn add(&self, receipts: impl IntoIterator<Item = String>, visibility: Duration) {
        let until = Instant::now() + visibility;
        let mut map = self.0.lock().expect("held set");
        map.extend(receipts.into_iter().map(|r| (r, until)));
    }
    fn remove<'a>(&self, receipts: impl IntoIterator<Item = &'a str>) {
        let mut map = self.0.lock().expect("held set");
        for r in receipts {
            map.remove(r);
        }
    }
    /// The held messages that become visible within `margin`.
    fn due(&self, margin: Duration) -> Vec<String> {
        let soon = Instant::now() + margin;
        let map = self.0.lock().expect("held set");
        map.iter()
            .filter(|(_, until)| **until <= soon)
            .map(|(r, _)| r.clone())
            .collect()
    }
    /// Records that `receipts` are invisible for `visibility` from now.
    fn extended(&self, receipts: &[&str], visibility: Duration) {
        let until = Instant::now() + visibility;
        let mut map = self.0.lock().expect("held set");
        for r in receipts {
            if let Some(u) = map.get_mut(*r) {
                *u = until;
            }
        }
    }
}

/// When this consumer last had work of its own (a message it loaded,
/// quarantined or deleted).
#[derive(Debug, Clone)]
struct Activity(Arc<Mutex<Instant>>);

impl Default for Activity {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }
}

impl Activity {
    fn worked(&self) {
        *self.0.lock().expect("activity") = Instant::now();
    }
    /// Whether it has had no work of its own for `idle`.
    fn idle_for(&self, idle: Duration) -> bool {
        self.0.lock().expect("activity").elapsed() >= idle
    }
}

/// The queries of a DAG's extracts, without a time range.
fn queries(dag: &Dag<TaskKind>) -> Vec<Query> {
    dag.tasks
        .iter()
        .filter_map(|t| match &t.kind {
            TaskKind::ExtractMongo(c) => Some(c.query(None, None)),
            _ => None,
        })
        .collect()
}

/// A message's body read as an event, or why it is not one.
fn parse_event(body: &str, type_fields: &BTreeSet<String>) -> Result<Document, String> {
    let doc = parse_line(body.trim())?;
    if type_fields
        .iter()
        .any(|f| matches!(doc.get(f), Some(Bson::String(_))))
    {
        Ok(doc)
    } else {
        let names: Vec<String> = type_fields.iter().map(|f| format!("`{f}`")).collect();
        Err(format!(
            "not an event: no string field {}",
            names.join(" or ")
        ))
    }
}

/// The DAGs grouped in levels: each DAG comes after those of its `after`
/// that are in `dags`.
fn levels(dags: &[Dag<TaskKind>]) -> Vec<Vec<usize>> {
    let mut level: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    // `dags` is in `after` order already (`load_dir`), so every DAG's
    // predecessors have their level when it is reached.
    for (i, d) in dags.iter().enumerate() {
        let l = d
            .after
            .iter()
            .filter_map(|a| level.get(a.as_str()).map(|l| l + 1))
            .max()
            .unwrap_or(0);
        level.insert(&d.name, l);
        if out.len() <= l {
            out.resize_with(l + 1, Vec::new);
        }
        out[l].push(i);
    }
    out
}

impl Consumer {
    /// A consumer of `queue` for `dags` (those that read events) into
    /// `warehouse`, recording runs with `runner`.
    ///
    /// # Errors
    /// No DAG reads events, or the queue cannot be reached.
    /// `all` is every DAG of the folder: the events that only the others
    /// take are left on the queue for the consumers that run them.
    pub async fn new(
        queue: Queue,
        dags: &[Dag<TaskKind>],
        all: &[Dag<TaskKind>],
        warehouse: Warehouse,
        runner: Runner,
        mut settings: Settings,
    ) -> Result<Self, ConsumeError> {
        let others: Vec<Query> = all
            .iter()
            .filter(|d| !dags.iter().any(|x| x.name == d.name))
            .flat_map(queries)
            .collect();
        let dags: Vec<Dag<TaskKind>> = dags.iter().filter_map(without_verify).collect();
        if dags.is_empty() {
            return Err(ConsumeError::NoDags);
        }
        if settings.visibility.is_none() {
            settings.visibility = Some(queue.visibility_timeout().await?);
        } else {
            queue.visibility_timeout().await?;
        }
        settings.run.trigger = "sqs".into();
        let status = ConsumerStatus::new(queue.url());
        let routes: Vec<Vec<Query>> = dags.iter().map(queries).collect();
        let type_fields = routes
            .iter()
            .flatten()
            .chain(&others)
            .map(|q| q.type_field.clone())
            .collect();
        Ok(Self {
            queue,
            dags,
            warehouse,
            runner,
            settings,
            status,
            routes,
            others,
            type_fields,
            left: HashMap::new(),
        })
    }

    /// This consumer's id in `cutover_consumers`.
    pub fn id(&self) -> &str {
        &self.status.consumer_id
    }

    /// Consumes until `stop` turns true (finishing what it holds) or, with
    /// `until_idle`, until the queue has been empty that long.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Totals {
        let visibility = self.settings.visibility.unwrap_or(Duration::from_secs(30));
        let held = Held::default();
        let idle_stop = Arc::new(AtomicBool::new(false));
        let activity = Activity::default();
        let capacity = self.settings.batch_messages.get() * 2;
        let (tx, mut rx) = mpsc::channel::<Received>(capacity.max(MAX_RECEIVED));
        self.status.start(&self.warehouse).await;

        let mut receivers = tokio::task::JoinSet::new();
        for n in 0..self.settings.receivers.get() {
            receivers.spawn(receive_loop(
                n,
                self.queue.clone(),
                self.settings.wait,
                visibility,
                held.clone(),
                tx.clone(),
                stop.clone(),
                Arc::clone(&idle_stop),
            ));
        }
        drop(tx);
        let heartbeat = tokio::spawn(heartbeat_loop(self.queue.clone(), held.clone(), visibility));

        let mut pending: Vec<(Instant, Received)> = Vec::new();
        // Messages of runs that failed for a reason that may pass: tried
        // again with the next batch after a back-off.
        let mut retry: Vec<Received> = Vec::new();
        let mut tries = 0u32;
        let mut retry_at = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut stopping = *stop.borrow();
        let mut last_look = Instant::now();
        loop {
            let now = Instant::now();
            let due = pending
                .first()
                .is_some_and(|(at, _)| *at + self.settings.batch_age <= now);
            let full = pending.len() >= self.settings.batch_messages.get();
            let retry_due = !retry.is_empty() && retry_at <= now;
            let waiting_retry = !retry.is_empty() && retry_at > now;
            if (!pending.is_empty() && (full || due) && !waiting_retry) || retry_due {
                let mut batch = std::mem::take(&mut retry);
                batch.extend(pending.drain(..).map(|(_, m)| m));
                let flushed = self.flush(batch, &held, &activity).await;
                if flushed.retry.is_empty() {
                    tries = 0;
                } else {
                    tries += 1;
                    if tries >= MAX_TRIES || stopping {
                        self.release(&flushed.retry, &held).await;
                        tries = 0;
                    } else {
                        let backoff = (Duration::from_secs(1) * 2u32.pow(tries - 1))
                            .min(Duration::from_secs(30));
                        tracing::warn!(
                            failed = ?flushed.failed,
                            messages = flushed.retry.len(),
                            try_again_in_ms = backoff.as_millis() as u64,
                            "a micro-batch did not commit; trying its messages again"
                        );
                        retry = flushed.retry;
                        retry_at = Instant::now() + backoff;
                    }
                }
                continue;
            }
            // While a batch waits to be tried again, receive no more than a
            // batch: the receivers wait on the channel meanwhile.
            let room = pending.len() < self.settings.batch_messages.get();
            tokio::select! {
                m = rx.recv(), if room => match m {
                    Some(m) => pending.push((Instant::now(), m)),
                    None => break,
                },
                _ = tick.tick() => {
                    // Idle: no work of its own for that long, nothing
                    // received waits, and the queue holds nothing but the
                    // messages left for other consumers.
                    let quiet = self.settings.until_idle.is_some_and(|i| activity.idle_for(i))
                        && pending.is_empty()
                        && retry.is_empty()
                        && rx.is_empty()
                        && !idle_stop.load(Ordering::SeqCst)
                        && last_look.elapsed() >= IDLE_LOOK_EVERY;
                    if quiet {
                        last_look = Instant::now();
                        // Messages left for others that are still on the
                        // queue come back to this consumer at least every
                        // 30 s (the longest it leaves one for); those not
                        // seen for longer were taken by their consumers.
                        let recent = Duration::from_secs(35) + self.settings.wait + self.settings.batch_age;
                        let theirs = self
                            .left
                            .values()
                            .filter(|(_, at)| at.elapsed() < recent)
                            .count() as u64;
                        match self.queue.depth().await {
                            Ok((visible, in_flight)) if visible + in_flight <= theirs => {
                                idle_stop.store(true, Ordering::SeqCst);
                                tracing::info!(left_for_others = theirs, "the queue has held nothing for this consumer for the idle time; stopping");
                            }
                            Ok((visible, in_flight)) => tracing::debug!(visible, in_flight, "not idle: the queue still holds messages"),
                            Err(e) => tracing::warn!(error = %e, "could not read the queue's depth"),
                        }
                    }
                }
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    tracing::info!("stopping: finishing the messages held");
                }
            }
        }
        // Every receiver has ended; what they received is in `pending`.
        while receivers.join_next().await.is_some() {}
        let mut batch = std::mem::take(&mut retry);
        batch.extend(pending.drain(..).map(|(_, m)| m));
        if !batch.is_empty() {
            let flushed = self.flush(batch, &held, &activity).await;
            // What still fails goes back to the queue at once, for the next
            // consumer (or, past the redrive policy, the dead-letter queue).
            self.release(&flushed.retry, &held).await;
        }
        heartbeat.abort();
        self.status.finish(&self.warehouse).await;
        self.status.totals.clone()
    }

    /// Makes messages visible again at once, and stops keeping them.
    async fn release(&mut self, messages: &[Received], held: &Held) {
        let receipts: Vec<&str> = messages.iter().map(|m| m.receipt.as_str()).collect();
        held.remove(receipts.iter().copied());
        for chunk in receipts.chunks(queue::MAX_BATCH) {
            if let Err(e) = self.queue.extend_batch(chunk, Duration::ZERO).await {
                // They come back after the visibility timeout anyway.
                tracing::warn!(error = %e, "could not release messages");
            }
        }
    }

    /// Loads one micro-batch and deletes what it committed; returns what
    /// it did, with the messages to try again.
    async fn flush(&mut self, batch: Vec<Received>, held: &Held, activity: &Activity) -> Flushed {
        let started = Instant::now();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let lag = batch
            .iter()
            .filter_map(|m| m.sent_ms)
            .min()
            .map(|s| (now_ms - s).max(0));
        let mut out = Flushed {
            messages: batch.len() as u64,
            redelivered: batch.iter().filter(|m| m.receive_count > 1).count() as u64,
            ..Flushed::default()
        };

        // Parse and route.
        let mut poison: Vec<(usize, Rejected)> = Vec::new();
        let mut routed: Vec<Vec<(usize, Document)>> = vec![Vec::new(); self.dags.len()];
        let mut takers: Vec<Vec<usize>> = vec![Vec::new(); batch.len()];
        let mut theirs: Vec<usize> = Vec::new();
        let mut ignored: Vec<usize> = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            match parse_event(&m.body, &self.type_fields) {
                Ok(doc) => {
                    out.events += 1;
                    for (d, qs) in self.routes.iter().enumerate() {
                        if qs.iter().any(|q| file_match(&doc, q)) {
                            routed[d].push((i, doc.clone()));
                            takers[i].push(d);
                        }
                    }
                    if takers[i].is_empty() {
                        if self.others.iter().any(|q| file_match(&doc, q)) {
                            theirs.push(i);
                        } else {
                            ignored.push(i);
                        }
                    }
                }
                Err(reason) => poison.push((
                    i,
                    Rejected::unreadable(
                        Raw::Text(m.body.clone()),
                        reason,
                        Some(format!("message {}", m.message_id)),
                    ),
                )),
            }
        }

        // Quarantine poison; if that fails, it stays on the queue.
        let rejected: Vec<Rejected> = poison.iter().map(|(_, r)| r.clone()).collect();
        let poison_ok =
            match quarantine::write(&self.warehouse, POISON_DAG, "consume", self.id(), &rejected)
                .await
            {
                Ok(()) => true,
                Err(e) => {
                    self.status
                        .error(format!("quarantining poison messages: {e}"));
                    false
                }
            };
        if poison_ok {
            out.poison = poison.len() as u64;
        }

        // Run the DAGs that take something, level by level; a DAG whose run
        // fails on its data is run again on halves until the events that
        // break it are found.
        let mut succeeded: HashSet<usize> = HashSet::new();
        for level in levels(&self.dags) {
            let mut runs = tokio::task::JoinSet::new();
            for d in level {
                let docs = std::mem::take(&mut routed[d]);
                if docs.is_empty() {
                    succeeded.insert(d);
                    continue;
                }
                let feed = FeedRun {
                    consumer: self.id().to_owned(),
                    dag: self.dags[d].clone(),
                    warehouse: self.warehouse.clone(),
                    runner: self.runner.clone(),
                    opts: self.settings.run.clone(),
                };
                let ids: Vec<String> = docs
                    .iter()
                    .map(|(i, _)| batch[*i].message_id.clone())
                    .collect();
                runs.spawn(async move { (d, feed.run_isolating(docs, ids).await) });
            }
            while let Some(joined) = runs.join_next().await {
                let Ok((d, outcome)) = joined else { continue };
                let name = self.dags[d].name.clone();
                out.isolated += outcome.isolated;
                for e in &outcome.errors {
                    self.status.error(format!("dag {name}: {e}"));
                }
                match outcome.result {
                    FeedResult::Committed => {
                        succeeded.insert(d);
                    }
                    FeedResult::Retry => out.failed.push(name),
                }
            }
        }

        // Delete what is done, keep what is to be tried again, leave the
        // others' messages for them.
        let poison_at: HashSet<usize> = poison.iter().map(|(i, _)| *i).collect();
        let mut done: Vec<usize> = Vec::new();
        for i in 0..batch.len() {
            if poison_at.contains(&i) {
                if poison_ok {
                    done.push(i);
                } else {
                    out.retry.push(batch[i].clone());
                }
            } else if takers[i].is_empty() {
                // Left for others, or ignored (below).
            } else if takers[i].iter().all(|d| succeeded.contains(d)) {
                done.push(i);
            } else {
                out.retry.push(batch[i].clone());
            }
        }
        out.ignored = ignored.len() as u64;
        done.extend(&ignored);
        let receipts: Vec<&str> = done.iter().map(|i| batch[*i].receipt.as_str()).collect();
        let deleting = Instant::now();
        out.deleted = self.delete(&receipts).await;
        let delete_ms = deleting.elapsed().as_millis() as u64;
        held.remove(receipts.iter().copied());
        if !theirs.is_empty() {
            out.left = theirs.len() as u64;
            self.leave(theirs.iter().map(|i| &batch[*i]), held).await;
        }
        if out.messages > out.left {
            activity.worked();
        }

        self.status.record(&out, lag);
        self.status.save(&self.warehouse).await;
        tracing::info!(
            messages = out.messages,
            redelivered = out.redelivered,
            events = out.events,
            poison = out.poison,
            deleted = out.deleted,
            left_for_others = out.left,
            ignored = out.ignored,
            isolated = out.isolated,
            failed = out.failed.len(),
            retry = out.retry.len(),
            lag_ms = lag.unwrap_or_default(),
            took_ms = started.elapsed().as_millis() as u64,
            delete_ms,
            "micro-batch"
        );
        out
    }

    /// Leaves messages for the consumers that run their DAGs: visible again
    /// at once the first time; one that keeps coming back to this consumer
    /// waits longer each time (up to 30 s), so that it is not received
    /// again and again here.
    async fn leave<'a>(&mut self, messages: impl Iterator<Item = &'a Received>, held: &Held) {
        let now = Instant::now();
        self.left
            .retain(|_, (_, at)| now.duration_since(*at) < LEFT_MEMORY);
        let mut by_delay: HashMap<u64, Vec<&str>> = HashMap::new();
        for m in messages {
            let seen = self.left.entry(m.message_id.clone()).or_insert((0, now));
            let delay = if seen.0 == 0 {
                0
            } else {
                (1u64 << seen.0.min(5)).min(30)
            };
            *seen = (seen.0 + 1, now);
            by_delay.entry(delay).or_default().push(m.receipt.as_str());
        }
        for (delay, receipts) in by_delay {
            held.remove(receipts.iter().copied());
            for chunk in receipts.chunks(queue::MAX_BATCH) {
                if let Err(e) = self
                    .queue
                    .extend_batch(chunk, Duration::from_secs(delay))
                    .await
                {
                    tracing::warn!(error = %e, "could not leave messages for other consumers");
                }
            }
        }
    }

    /// Deletes messages, ten per request and several requests at once,
    /// retrying the entries SQS did not delete; returns how many were
    /// deleted. A message left undeleted comes back and is loaded again,
    /// which changes nothing.
    async fn delete(&mut self, receipts: &[&str]) -> u64 {
        use futures::StreamExt;
        let queue = &self.queue;
        let results: Vec<(u64, Vec<String>)> =
            futures::stream::iter(receipts.chunks(queue::MAX_BATCH))
                .map(|chunk| delete_chunk(queue, chunk))
                .buffer_unordered(DELETE_REQUESTS)
                .collect()
                .await;
        let mut deleted = 0;
        for (n, errors) in results {
            deleted += n;
            for e in errors {
                self.status.error(e);
            }
        }
        deleted
    }
}

/// One DAG's run over the events of a micro-batch.
struct FeedRun {
    consumer: String,
    dag: Dag<TaskKind>,
    warehouse: Warehouse,
    runner: Runner,
    opts: RunOptions,
}

/// How a DAG's part of a micro-batch ended.
#[derive(Debug)]
enum FeedResult {
    /// Every event was committed or quarantined.
    Committed,
    /// A run failed for a reason that may pass: try the messages again.
    Retry,
}

/// What [`FeedRun::run_isolating`] did.
#[derive(Debug)]
struct FeedOutcome {
    result: FeedResult,
    /// Events quarantined because they alone made a run fail.
    isolated: u64,
    /// The failures seen on the way.
    errors: Vec<String>,
}

/// Why a run did not succeed, and whether that may pass.
fn failure(
    result: &Result<workflows::RunSummary, workflows::runner::RunError>,
) -> Option<(String, bool)> {
    match result {
        Ok(summary) if matches!(summary.state, RunState::Succeeded) => None,
        Ok(summary) => {
            let (why, retryable) = summary
                .tasks
                .iter()
                .find_map(|(t, s)| match s {
                    workflows::TaskState::Failed {
                        error, retryable, ..
                    } => Some((
                        format!("run {}: task {t}: {error}", summary.run_id),
                        *retryable,
                    )),
                    _ => None,
                })
                .unwrap_or_else(|| {
                    (
                        format!("run {}: {}", summary.run_id, summary.state.name()),
                        true,
                    )
                });
            Some((why, retryable))
        }
        Err(e) => Some((e.to_string(), true)),
    }
}

impl FeedRun {
    async fn run(
        &self,
        docs: Vec<Document>,
    ) -> Result<workflows::RunSummary, workflows::runner::RunError> {
        let env = Env {
            source: Source::Feed(Arc::new(docs)),
            warehouse: self.warehouse.clone(),
        };
        let tasks = build_tasks(&self.dag, &env);
        self.runner.run(&self.dag, tasks, &self.opts).await
    }

    /// Runs the DAG over `docs` (each with its message's index; `ids` are
    /// the message ids, in the same order); when a run fails for its data,
    /// runs the halves, down to single events, which are quarantined.
    async fn run_isolating(&self, docs: Vec<(usize, Document)>, ids: Vec<String>) -> FeedOutcome {
        let mut out = FeedOutcome {
            result: FeedResult::Committed,
            isolated: 0,
            errors: Vec::new(),
        };
        // A failure that is not about single events (a table missing, a
        // setting wrong) would fail every part: past this many events set
        // aside, stop and let the messages come back instead.
        let limit = (docs.len() / 10).max(3);
        let (key, type_field) = self
            .dag
            .tasks
            .iter()
            .find_map(|t| match &t.kind {
                TaskKind::ExtractMongo(c) => Some((c.key.clone(), c.type_field.clone())),
                _ => None,
            })
            .unwrap_or_else(|| ("event_id".into(), "type".into()));
        let mut breaking: Vec<Rejected> = Vec::new();
        let mut checked_empty = false;
        let mut todo: Vec<Vec<(Document, String)>> =
            vec![docs.into_iter().map(|(_, d)| d).zip(ids).collect()];
        while let Some(part) = todo.pop() {
            let result = self
                .run(part.iter().map(|(d, _)| d.clone()).collect())
                .await;
            let Some((why, retryable)) = failure(&result) else {
                continue;
            };
            out.errors.push(why.clone());
            if retryable {
                out.result = FeedResult::Retry;
                return out;
            }
            // A run that fails without any event fails for its settings or
            // its tables, not for the data: no event is to blame.
            if !checked_empty {
                checked_empty = true;
                if let Some((empty_why, _)) = failure(&self.run(Vec::new()).await) {
                    out.errors.push(format!(
                        "the DAG fails even without events ({empty_why}); the messages come back"
                    ));
                    out.result = FeedResult::Retry;
                    return out;
                }
            }
            if breaking.len() >= limit {
                out.errors.push(format!(
                    "more than {limit} events each fail the run alone: not a problem of single events; the messages come back"
                ));
                out.result = FeedResult::Retry;
                return out;
            }
            if part.len() == 1 {
                let (doc, id) = &part[0];
                breaking.push(Rejected::from_doc(
                    doc,
                    &key,
                    &type_field,
                    format!(
                        "the run of dag {} failed on this event alone: {why}",
                        self.dag.name
                    ),
                    Some(&format!("message {id}")),
                ));
            } else {
                tracing::warn!(dag = %self.dag.name, events = part.len(), error = %why, "a run failed on its data; running halves to find the events that break it");
                let mut left = part;
                let right = left.split_off(left.len() / 2);
                todo.push(right);
                todo.push(left);
            }
        }
        // Only now that the rest committed are the breaking events set
        // aside (a batch that comes back is searched again).
        match quarantine::write(
            &self.warehouse,
            &self.dag.name,
            "consume",
            &self.consumer,
            &breaking,
        )
        .await
        {
            Ok(()) => out.isolated = breaking.len() as u64,
            Err(e) => {
                out.errors
                    .push(format!("quarantining the events that break the run: {e}"));
                out.result = FeedResult::Retry;
            }
        }
        out
    }
}

/// Deletes up to ten messages, trying the failed entries again; returns how
/// many were deleted and the errors of the last attempt.
async fn delete_chunk(queue: &Queue, chunk: &[&str]) -> (u64, Vec<String>) {
    let mut todo: Vec<String> = chunk.iter().map(|s| (*s).to_owned()).collect();
    let mut deleted = 0u64;
    let mut errors = Vec::new();
    for attempt in 1..=DELETE_ATTEMPTS {
        let refs: Vec<&str> = todo.iter().map(String::as_str).collect();
        match queue.delete_batch(&refs).await {
            Ok(failed) => {
                deleted += (todo.len() - failed.len()) as u64;
                if failed.is_empty() {
                    return (deleted, Vec::new());
                }
                if attempt == DELETE_ATTEMPTS {
                    errors = failed
                        .iter()
                        .map(|(_, why)| format!("deleting a message: {why}; it will come back"))
                        .collect();
                }
                todo = failed.into_iter().map(|(r, _)| r).collect();
            }
            Err(e) => {
                if attempt == DELETE_ATTEMPTS {
                    errors = vec![format!("{e}; the messages will come back")];
                }
            }
        }
        if attempt < DELETE_ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }
    (deleted, errors)
}

const DELETE_ATTEMPTS: u32 = 3;
/// Tries of a micro-batch whose runs fail for a reason that may pass, before
/// its messages are released to the queue.
const MAX_TRIES: u32 = 5;
/// How long a message left for other consumers is remembered.
const LEFT_MEMORY: Duration = Duration::from_secs(300);
/// Delete requests in flight at once.
const DELETE_REQUESTS: usize = 8;
/// How often an idle consumer asks the queue whether it is empty.
const IDLE_LOOK_EVERY: Duration = Duration::from_secs(1);
const MAX_RECEIVED: usize = 100;

/// One receiver: long-polls until told to stop, holding what it receives.
#[allow(clippy::too_many_arguments)]
async fn receive_loop(
    n: usize,
    queue: Queue,
    wait: Duration,
    visibility: Duration,
    held: Held,
    tx: mpsc::Sender<Received>,
    mut stop: watch::Receiver<bool>,
    idle_stop: Arc<AtomicBool>,
) {
    let mut failures = 0u32;
    loop {
        if *stop.borrow() || idle_stop.load(Ordering::SeqCst) {
            return;
        }
        let received = tokio::select! {
            r = queue.receive(wait, Some(visibility)) => r,
            _ = stop.changed() => return,
        };
        match received {
            Ok(messages) => {
                failures = 0;
                held.add(messages.iter().map(|m| m.receipt.clone()), visibility);
                tracing::debug!(
                    receiver = n,
                    received = messages.len(),
                    redelivered = messages.iter().filter(|m| m.receive_count > 1).count(),
                    "receive"
                );
                for m in messages {
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(250 * 2u64.pow(failures.min(7)));
                tracing::warn!(receiver = n, error = %e, retry_in_ms = pause.as_millis() as u64, "receive failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// Keeps held messages invisible while their batch is being loaded: every
/// third of the visibility timeout, the messages that would become visible
/// within half of it are made invisible for a whole timeout again.
async fn heartbeat_loop(queue: Queue, held: Held, visibility: Duration) {
    let every = (visibility / 3).max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let receipts = held.due(visibility / 2);
        for chunk in receipts.chunks(queue::MAX_BATCH) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            match queue.extend_batch(&refs, visibility).await {
                Ok(refused) => {
                    held.extended(&refs, visibility);
                    for (_, why) in refused {
                        // Deleted since, or already visible again: nothing to keep.
                        tracing::debug!(reason = %why, "visibility not extended");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
