//! A consumer's progress in the ledger (`cutover_consumers`): messages,
//! events, poison, deletions, batches, errors and lag, updated after every
//! micro-batch, so that `cutover status` shows every consumer that shares
//! the warehouse.

use serde::Serialize;
use sqlx::Row;
use workflows::sql::{text, write_row, Bound};
use workflows::time::timestamp;

use crate::warehouse::Warehouse;

use super::Flushed;

/// What a consumer has done since it started.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Messages received (every delivery counts).
    pub messages: u64,
    /// Of those, deliveries after the first of one message: redeliveries
    /// after a failure or a crash, and the duplicates SQS may deliver.
    pub redelivered: u64,
    /// Of those, bodies that are events.
    pub events: u64,
    /// Of those, bodies quarantined as poison.
    pub poison: u64,
    /// Messages deleted after their batch committed (or, of a type no DAG
    /// takes, at once).
    pub deleted: u64,
    /// Messages left on the queue for consumers that run the DAGs taking
    /// them.
    pub left_for_others: u64,
    /// Messages of a type no DAG takes (deleted, as nightly runs ignore them).
    pub ignored: u64,
    /// Events quarantined because they alone made a DAG's run fail.
    pub isolated: u64,
    /// Micro-batches flushed.
    pub batches: u64,
    /// Micro-batches in which some DAG did not commit.
    pub failed_batches: u64,
    /// Errors seen (failed runs, deletes, receives).
    pub errors: u64,
}

/// One consumer's row.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    /// A new id per process.
    pub consumer_id: String,
    /// The queue consumed.
    pub queue_url: String,
    /// The machine.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// When it started.
    pub started_at: String,
    /// When the row was last written.
    pub updated_at: String,
    /// Whether it runs.
    pub state: ConsumerState,
    /// Its counters.
    #[serde(flatten)]
    pub totals: Totals,
    /// The age of the oldest message of the last batch, in milliseconds.
    pub lag_ms: Option<i64>,
    /// The last error, if any.
    pub last_error: Option<String>,
}

workflows::stored_enum! {
    /// Whether a consumer runs, as `cutover_consumers.state` stores it.
    pub enum ConsumerState as "consumer state" {
        /// Consuming (or died without saying so: see `updated_at`).
        Running = "running",
        /// Stopped.
        Stopped = "stopped",
    }
}

impl ConsumerStatus {
    /// A new consumer of `queue_url`.
    pub fn new(queue_url: &str) -> Self {
        let now = timestamp(chrono::Utc::now());
        Self {
            consumer_id: uuid::Uuid::now_v7().to_string(),
            queue_url: queue_url.to_owned(),
            host: hostname(),
            pid: std::process::id(),
            started_at: now.clone(),
            updated_at: now,
            state: ConsumerState::Running,
            totals: Totals::default(),
            lag_ms: None,
            last_error: None,
        }
    }

    /// Counts an error and keeps it as the last one.
    pub fn error(&mut self, message: String) {
        let message = workflows::redact::redact(&message).into_owned();
        tracing::warn!(error = %message, "consumer error");
        self.totals.errors += 1;
        self.last_error = Some(message);
    }

    pub(super) fn record(&mut self, f: &Flushed, lag_ms: Option<i64>) {
        let t = &mut self.totals;
        t.messages += f.messages;
        t.redelivered += f.redelivered;
        t.events += f.events;
        t.poison += f.poison;
        t.deleted += f.deleted;
        t.left_for_others += f.left;
        t.ignored += f.ignored;
        t.isolated += f.isolated;
        t.batches += 1;
        t.failed_batches += u64::from(!f.failed.is_empty());
        if lag_ms.is_some() {
            self.lag_ms = lag_ms;
        }
    }

    /// Writes the row as `running`.
    pub async fn start(&mut self, wh: &Warehouse) {
        self.state = ConsumerState::Running;
        self.save(wh).await;
    }

    /// Writes the row as `stopped`.
    pub async fn finish(&mut self, wh: &Warehouse) {
        self.state = ConsumerState::Stopped;
        self.save(wh).await;
    }

    /// Writes the row; a warehouse that is away is logged, not fatal (the
    /// next batch writes it again).
    pub async fn save(&mut self, wh: &Warehouse) {
        self.updated_at = timestamp(chrono::Utc::now());
        if let Err(e) = self.upsert(wh).await {
            tracing::warn!(error = %e, "could not record the consumer's progress");
        }
    }

    async fn upsert(&self, wh: &Warehouse) -> Result<(), sqlx::Error> {
        let t = &self.totals;
        let n = |v: u64| Bound::from(v as i64);
        write_row(
            &wh.pool,
            wh.backend,
            "cutover_consumers",
            &[("consumer_id", self.consumer_id.as_str().into())],
            &[
                ("queue_url", self.queue_url.as_str().into()),
                ("host", self.host.as_str().into()),
                ("pid", i64::from(self.pid).into()),
                ("started_at", self.started_at.as_str().into()),
                ("updated_at", self.updated_at.as_str().into()),
                ("state", self.state.as_str().into()),
                ("messages", n(t.messages)),
                ("redelivered", n(t.redelivered)),
                ("events", n(t.events)),
                ("poison", n(t.poison)),
                ("deleted", n(t.deleted)),
                ("left_for_others", n(t.left_for_others)),
                ("ignored", n(t.ignored)),
                ("isolated", n(t.isolated)),
                ("batches", n(t.batches)),
                ("failed_batches", n(t.failed_batches)),
                ("errors", n(t.errors)),
                ("lag_ms", self.lag_ms.into()),
                ("last_error", self.last_error.clone().into()),
            ],
        )
        .await
    }

    /// Every consumer recorded in the warehouse, the most recently updated
    /// first.
    ///
    /// # Errors
    /// The read failed.
    pub async fn all(wh: &Warehouse) -> Result<Vec<Self>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT consumer_id, queue_url, host, pid, started_at, updated_at, state, messages, redelivered, events, poison, deleted, left_for_others, ignored, isolated, batches, failed_batches, errors, lag_ms, last_error FROM cutover_consumers ORDER BY updated_at DESC",
        )
        .fetch_all(&wh.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let n = |c: &str| r.try_get::<i64, _>(c).map(|v| v.max(0) as u64);
                Ok(Self {
                    consumer_id: r.try_get("consumer_id")?,
                    queue_url: text(r, "queue_url")?.unwrap_or_default(),
                    host: r.try_get("host")?,
                    pid: r.try_get::<i64, _>("pid")? as u32,
                    started_at: r.try_get("started_at")?,
                    updated_at: r.try_get("updated_at")?,
                    state: workflows::state::read(r, "state")?,
                    totals: Totals {
                        messages: n("messages")?,
                        redelivered: n("redelivered")?,
                        events: n("events")?,
                        poison: n("poison")?,
                        deleted: n("deleted")?,
                        left_for_others: n("left_for_others")?,
                        ignored: n("ignored")?,
                        isolated: n("isolated")?,
                        batches: n("batches")?,
                        failed_batches: n("failed_batches")?,
                        errors: n("errors")?,
                    },
                    lag_ms: r.try_get("lag_ms")?,
                    last_error: text(r, "last_error")?,
                })
            })
            .collect()
    }
}

/// This machine's name, for telling processes apart in the ledger.
pub fn hostname() -> String {
    workflows::ledger::hostname()
}
