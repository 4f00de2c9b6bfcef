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
//! committed; until then a heartbeat keeps it invisible. The loads' merges
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

use crate::extract::mongo::{quarantine, short_hash, Rejected};
use crate::kinds::{build_tasks, without_verify, Env, TaskKind};
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
    /// The fields that name an event's type in any of those queries.
    type_fields: BTreeSet<String>,
}

/// What one micro-batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
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
    /// DAGs whose run did not succeed; their messages come back.
    pub failed: Vec<String>,
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

/// When a receive last brought messages (and handed them all over), and
/// whether a receive has come back empty since.
#[derive(Debug, Clone)]
struct Activity(Arc<Mutex<(Instant, bool)>>);

impl Default for Activity {
    fn default() -> Self {
        Self(Arc::new(Mutex::new((Instant::now(), false))))
    }
}

impl Activity {
    fn received(&self, any: bool) {
        let mut a = self.0.lock().expect("activity");
        if any {
            *a = (Instant::now(), false);
        } else {
            a.1 = true;
        }
    }
    /// Whether a receive came back empty and nothing has arrived for `idle`.
    fn idle_for(&self, idle: Duration) -> bool {
        let a = self.0.lock().expect("activity");
        a.1 && a.0.elapsed() >= idle
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
    pub async fn new(
        queue: Queue,
        dags: &[Dag<TaskKind>],
        warehouse: Warehouse,
        runner: Runner,
        mut settings: Settings,
    ) -> Result<Self, ConsumeError> {
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
            type_fields,
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
                activity.clone(),
            ));
        }
        drop(tx);
        let heartbeat = tokio::spawn(heartbeat_loop(self.queue.clone(), held.clone(), visibility));

        let mut pending: Vec<(Instant, Received)> = Vec::new();
        let mut backoff = Duration::ZERO;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut stopping = *stop.borrow();
        let mut last_look = Instant::now();
        loop {
            let due = pending
                .first()
                .map(|(at, _)| *at + self.settings.batch_age)
                .filter(|_| backoff.is_zero());
            let full = pending.len() >= self.settings.batch_messages.get();
            if !pending.is_empty() && (full || due.is_some_and(|d| d <= Instant::now())) {
                let batch: Vec<Received> = pending.drain(..).map(|(_, m)| m).collect();
                let flushed = self.flush(batch, &held).await;
                backoff = if flushed.failed.is_empty() {
                    Duration::ZERO
                } else {
                    (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
                };
                if !backoff.is_zero() {
                    tracing::warn!(
                        failed = ?flushed.failed,
                        retry_in_ms = backoff.as_millis() as u64,
                        "a micro-batch did not commit; its messages come back after the visibility timeout"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed(), if !stopping => stopping = true,
                    }
                }
                continue;
            }
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => pending.push((Instant::now(), m)),
                    None => break,
                },
                _ = tick.tick() => {
                    // Idle: no receive has brought anything for that long,
                    // nothing received waits to be loaded, and the queue
                    // holds nothing, visible or in flight. One receiver's
                    // empty answer alone is no proof: another may be
                    // handing over messages, or a stopped consumer's
                    // may not be visible again yet.
                    let quiet = self.settings.until_idle.is_some_and(|i| activity.idle_for(i))
                        && pending.is_empty()
                        && rx.is_empty()
                        && !idle_stop.load(Ordering::SeqCst)
                        && last_look.elapsed() >= IDLE_LOOK_EVERY;
                    if quiet {
                        last_look = Instant::now();
                        match self.queue.depth().await {
                            Ok((0, 0)) => {
                                idle_stop.store(true, Ordering::SeqCst);
                                tracing::info!("the queue has been empty for the idle time; stopping");
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
        if !pending.is_empty() {
            let batch: Vec<Received> = pending.drain(..).map(|(_, m)| m).collect();
            self.flush(batch, &held).await;
        }
        heartbeat.abort();
        self.status.finish(&self.warehouse).await;
        self.status.totals.clone()
    }

    /// Loads one micro-batch and deletes what it committed.
    async fn flush(&mut self, batch: Vec<Received>, held: &Held) -> Flushed {
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
        let mut routed: Vec<Vec<Document>> = vec![Vec::new(); self.dags.len()];
        let mut takers: Vec<Vec<usize>> = vec![Vec::new(); batch.len()];
        for (i, m) in batch.iter().enumerate() {
            match parse_event(&m.body, &self.type_fields) {
                Ok(doc) => {
                    out.events += 1;
                    for (d, qs) in self.routes.iter().enumerate() {
                        if qs.iter().any(|q| file_match(&doc, q)) {
                            routed[d].push(doc.clone());
                            takers[i].push(d);
                        }
                    }
                }
                Err(reason) => poison.push((
                    i,
                    Rejected {
                        doc_id: short_hash(&m.body),
                        event_id: None,
                        event_type: None,
                        reason,
                        raw: m.body.clone(),
                    },
                )),
            }
        }

        // Quarantine poison; if that fails, it stays on the queue.
        let rejected: Vec<Rejected> = poison.iter().map(|(_, r)| r.clone()).collect();
        let poison_ok =
            match quarantine(&self.warehouse, POISON_DAG, "consume", self.id(), &rejected).await {
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

        // Run the DAGs that take something, level by level.
        let mut succeeded: HashSet<usize> = HashSet::new();
        for level in levels(&self.dags) {
            let mut runs = tokio::task::JoinSet::new();
            for d in level {
                let docs = std::mem::take(&mut routed[d]);
                if docs.is_empty() {
                    succeeded.insert(d);
                    continue;
                }
                let dag = self.dags[d].clone();
                let env = Env {
                    source: Source::Feed(Arc::new(docs)),
                    warehouse: self.warehouse.clone(),
                };
                let runner = self.runner.clone();
                let opts = self.settings.run.clone();
                runs.spawn(async move {
                    let tasks = build_tasks(&dag, &env);
                    (d, runner.run(&dag, tasks, &opts).await)
                });
            }
            while let Some(joined) = runs.join_next().await {
                let Ok((d, result)) = joined else { continue };
                let name = &self.dags[d].name;
                match result {
                    Ok(summary) if matches!(summary.state, RunState::Succeeded) => {
                        succeeded.insert(d);
                    }
                    Ok(summary) => {
                        let why = summary
                            .tasks
                            .iter()
                            .find_map(|(t, s)| match s {
                                workflows::TaskState::Failed { error, .. } => {
                                    Some(format!("task {t}: {error}"))
                                }
                                _ => None,
                            })
                            .unwrap_or_else(|| summary.state.name().to_owned());
                        self.status
                            .error(format!("run {} of dag {name}: {why}", summary.run_id));
                        out.failed.push(name.clone());
                    }
                    Err(e) => {
                        self.status.error(format!("dag {name}: {e}"));
                        out.failed.push(name.clone());
                    }
                }
            }
        }

        // Delete what is done; release the rest to come back.
        let poison_at: HashSet<usize> = poison.iter().map(|(i, _)| *i).collect();
        let (done, undone): (Vec<usize>, Vec<usize>) = (0..batch.len()).partition(|i| {
            if poison_at.contains(i) {
                poison_ok
            } else {
                takers[*i].iter().all(|d| succeeded.contains(d))
            }
        });
        held.remove(undone.iter().map(|i| batch[*i].receipt.as_str()));
        let receipts: Vec<&str> = done.iter().map(|i| batch[*i].receipt.as_str()).collect();
        let deleting = Instant::now();
        out.deleted = self.delete(&receipts).await;
        let delete_ms = deleting.elapsed().as_millis() as u64;
        held.remove(receipts.iter().copied());

        self.status.record(&out, lag);
        self.status.save(&self.warehouse).await;
        tracing::info!(
            messages = out.messages,
            redelivered = out.redelivered,
            events = out.events,
            poison = out.poison,
            deleted = out.deleted,
            failed = out.failed.len(),
            lag_ms = lag.unwrap_or_default(),
            took_ms = started.elapsed().as_millis() as u64,
            delete_ms,
            "micro-batch"
        );
        out
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
    activity: Activity,
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
                let any = !messages.is_empty();
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
                activity.received(any);
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
