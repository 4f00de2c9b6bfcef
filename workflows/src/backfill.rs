//! Backfills (`cutover backfill`): a DAG's extract, transform and load over
//! a range of event time, cut into chunks that are each loaded as their own
//! run and recorded in the chunk ledger ([`crate::chunks`]).
//!
//! Workers, in this process (`--parallel`) and in others sharing the
//! warehouse, claim chunks without overlap; a rerun skips the chunks done;
//! a chunk whose worker died is claimed again once its claim expires. A
//! chunk's run reads only its window and never moves a watermark, so a
//! backfill can run beside the nightly runs; its loads merge like theirs,
//! so loading a chunk twice changes nothing. An optional rate limit, shared
//! by all the workers of the process, spares the live source database.

use std::io::IsTerminal;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tracing::Instrument;

use crate::chunks::{plan, Chunk, ChunkError, ChunkOutcome, ChunkState};
use crate::keep_alive::{KeepAlive, Renewal};
use crate::read::{RateLimit, ReadOptions, Window};
use crate::task::{TaskBuilder, TaskKinds};
use crate::time::format_ms;
use crate::{Chunks, Claim, Dag, RunOptions, RunState, Runner, Trigger};

/// What to backfill and how.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The first instant of event time (epoch ms).
    pub from_ms: i64,
    /// The first instant after the range.
    pub until_ms: i64,
    /// The length of a chunk.
    pub chunk: Duration,
    /// Chunks this process runs at once.
    pub parallel: NonZeroUsize,
    /// At most so many events read per second by this process.
    pub max_rate: Option<NonZeroU32>,
    /// How long a claim lasts unless renewed (renewed every third of it):
    /// how soon a dead worker's chunk is taken again.
    pub claim_ttl: Duration,
    /// This process's name in the claims.
    pub holder: String,
    /// How runs are started (work directory, parallelism).
    pub run: RunOptions,
}

impl Settings {
    /// The backfill's key in the chunk ledger: the DAG, the range and the
    /// chunk size. The same command finds the same chunks.
    pub fn key(&self, dag: &str) -> String {
        format!(
            "{dag} {}..{} by {}",
            format_ms(self.from_ms),
            format_ms(self.until_ms),
            crate::duration::format(self.chunk)
        )
    }
}

/// The most chunks one backfill may have: a plan beyond it is a chunk
/// size that makes no sense for the range.
pub const MAX_CHUNKS: i64 = 100_000;

/// The shortest claim: renewed every third of it, at least once a second.
pub const MIN_CLAIM_TTL: Duration = Duration::from_secs(3);

impl Settings {
    /// Checks the settings before anything runs.
    ///
    /// # Errors
    /// The range is empty, the chunk is shorter than a second or makes more
    /// than [`MAX_CHUNKS`] chunks, or the claim is shorter than
    /// [`MIN_CLAIM_TTL`].
    pub fn check(&self) -> Result<(), BackfillError> {
        if self.from_ms >= self.until_ms {
            return Err(BackfillError::EmptyRange);
        }
        if self.chunk < Duration::from_secs(1) {
            return Err(BackfillError::Settings(format!(
                "--chunk {} is shorter than a second",
                crate::duration::format(self.chunk)
            )));
        }
        let step = self.chunk.as_millis().min(i64::MAX as u128) as i64;
        let chunks = (self.until_ms - self.from_ms).div_euclid(step) + 1;
        if chunks > MAX_CHUNKS {
            return Err(BackfillError::Settings(format!(
                "--chunk {} cuts the range into {chunks} chunks, more than {MAX_CHUNKS}; use a longer --chunk",
                crate::duration::format(self.chunk)
            )));
        }
        if self.claim_ttl < MIN_CLAIM_TTL {
            return Err(BackfillError::Settings(format!(
                "--claim-ttl {} is shorter than {}: a claim renewed every third of it would expire while its worker is busy, and another worker would take its chunk",
                crate::duration::format(self.claim_ttl),
                crate::duration::format(MIN_CLAIM_TTL)
            )));
        }
        Ok(())
    }
}

