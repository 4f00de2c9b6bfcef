//! The scheduler daemon (`cutover schedule`): runs every scheduled DAG on its
//! cron schedule, in its time zone, once per tick however many daemons share
//! the warehouse.
//!
//! tokio-cron-scheduler drives a one-second tick in UTC. Fire times are not
//! left to it: its time-zone jobs keep the offset they were created with
//! after a daylight-saving change (its issues #87 and #107), so each DAG's
//! next fire time comes from [`workflows::schedule::Schedule::next_after`].
//! At a due tick the daemon claims the DAG's lease for that tick
//! ([`Leases::claim_tick`]); only the claimant runs it, renewing the lease
//! while it runs, and every load commit checks the lease, so a daemon that
//! lost its lease cannot commit. A DAG still running (here or in another
//! daemon) is never overlapped: its next tick is skipped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio_cron_scheduler::{Job, JobScheduler};
use workflows::{Dag, Lease, Leases, RunOptions, RunState, Runner};

use crate::kinds::{build_tasks, Env, TaskKind};

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
/// rest (their runs stay `running` in the ledger; the next run recovers).
///
/// # Errors
/// The scheduler could not start, or no DAG is scheduled.
pub async fn run(
    dags: &[Dag<TaskKind>],
    env: Env,
    runner: Runner,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) -> Result<Ran, DaemonError> {
    let leases = Leases::new(env.warehouse.pool.clone(), env.warehouse.backend);
    let scheduled: Vec<&Dag<TaskKind>> = dags.iter().filter(|d| d.schedule.is_some()).collect();
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
    let mut next: HashMap<String, DateTime<Utc>> = scheduled
        .iter()
        .filter_map(|d| Some((d.name.clone(), d.schedule.as_ref()?.next_after(now)?)))
        .collect();
    for (dag, at) in &next {
        tracing::info!(dag = %dag, next_run = %at, "scheduled");
    }
    let env = Arc::new(env);
    let mut running: tokio::task::JoinSet<(String, Outcome)> = tokio::task::JoinSet::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut ran = Ran::default();
    loop {
        tokio::select! {
            _ = ticks.recv() => {
                let now = Utc::now();
                for dag in &scheduled {
                    let Some(due) = next.get(&dag.name).copied().filter(|t| *t <= now) else {
                        continue;
                    };
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
                        continue;
                    }
                    busy.insert(dag.name.clone());
                    running.spawn(run_tick(
                        (*dag).clone(),
                        due,
                        Arc::clone(&env),
                        runner.clone(),
                        leases.clone(),
                        settings.clone(),
                    ));
                }
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok((dag, outcome)) = done {
                    busy.remove(&dag);
                    ran.count(outcome);
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
                Some(Ok((_, outcome))) => ran.count(outcome),
                Some(Err(_)) => {}
                None => break,
            },
            _ = &mut deadline => {
                ran.interrupted += running.len() as u64;
                tracing::warn!(runs = running.len(), "grace period over: interrupting the runs still going; the next run recovers");
                running.shutdown().await;
                break;
            }
        }
    }
    Ok(ran)
}

/// How one tick ended for this daemon.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Succeeded,
    Failed,
    NotOurs,
}

impl Ran {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Succeeded => self.runs += 1,
            Outcome::Failed => {
                self.runs += 1;
                self.failed += 1;
            }
            Outcome::NotOurs => self.not_ours += 1,
        }
    }
}

/// Claims the tick's lease and, if this daemon got it, runs the DAG under
/// it, renewing it until the run ends.
async fn run_tick(
    dag: Dag<TaskKind>,
    tick: DateTime<Utc>,
    env: Arc<Env>,
    runner: Runner,
    leases: Leases,
    settings: Settings,
) -> (String, Outcome) {
    let name = dag.name.clone();
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
            return (name, Outcome::NotOurs);
        }
        Err(e) => {
            tracing::warn!(dag = %name, tick = %tick, error = %e, "could not claim the tick");
            return (name, Outcome::NotOurs);
        }
    };
    let (done_tx, done) = watch::channel(false);
    let renewer = tokio::spawn(renew(
        leases.clone(),
        lease.clone(),
        settings.lease_ttl,
        done,
    ));
    let opts = RunOptions {
        trigger: "schedule".into(),
        scheduled_at: Some(tick),
        lease: Some(lease.clone()),
        ..settings.run.clone()
    };
    let result = runner.run(&dag, build_tasks(&dag, &env), &opts).await;
    let _ = done_tx.send(true);
    let _ = renewer.await;
    if let Err(e) = leases.release(&lease).await {
        tracing::warn!(dag = %name, error = %e, "could not release the lease; it expires");
    }
    let outcome = match result {
        Ok(s) if s.state == RunState::Succeeded => Outcome::Succeeded,
        Ok(s) => {
            tracing::warn!(dag = %name, run_id = %s.run_id, "scheduled run failed");
            Outcome::Failed
        }
        Err(e) => {
            tracing::warn!(dag = %name, error = %e, "scheduled run could not start");
            Outcome::Failed
        }
    };
    (name, outcome)
}

/// Renews `lease` every third of its time to live until `done`.
async fn renew(leases: Leases, mut lease: Lease, ttl: Duration, mut done: watch::Receiver<bool>) {
    let every = ttl / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = done.changed() => return,
        }
        match leases
            .renew(&lease, ttl, Utc::now().timestamp_millis())
            .await
        {
            Ok(l) => lease = l,
            Err(e) => {
                // A lost lease makes the run's next commit fail; a database
                // error is tried again at the next renewal.
                tracing::warn!(dag = %lease.dag, error = %e, "could not renew the lease");
            }
        }
    }
}
