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
//! verify tasks, one after another in `after` order, recorded in the ledger
//! as runs of trigger `sqs` (each run's task records written with its end,
//! in one transaction). A message is deleted only when every DAG that takes
//! it has committed; until then a heartbeat keeps it invisible. A message whose
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

mod feed;
pub mod queue;
mod receive;
pub mod status;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{Bson, Document};
use tokio::sync::{mpsc, watch};
use workflows::{Dag, RunOptions, Runner, Trigger};

use crate::kinds::TaskKind;
use crate::quarantine::{self, Raw, Rejected};
use crate::source::{file_match, parse_line, Query};
use crate::warehouse::Warehouse;

pub use queue::{Queue, QueueError, Received};
pub use status::{ConsumerState, ConsumerStatus, Totals};

use feed::{FeedResult, FeedRun};
use receive::{delete_chunk, heartbeat_loop, receive_loop, Activity, Held};
use receive::{DELETE_REQUESTS, IDLE_LOOK_EVERY, MAX_RECEIVED};

/// Tries of a micro-batch whose runs fail for a reason that may pass, before
/// its messages are released to the queue.
const MAX_TRIES: u32 = 5;
/// How long a message left for other consumers is remembered.
const LEFT_MEMORY: Duration = Duration::from_secs(300);

/// The `task` under which the feed quarantines (poison, and the events
/// that alone break a run).
pub const FEED_TASK: &str = "consume";

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

/// The queries of a DAG's extracts, without a time range.
fn queries(dag: &Dag<TaskKind>) -> Vec<Query> {
    dag.tasks
        .iter()
        .filter_map(|t| t.kind.extract().map(|c| c.query(None, None)))
        .collect()
}

/// A message's body read as an event, or why it is not one.
fn parse_event(body: &str, type_fields: &BTreeSet<String>) -> Result<Document, String> {
    let doc = parse_line(body.trim()).map_err(|e| e.to_string())?;
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
        let dags: Vec<Dag<TaskKind>> = dags.iter().filter_map(Dag::without_verify).collect();
        if dags.is_empty() {
            return Err(ConsumeError::NoDags);
        }
        if settings.visibility.is_none() {
            settings.visibility = Some(queue.visibility_timeout().await?);
        } else {
            queue.visibility_timeout().await?;
        }
        settings.run.trigger = Trigger::Feed;
        // A micro-batch's run is short: its task records are written with
        // its end, in one transaction, not as each task starts and ends.
        settings.run.tasks_at_end = true;
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
                            Ok(d) if d.visible + d.in_flight <= theirs => {
                                idle_stop.store(true, Ordering::SeqCst);
                                tracing::info!(left_for_others = theirs, "the queue has held nothing for this consumer for the idle time; stopping");
                            }
                            Ok(d) => tracing::debug!(visible = d.visible, in_flight = d.in_flight, "not idle: the queue still holds messages"),
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
            match quarantine::write(&self.warehouse, POISON_DAG, FEED_TASK, self.id(), &rejected)
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

        // Run the DAGs that take something, one after another in `after`
        // order; a DAG whose run fails on its data is run again on halves
        // until the events that break it are found. One at a time: DAGs
        // that load the same dimension (every fact DAG's `dim_date`) side by
        // side deadlock on MariaDB, and the loser's task waits a back-off
        // before its retry, longer than the DAGs take one after another.
        let mut succeeded: HashSet<usize> = HashSet::new();
        for d in Dag::levels(&self.dags).into_iter().flatten() {
            let docs = std::mem::take(&mut routed[d]);
            if docs.is_empty() {
                succeeded.insert(d);
                continue;
            }
            let name = self.dags[d].name.clone();
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
            // On a task of its own, so that a panic fails this DAG's part
            // of the batch, not the consumer.
            let outcome =
                match tokio::spawn(async move { feed.run_isolating(docs, ids).await }).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        self.status.error(format!("dag {name}: {e}"));
                        out.failed.push(name);
                        continue;
                    }
                };
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

#[cfg(test)]
mod tests;