/// The backfill could not run.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// A setting makes no sense.
    #[error("{0}")]
    Settings(String),
    /// The DAG has no extract: there is nothing to backfill.
    #[error("dag {0} reads no events: there is nothing to backfill")]
    NothingToRead(String),
    /// The range is empty.
    #[error("the range is empty: --from must be before --to")]
    EmptyRange,
    /// The chunk ledger failed.
    #[error(transparent)]
    Chunks(#[from] ChunkError),
}

/// What a backfill did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The backfill's key.
    pub key: String,
    /// Chunks in the range.
    pub chunks: usize,
    /// Chunks this process did.
    pub done_here: usize,
    /// Chunks done before this run, or by other workers.
    pub done_elsewhere: usize,
    /// Chunks whose run failed (tried again by the next run of the command).
    pub failed: Vec<Chunk>,
    /// Chunks not done when it stopped early (on a signal).
    pub left: usize,
    /// Events read by this process.
    pub events: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// The chunks of the backfill and their states, without running anything:
/// recorded chunks as recorded, the others as `pending`.
///
/// # Errors
/// The chunk ledger failed.
pub async fn dry_run<K>(
    dag: &Dag<K>,
    runner: &Runner,
    settings: &Settings,
) -> Result<Vec<Chunk>, BackfillError> {
    settings.check()?;
    let chunks = chunks_of(dag, runner, settings)?;
    let recorded = chunks.list().await?;
    Ok(plan(settings.from_ms, settings.until_ms, settings.chunk)
        .into_iter()
        .map(|w| {
            recorded
                .iter()
                .find(|c| c.from_ms == w.from_ms)
                .cloned()
                .unwrap_or(Chunk {
                    from_ms: w.from_ms,
                    until_ms: w.until_ms,
                    state: ChunkState::Pending,
                    holder: None,
                    attempts: 0,
                    run_id: None,
                    events: 0,
                    error: None,
                })
        })
        .collect())
}

fn chunks_of<K>(
    dag: &Dag<K>,
    runner: &Runner,
    settings: &Settings,
) -> Result<Chunks, BackfillError> {
    if settings.from_ms >= settings.until_ms {
        return Err(BackfillError::EmptyRange);
    }
    Ok(Chunks::new(
        runner.ledger().pool().clone(),
        runner.ledger().backend(),
        &settings.key(&dag.name),
        &dag.name,
        &settings.holder,
    ))
}

