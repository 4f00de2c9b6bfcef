//! The scheduler daemon (`cutover schedule`): runs every scheduled DAG on its
//! cron schedule, in its time zone, once per tick however many daemons share
//! the warehouse.
//!
//! tokio-cron-scheduler drives a one-second tick in UTC. Fire times are not
//! left to it: its time-zone jobs keep the offset they were created with
//! after a daylight-saving change (its issues #87 and #107), so each DAG's
//! next fire time comes from [`crate::schedule::Schedule::next_after`].
//! At a due tick the daemon claims the DAG's lease for that tick
//! ([`Leases::claim_tick`]); only the claimant runs it, renewing the lease
//! while it runs, and every load commit checks the lease, so a daemon that
//! lost its lease cannot commit. A DAG still running (here or in another
//! daemon) is never overlapped: its next tick is skipped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::keep_alive::{KeepAlive, Renewal};
use crate::read::ReadOptions;
use crate::runner::RunError;
use crate::task::{TaskBuilder, TaskKinds};
use crate::{Dag, LeaseError, Leases, RunOptions, RunState, Runner, Trigger};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This daemon's name in the leases (unique per process).
    pub holder: String,
    /// How long a lease lasts unless renewed; renewed every third of it.
    pub lease_ttl: Duration,
    /// How long running DAGs may take to finish after a stop signal.
    pub grace: Duration,
    /// How runs are started (work directory, parallelism).
    pub run: RunOptions,
}

/// The daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// tokio-cron-scheduler refused.
    #[error("the scheduler: {0}")]
    Scheduler(#[from] tokio_cron_scheduler::JobSchedulerError),
    /// No DAG has a schedule.
    #[error("no DAG has a [schedule]; nothing to run")]
    NothingScheduled,
}

/// What the daemon did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ran {
    /// Runs started by this daemon.
    pub runs: u64,
    /// Of those, runs that failed.
    pub failed: u64,
    /// Ticks another daemon claimed, or skipped as the DAG was running.
    pub not_ours: u64,
    /// Runs stopped at the end of the grace period.
    pub interrupted: u64,
}

/// Runs the scheduled DAGs until `stop` turns true; then starts nothing
/// more, lets running DAGs finish for the grace period, and interrupts the
/// rest (recorded as `interrupted`; the next run goes on from the
/// watermarks). At start, each DAG's ticks missed since the last tick any
/// daemon claimed are run first, by the DAG's catch-up policy.
///
/// # Errors
/// The scheduler could not start, or no DAG is scheduled.
pub async fn run<K: TaskKinds + Clone>(
    dags: &[Dag<K>],
    builder: Arc<dyn TaskBuilder<K>>,
    runner: Runner,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) -> Result<Ran, DaemonError> {
    let leases = Leases::new(runner.ledger().pool().clone(), runner.ledger().backend());
    let scheduled: Vec<&Dag<K>> = dags.iter().filter(|d| d.schedule.is_some()).collect();
    if scheduled.is_empty() {
        return Err(DaemonError::NothingScheduled);
    }
    let (tick_tx, mut ticks) = mpsc::channel::<()>(1);
    let mut cron = JobScheduler::new().await?;
    cron.add(Job::new_async("* * * * * *", move |_, _| {
        let tick_tx = tick_tx.clone();
        Box::pin(async move {
            let _ = tick_tx.try_send(());
        })
    })?)
    .await?;
    cron.start().await?;

    let now = Utc::now();
    let mut next: HashMap<String, DateTime<Utc>> = HashMap::new();
    // Missed ticks to run first, oldest first, by each DAG's catch-up policy.
    let mut catch_up: HashMap<String, VecDeque<DateTime<Utc>>> = HashMap::new();
    for dag in &scheduled {
        let schedule = dag.schedule.as_ref().expect("scheduled");
        if let Some(at) = schedule.next_after(now) {
            tracing::info!(dag = %dag.name, next_run = %at, catch_up = schedule.catch_up.name(), "scheduled");
            next.insert(dag.name.clone(), at);
        }
        let last = match leases.last_tick(&dag.name).await {
            Ok(last) => last.and_then(DateTime::from_timestamp_millis),
            Err(e) => {
                tracing::warn!(dag = %dag.name, error = %e, "could not read the last tick; no catch-up");
                None
            }
        };
        let missed = last.map(|l| schedule.missed(l, now)).unwrap_or_default();
        if !missed.is_empty() {
            tracing::info!(
                dag = %dag.name,
                policy = schedule.catch_up.name(),
                runs = missed.len(),
                from = %missed[0],
                "catching up ticks missed while no scheduler ran"
            );
            catch_up.insert(dag.name.clone(), missed.into());
        }
    }
    let (interrupt_tx, interrupt) = watch::channel(false);
    let settings = Settings {
        run: RunOptions {
            interrupt: Some(interrupt),
            ..settings.run
        },
        ..settings
    };
    let mut running: tokio::task::JoinSet<Ended> = tokio::task::JoinSet::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut ran = Ran::default();
    loop {
        tokio::select! {
            _ = ticks.recv() => {
                let now = Utc::now();
                for dag in &scheduled {
                    let mut start = None;
                    if !busy.contains(&dag.name) {
                        start = catch_up
                            .get_mut(&dag.name)
                            .and_then(VecDeque::pop_front)
                            .map(|tick| (tick, true));
                    }
                    if let Some(due) = next.get(&dag.name).copied().filter(|t| *t <= now) {
                        let schedule = dag.schedule.as_ref().expect("scheduled");
                        // Ticks missed while this one was due are not run twice.
                        let mut after = due;
                        while let Some(n) = schedule.next_after(after).filter(|n| *n <= now) {
                            after = n;
                        }
                        if let Some(n) = schedule.next_after(after) {
                            next.insert(dag.name.clone(), n);
                        }
                        if busy.contains(&dag.name) {
                            tracing::warn!(dag = %dag.name, tick = %due, "still running: tick skipped");
                            ran.not_ours += 1;
                        } else if start.is_some() {
                            tracing::warn!(dag = %dag.name, tick = %due, "catching up: tick skipped");
                            ran.not_ours += 1;
                        } else {
                            start = Some((due, false));
                        }
                    }
                    let Some((tick, catching_up)) = start else { continue };
                    busy.insert(dag.name.clone());
                    running.spawn(run_tick(
                        (*dag).clone(),
                        tick,
                        catching_up,
                        Arc::clone(&builder),
                        runner.clone(),
                        leases.clone(),
                        settings.clone(),
                    ));
                }
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(ended) = done {
                    busy.remove(&ended.dag);
                    if ended.outcome == Outcome::LeaseHeld && ended.catching_up {
                        // Another daemon runs the DAG: this missed tick
                        // waits its turn (ticks are claimed in order).
                        catch_up.entry(ended.dag.clone()).or_default().push_front(ended.tick);
                    } else {
                        ran.count(ended.outcome);
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    cron.shutdown().await?;
    if !running.is_empty() {
        tracing::info!(
            running = running.len(),
            grace_s = settings.grace.as_secs(),
            "stopping: letting running DAGs finish"
        );
    }
    let deadline = tokio::time::sleep(settings.grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            done = running.join_next() => match done {
                Some(Ok(ended)) => ran.count(ended.outcome),
                Some(Err(_)) => {}
                None => break,
            },
            _ = &mut deadline => {
                tracing::warn!(runs = running.len(), "grace period over: interrupting the runs still going; the next run recovers");
                let _ = interrupt_tx.send(true);
                // The runs record themselves as interrupted; give them a
                // moment to do so before leaving.
                let recorded = tokio::time::timeout(RECORD_INTERRUPTED, async {
                    while let Some(done) = running.join_next().await {
                        if let Ok(ended) = done {
                            ran.count(ended.outcome);
                        }
                    }
                });
                if recorded.await.is_err() {
                    // Not even recorded: they stay `running` until the next
                    // daemon to claim their DAG records them.
                    ran.interrupted += running.len() as u64;
                    running.shutdown().await;
                }
                break;
            }
        }
    }
    Ok(ran)
}

/// How long interrupted runs get to record themselves.
const RECORD_INTERRUPTED: Duration = Duration::from_secs(10);

/// How one tick ended for this daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    Interrupted,
    /// Another daemon claimed the tick (or a later one).
    NotOurs,
    /// The tick is still unclaimed, but another daemon runs the DAG.
    LeaseHeld,
}

/// A tick this daemon handled.
struct Ended {
    dag: String,
    tick: DateTime<Utc>,
    catching_up: bool,
    outcome: Outcome,
}

impl Ran {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Succeeded => self.runs += 1,
            Outcome::Failed => {
                self.runs += 1;
                self.failed += 1;
            }
            Outcome::Interrupted => self.interrupted += 1,
            Outcome::NotOurs | Outcome::LeaseHeld => self.not_ours += 1,
        }
    }
}

/// Claims the tick's lease and, if this daemon got it, runs the DAG under
/// it, renewing it until the run ends.
async fn run_tick<K: TaskKinds>(
    dag: Dag<K>,
    tick: DateTime<Utc>,
    catching_up: bool,
    builder: Arc<dyn TaskBuilder<K>>,
    runner: Runner,
    leases: Leases,
    settings: Settings,
) -> Ended {
    let name = dag.name.clone();
    let ended = |outcome| Ended {
        dag: dag.name.clone(),
        tick,
        catching_up,
        outcome,
    };
    let now_ms = Utc::now().timestamp_millis();
    let claimed = leases
        .claim_tick(
            &name,
            &settings.holder,
            tick.timestamp_millis(),
            settings.lease_ttl,
            now_ms,
        )
        .await;
    let lease = match claimed {
        Ok(Some(lease)) => lease,
        Ok(None) => {
            tracing::debug!(dag = %name, tick = %tick, "tick claimed elsewhere, or the DAG is running");
            // Only a missed tick waits for its turn; a regular one is simply
            // skipped, so only then is it worth asking whether it is claimed.
            let unclaimed = catching_up
                && matches!(
                    leases.last_tick(&name).await,
                    Ok(last) if last.is_none_or(|l| l < tick.timestamp_millis())
                );
            return ended(if unclaimed {
                Outcome::LeaseHeld
            } else {
                Outcome::NotOurs
            });
        }
        Err(e) => {
            tracing::warn!(dag = %name, tick = %tick, error = %e, "could not claim the tick");
            return ended(Outcome::NotOurs);
        }
    };
    // A scheduled run holds the DAG's lease, and this daemon holds it now:
    // a scheduled run the ledger still shows as running was abandoned by a
    // daemon that died (or lost its lease and can no longer commit).
    let reason = "interrupted: the scheduler running it stopped or lost its lease before the run ended; later runs went on from the watermarks";
    if let Err(e) = runner
        .ledger()
        .interrupt_abandoned(&name, Trigger::Schedule, None, reason)
        .await
    {
        tracing::warn!(dag = %name, error = %e, "could not record abandoned runs");
    }
    let renewer = {
        let (leases, lease, ttl) = (leases.clone(), lease.clone(), settings.lease_ttl);
        KeepAlive::start(ttl, move || {
            let (leases, lease) = (leases.clone(), lease.clone());
            async move {
                match leases
                    .renew(&lease, ttl, Utc::now().timestamp_millis())
                    .await
                {
                    Ok(_) => Renewal::Kept,
                    // A lost lease makes the run's next commit fail.
                    Err(e @ LeaseError::Lost { .. }) => {
                        tracing::warn!(dag = %lease.dag, error = %e, "lost the lease");
                        Renewal::Lost
                    }
                    // A database error is tried again at the next renewal.
                    Err(e) => {
                        tracing::warn!(dag = %lease.dag, error = %e, "could not renew the lease");
                        Renewal::Kept
                    }
                }
            }
        })
    };
    let opts = RunOptions {
        trigger: Trigger::Schedule,
        scheduled_at: Some(tick),
        lease: Some(lease.clone()),
        ..settings.run.clone()
    };
    let tasks = builder.build(&dag, &ReadOptions::default());
    let result = runner.run(&dag, tasks, &opts).await;
    renewer.stop().await;
    if let Err(e) = leases.release(&lease).await {
        tracing::warn!(dag = %name, error = %e, "could not release the lease; it expires");
    }
    let outcome = match result {
        Ok(s) if s.state == RunState::Succeeded => Outcome::Succeeded,
        Ok(s) => {
            tracing::warn!(dag = %name, run_id = %s.run_id, "scheduled run failed");
            Outcome::Failed
        }
        Err(RunError::Interrupted(_)) => Outcome::Interrupted,
        Err(e) => {
            tracing::warn!(dag = %name, error = %e, "scheduled run could not start");
            Outcome::Failed
        }
    };
    ended(outcome)
}