/// Runs the backfill until every chunk is done or failed, or `stop` turns
/// true (then the chunks under way finish and no more are claimed).
///
/// # Errors
/// The DAG reads no events, the range is empty, or the chunk ledger failed.
pub async fn run<K: TaskKinds + Clone>(
    dag: &Dag<K>,
    builder: Arc<dyn TaskBuilder<K>>,
    runner: Runner,
    settings: Settings,
    stop: watch::Receiver<bool>,
) -> Result<Report, BackfillError> {
    let started = Instant::now();
    settings.check()?;
    let chunks = chunks_of(dag, &runner, &settings)?;
    let dag = dag
        .without_verify()
        .ok_or_else(|| BackfillError::NothingToRead(dag.name.clone()))?;
    chunks
        .prepare(&plan(settings.from_ms, settings.until_ms, settings.chunk))
        .await?;
    let before = chunks.list().await?;
    let total = before.len();
    let done_before = before
        .iter()
        .filter(|c| c.state == ChunkState::Done)
        .count();
    tracing::info!(
        backfill = %chunks.backfill,
        chunks = total,
        done = done_before,
        parallel = settings.parallel.get(),
        "backfill started"
    );
    let progress = Progress::new(total as u64, done_before as u64);
    let shared = Arc::new(Shared {
        dag,
        builder,
        runner,
        chunks,
        read: ReadOptions {
            window: None,
            limit: settings.max_rate.map(|r| Arc::new(RateLimit::new(r))),
        },
        settings,
        progress,
        events: AtomicU64::new(0),
        done_here: AtomicU64::new(0),
    });
    let mut workers = tokio::task::JoinSet::new();
    for n in 0..shared.settings.parallel.get() {
        let span = tracing::info_span!("backfill", dag = %shared.dag.name, worker = n + 1);
        workers.spawn(worker(Arc::clone(&shared), stop.clone()).instrument(span));
    }
    let mut first_error = None;
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => tracing::error!(error = %e, "a backfill worker panicked"),
        }
    }
    shared.progress.bar.finish_and_clear();
    if let Some(e) = first_error {
        return Err(e);
    }
    let after = shared.chunks.list().await?;
    let done_here = shared.done_here.load(Ordering::Relaxed) as usize;
    let done = after.iter().filter(|c| c.state == ChunkState::Done).count();
    Ok(Report {
        key: shared.chunks.backfill.clone(),
        chunks: total,
        done_here,
        done_elsewhere: done.saturating_sub(done_here),
        left: after
            .iter()
            .filter(|c| matches!(c.state, ChunkState::Pending | ChunkState::Running))
            .count(),
        failed: after
            .into_iter()
            .filter(|c| c.state == ChunkState::Failed)
            .collect(),
        events: shared.events.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// What the workers of one process share.
struct Shared<K> {
    dag: Dag<K>,
    builder: Arc<dyn TaskBuilder<K>>,
    runner: Runner,
    chunks: Chunks,
    read: ReadOptions,
    settings: Settings,
    progress: Progress,
    events: AtomicU64,
    done_here: AtomicU64,
}

/// How often a worker that found no free chunk looks again while other
/// workers still hold some.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

async fn worker<K: TaskKinds>(
    shared: Arc<Shared<K>>,
    stop: watch::Receiver<bool>,
) -> Result<(), BackfillError> {
    let mut failures = 0;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match step(&shared).await {
            Ok(true) => failures = 0,
            Ok(false) => return Ok(()),
            // A busy or lost connection, a deadlock: the ledger is tried
            // again a few times before the worker gives up.
            Err(e) if crate::db::retryable(e.cause()) && failures < LEDGER_RETRIES => {
                failures += 1;
                tracing::warn!(error = %e, cause = %e.cause(), "the chunk ledger failed; trying again");
                tokio::time::sleep(LOOK_AGAIN * failures).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Consecutive transient failures of the chunk ledger a worker tolerates.
const LEDGER_RETRIES: u32 = 5;

/// Claims and runs one chunk, or waits for chunks other workers hold;
/// `false` when none is left to do.
async fn step<K: TaskKinds>(shared: &Shared<K>) -> Result<bool, ChunkError> {
    let Some(claim) = shared
        .chunks
        .claim(shared.settings.claim_ttl, Utc::now().timestamp_millis())
        .await?
    else {
        // Chunks held by other workers may yet come free (a dead worker's
        // claim expires); wait until none is left.
        if shared.chunks.unfinished().await? == 0 {
            return Ok(false);
        }
        tokio::time::sleep(LOOK_AGAIN).await;
        return Ok(true);
    };
    run_chunk(shared, &claim).await?;
    Ok(true)
}

async fn run_chunk<K: TaskKinds>(shared: &Shared<K>, claim: &Claim) -> Result<(), ChunkError> {
    let s = &shared.settings;
    let tick = chrono::DateTime::from_timestamp_millis(claim.from_ms);
    if claim.token > 1 {
        // Claimed before by a worker whose claim expired: a run of it the
        // ledger shows running was abandoned.
        let reason = "interrupted: the backfill worker running it stopped before the run ended; another worker took the chunk";
        if let Err(e) = shared
            .runner
            .ledger()
            .interrupt_abandoned(&shared.dag.name, Trigger::Backfill, tick, reason)
            .await
        {
            tracing::warn!(error = %e, "could not record abandoned runs");
        }
    }
    let window = format!(
        "{} to {}",
        format_ms(claim.from_ms),
        format_ms(claim.until_ms)
    );
    let renewer = {
        let (chunks, claim, ttl) = (shared.chunks.clone(), claim.clone(), s.claim_ttl);
        KeepAlive::start(ttl, move || {
            let (chunks, claim) = (chunks.clone(), claim.clone());
            async move {
                match chunks
                    .renew(&claim, ttl, Utc::now().timestamp_millis())
                    .await
                {
                    Ok(true) => Renewal::Kept,
                    Ok(false) => {
                        tracing::warn!(from = %format_ms(claim.from_ms), "lost the claim on a chunk");
                        Renewal::Lost
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not renew a chunk's claim");
                        Renewal::Kept
                    }
                }
            }
        })
    };
    let opts = RunOptions {
        trigger: Trigger::Backfill,
        scheduled_at: tick,
        ..s.run.clone()
    };
    let read = ReadOptions {
        window: Some(Window {
            from_ms: claim.from_ms,
            until_ms: claim.until_ms,
        }),
        ..shared.read.clone()
    };
    let tasks = shared.builder.build(&shared.dag, &read);
    let result = shared.runner.run(&shared.dag, tasks, &opts).await;
    renewer.stop().await;
    let (run_id, outcome) = match &result {
        Ok(summary) if summary.state == RunState::Succeeded => (
            summary.run_id.clone(),
            ChunkOutcome::Done {
                events: summary.totals.read as i64,
            },
        ),
        Ok(summary) => (
            summary.run_id.clone(),
            ChunkOutcome::Failed {
                error: summary
                    .first_error()
                    .unwrap_or_else(|| "the run failed".into()),
            },
        ),
        Err(e) => (
            String::new(),
            ChunkOutcome::Failed {
                error: e.to_string(),
            },
        ),
    };
    let recorded = shared.chunks.finish(claim, &run_id, &outcome).await?;
    if !recorded {
        tracing::warn!(chunk = %window, run_id = %run_id, "the claim on this chunk expired and another worker took it; it is theirs to record");
        return Ok(());
    }
    match outcome {
        ChunkOutcome::Done { events } => {
            shared.done_here.fetch_add(1, Ordering::Relaxed);
            let events = events as u64;
            let total = shared.events.fetch_add(events, Ordering::Relaxed) + events;
            shared.progress.chunk_done(&window, &run_id, events, total);
        }
        ChunkOutcome::Failed { error } => {
            tracing::error!(chunk = %window, run_id = %run_id, error = %error, "chunk failed; the next run of the backfill tries it again");
            shared.progress.chunk_failed();
        }
    }
    Ok(())
}

/// Progress: a bar with rate and ETA on a terminal, a log line per chunk
/// otherwise.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    on_terminal: bool,
}

impl Progress {
    fn new(total: u64, done: u64) -> Self {
        let on_terminal = std::io::stderr().is_terminal();
        let target = if on_terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} chunks  {msg}  {elapsed} elapsed, eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(done);
        bar.reset_eta();
        Self {
            bar,
            started: Instant::now(),
            on_terminal,
        }
    }

    fn rate(&self, events: u64) -> f64 {
        events as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    fn chunk_done(&self, window: &str, run_id: &str, events: u64, total_events: u64) {
        self.bar.inc(1);
        let rate = self.rate(total_events);
        self.bar
            .set_message(format!("{total_events} events, {rate:.0} events/s"));
        if !self.on_terminal {
            let eta = self.bar.eta();
            tracing::info!(
                chunk = %window,
                run_id = %run_id,
                events,
                done = self.bar.position(),
                of = self.bar.length().unwrap_or_default(),
                events_per_s = rate.round() as u64,
                eta_s = eta.as_secs(),
                "chunk done"
            );
        }
    }

    fn chunk_failed(&self) {
        self.bar.inc(1);
    }
}
