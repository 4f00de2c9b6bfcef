//! The runner: executes one DAG run. Tasks start as soon as their
//! dependencies have succeeded, independent ones at the same time; a failed
//! attempt is retried with exponential backoff and jitter when its error is
//! retryable; an attempt that outlives its timeout is cancelled and counts as
//! a retryable failure; a task that finally fails marks every task that
//! depends on it, directly or not, as skipped, and the run as failed. Every
//! transition is written to the ledger: as it happens, or, for a run that
//! asks for it ([`RunOptions::tasks_at_end`]), with the run's end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::dag::{Dag, TaskSpec};
use crate::ledger::{Ledger, LedgerError, RunEnd, TaskRecord};
use crate::state::{AttemptStatus, RunState, RunStatus, TaskState, Trigger};
use crate::task::{Role, Task, TaskContext, TaskError, TaskKinds, TaskReport};

/// How a run is started.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where runs keep their intermediate files: `<work_root>/<dag>/<run id>/`.
    pub work_root: PathBuf,
    /// What started the run.
    pub trigger: Trigger,
    /// The schedule tick the run belongs to.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// The most tasks of this run that may run at once.
    pub max_parallel: usize,
    /// Keep the run's work directory after a successful run.
    pub keep_work: bool,
    /// The lease on the DAG the run holds (scheduled runs); its commits are
    /// refused once it is lost.
    pub lease: Option<crate::Lease>,
    /// Turns true to interrupt the run: its tasks are stopped where they
    /// are (a load's open transaction rolls back) and the run is recorded
    /// as `interrupted`.
    pub interrupt: Option<tokio::sync::watch::Receiver<bool>>,
    /// How many work directories of failed or interrupted runs of a DAG are
    /// kept for inspection (the newest); older ones, and those of
    /// successful runs, are removed.
    pub keep_failed: usize,
    /// When the source has nothing new since the DAG's last successful run
    /// (its extracts say so), the tasks after them are not run.
    pub skip_unchanged: bool,
    /// Write the tasks' records once, with the run's end and in the same
    /// transaction, instead of as each task starts and ends: for short runs
    /// (the feed's micro-batches), where those writes cost more than the
    /// work. The run's start is still recorded first; a run that is
    /// interrupted or dies shows as interrupted, without its tasks.
    pub tasks_at_end: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            work_root: PathBuf::from(".cutover/work"),
            trigger: Trigger::Manual,
            scheduled_at: None,
            max_parallel: 4,
            keep_work: false,
            lease: None,
            interrupt: None,
            keep_failed: 3,
            skip_unchanged: true,
            tasks_at_end: false,
        }
    }
}

/// What a run did, as the ledger records it: documents read by its
/// extracts, rows changed by its loads, rows quarantined by any task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Source documents read (extract tasks).
    pub read: u64,
    /// Warehouse rows changed (load tasks).
    pub written: u64,
    /// Documents and rows set aside in the quarantine (every task).
    pub quarantined: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run's id.
    pub run_id: String,
    /// The DAG's name.
    pub dag: String,
    /// How the run ended.
    pub state: RunState,
    /// Every task's final state, in the DAG's dependency order.
    pub tasks: Vec<(String, TaskState)>,
    /// What the run did, by the roles of its tasks.
    pub totals: Totals,
    /// The run's work directory (removed after a successful run unless kept).
    pub work_dir: PathBuf,
}

impl RunSummary {
    /// The first task that failed, in dependency order.
    pub fn first_failure(&self) -> Option<Failure<'_>> {
        self.tasks.iter().find_map(|(id, s)| match s {
            TaskState::Failed {
                error, retryable, ..
            } => Some(Failure {
                task: id,
                error,
                retryable: *retryable,
            }),
            _ => None,
        })
    }

    /// The first task that failed, with its error: `task load: ...`.
    pub fn first_error(&self) -> Option<String> {
        self.first_failure().map(|f| f.to_string())
    }
}

/// A task that failed, as [`RunSummary::first_failure`] finds it; shown as
/// `task load: ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure<'a> {
    /// The task's id.
    pub task: &'a str,
    /// Its error with its causes.
    pub error: &'a str,
    /// Whether the error was of a retryable kind.
    pub retryable: bool,
}

impl std::fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {}: {}", self.task, self.error)
    }
}

/// The totals of tasks' states, by their kinds' roles.
fn totals<K: TaskKinds>(dag: &Dag<K>, states: &HashMap<String, TaskState>) -> Totals {
    let mut t = Totals::default();
    for spec in &dag.tasks {
        if let Some(TaskState::Succeeded { report, .. }) = states.get(&spec.id) {
            match spec.kind.role() {
                Role::Extract => t.read += report.rows_read,
                Role::Load => t.written += report.rows_written,
                Role::Transform | Role::Verify => {}
            }
            t.quarantined += report.rows_quarantined;
        }
    }
    t
}

/// Runs DAGs, recording them in a ledger.
#[derive(Debug, Clone)]
pub struct Runner {
    ledger: Ledger,
}

/// Writes of a run's end before giving up (about 3.5 s in all).
const FINISH_ATTEMPTS: u32 = 4;

impl Runner {
    /// A runner that records into `ledger`.
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }

    /// Records the end of a run, trying again over a few seconds: a pooled
    /// connection that broke while the run went on fails the first write,
    /// and a new one succeeds. A run whose end cannot be recorded at all
    /// stays `running` in the ledger.
    async fn finish_run(
        &self,
        run_id: &str,
        state: &RunState,
        totals: Totals,
        error: Option<&str>,
        records: &Records,
    ) -> Result<(), LedgerError> {
        let tasks = records.held();
        let mut attempt = 1u32;
        loop {
            let end = RunEnd {
                state,
                ended_at: Utc::now(),
                totals,
                error,
            };
            match self.ledger.finish_run(run_id, end, &tasks).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= FINISH_ATTEMPTS => return Err(e),
                Err(e) => {
                    let delay = Duration::from_millis(500) * 2u32.pow(attempt - 1);
                    tracing::warn!(error = %e, cause = %e.cause(), retry_in_ms = delay.as_millis() as u64, "could not record the end of the run; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    /// The ledger it records into.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Runs `dag` once with the given task implementations, one per task id.
    ///
    /// # Errors
    /// The ledger could not record the run, or a task has no implementation.
    /// Task failures are not errors: they are in the summary's state.
    pub async fn run<K: TaskKinds>(
        &self,
        dag: &Dag<K>,
        mut implementations: HashMap<String, Arc<dyn Task>>,
        opts: &RunOptions,
    ) -> Result<RunSummary, RunError> {
        // Runs of this DAG whose process died are recorded for what they
        // are before another starts.
        self.ledger.interrupt_dead(Some(&dag.name)).await?;
        let run_id = new_run_id();
        let work_dir = opts.work_root.join(&dag.name).join(&run_id);
        let started_at = Utc::now();
        self.ledger
            .begin_run(
                &run_id,
                &dag.name,
                opts.trigger,
                opts.scheduled_at,
                started_at,
            )
            .await?;
        let beat = {
            let ledger = self.ledger.clone();
            let run_id = run_id.clone();
            tokio::spawn(async move {
                let mut every =
                    tokio::time::interval(Duration::from_millis(crate::ledger::HEARTBEAT_MS));
                every.tick().await;
                loop {
                    every.tick().await;
                    if let Err(e) = ledger.heartbeat(&run_id).await {
                        tracing::debug!(error = %e, "could not record the run's heartbeat");
                    }
                }
            })
        };
        let records = Records::new(self.ledger.clone(), &run_id, opts.tasks_at_end);
        let span = tracing::info_span!("run", dag = %dag.name, run_id = %run_id);
        let summary = self
            .drive(dag, &mut implementations, opts, &records, &work_dir)
            .instrument(span)
            .await;
        beat.abort();
        let summary = self
            .record_end(dag, opts, &records, &work_dir, summary)
            .await;
        prune_work(
            &self.ledger,
            &opts.work_root.join(&dag.name),
            &run_id,
            opts.keep_failed,
        )
        .await;
        summary
    }

    /// Records how a run ended.
    async fn record_end<K>(
        &self,
        dag: &Dag<K>,
        opts: &RunOptions,
        records: &Records,
        work_dir: &std::path::Path,
        summary: Result<RunSummary, RunError>,
    ) -> Result<RunSummary, RunError> {
        let run_id = records.run_id.clone();
        if let Err(RunError::Interrupted(_)) = &summary {
            let reason = "interrupted: the scheduler stopped before the run ended; the next run goes on from the watermarks";
            tracing::warn!(dag = %dag.name, run_id = %run_id, "run interrupted");
            self.ledger.interrupt_run(&run_id, reason).await?;
            crate::metrics::metrics().run_ended(&dag.name, opts.trigger, RunStatus::Interrupted);
            return Err(RunError::Interrupted(run_id));
        }
        let summary = match summary {
            Ok(s) => s,
            Err(e) => {
                let _ = self
                    .finish_run(
                        &run_id,
                        &RunState::Failed { failed: vec![] },
                        Totals::default(),
                        Some(&e.to_string()),
                        records,
                    )
                    .await;
                return Err(e);
            }
        };
        let first_error = summary.first_error();
        self.finish_run(
            &run_id,
            &summary.state,
            summary.totals,
            first_error.as_deref(),
            records,
        )
        .await?;
        crate::metrics::metrics().run_ended(&dag.name, opts.trigger, summary.state.status());
        if summary.state == RunState::Succeeded && !opts.keep_work {
            let _ = tokio::fs::remove_dir_all(&work_dir).await;
        }
        Ok(summary)
    }

    async fn drive<K: TaskKinds>(
        &self,
        dag: &Dag<K>,
        implementations: &mut HashMap<String, Arc<dyn Task>>,
        opts: &RunOptions,
        records: &Records,
        work_dir: &std::path::Path,
    ) -> Result<RunSummary, RunError> {
        let run_id = records.run_id.as_str();
        tokio::fs::create_dir_all(work_dir)
            .await
            .map_err(|e| RunError::WorkDir(work_dir.to_path_buf(), e))?;
        let mut states: HashMap<String, TaskState> = dag
            .tasks
            .iter()
            .map(|t| (t.id.clone(), TaskState::Pending))
            .collect();
        let mut waiting: HashMap<&str, usize> = dag
            .tasks
            .iter()
            .map(|t| (t.id.as_str(), t.depends_on.len()))
            .collect();
        let permits = Arc::new(Semaphore::new(opts.max_parallel.max(1)));
        let mut running: JoinSet<(String, TaskState)> = JoinSet::new();

        let mut start = |spec: &TaskSpec<K>,
                         running: &mut JoinSet<(String, TaskState)>|
         -> Result<(), RunError> {
            let task = implementations
                .remove(&spec.id)
                .ok_or_else(|| RunError::NoImplementation(spec.id.clone()))?;
            let attempt = Attempts {
                records: records.clone(),
                ctx: TaskContext {
                    dag: dag.name.clone(),
                    run_id: run_id.to_owned(),
                    task: spec.id.clone(),
                    attempt: 0,
                    work_dir: work_dir.to_path_buf(),
                    lease: opts.lease.clone(),
                    skip_unchanged: opts.skip_unchanged,
                },
                retries: spec.retries,
                backoff: spec.backoff,
                max_backoff: spec.max_backoff,
                timeout: spec.timeout,
            };
            let permits = permits.clone();
            let span = tracing::info_span!("task", task = %spec.id);
            running.spawn(
                async move {
                    let _permit = permits.acquire_owned().await;
                    let id = attempt.ctx.task.clone();
                    (id, attempt.run(task).await)
                }
                .instrument(span),
            );
            Ok(())
        };

        for spec in dag.tasks.iter().filter(|t| t.depends_on.is_empty()) {
            start(spec, &mut running)?;
        }
        let mut interrupt = opts.interrupt.clone();
        loop {
            let joined = tokio::select! {
                joined = running.join_next() => joined,
                () = interrupted(&mut interrupt) => {
                    // Stop every task where it is and wait until they have
                    // stopped, so that none records anything after the run's
                    // interruption is recorded.
                    running.shutdown().await;
                    return Err(RunError::Interrupted(run_id.to_owned()));
                }
            };
            let Some(joined) = joined else { break };
            let mut finished = vec![joined.map_err(|e| RunError::Panicked(e.to_string()))?];
            while let Some((id, state)) = finished.pop() {
                let succeeded = matches!(state, TaskState::Succeeded { .. });
                states.insert(id.clone(), state);
                if !succeeded {
                    Self::skip_dependents(dag, &id, &mut states, records).await?;
                    continue;
                }
                for spec in dag.tasks.iter().filter(|t| t.depends_on.contains(&id)) {
                    let left = waiting
                        .get_mut(spec.id.as_str())
                        .expect("every task is counted");
                    *left -= 1;
                    if *left > 0 || !matches!(states[&spec.id], TaskState::Pending) {
                        continue;
                    }
                    let unchanged = opts.skip_unchanged
                        && spec.depends_on.iter().all(|d| unchanged(&states[d]));
                    if unchanged {
                        let state = up_to_date(&spec.depends_on);
                        let now = Utc::now();
                        tracing::info!(task = %spec.id, "up to date: nothing new upstream");
                        records
                            .record(&spec.id, &state, Some(now), Some(now))
                            .await?;
                        finished.push((spec.id.clone(), state));
                    } else {
                        start(spec, &mut running)?;
                    }
                }
            }
        }

        let failed: Vec<String> = dag
            .tasks
            .iter()
            .filter(|t| matches!(states[&t.id], TaskState::Failed { .. }))
            .map(|t| t.id.clone())
            .collect();
        let state = if failed.is_empty() {
            RunState::Succeeded
        } else {
            RunState::Failed { failed }
        };
        Ok(RunSummary {
            run_id: run_id.to_owned(),
            dag: dag.name.clone(),
            totals: totals(dag, &states),
            state,
            tasks: dag
                .tasks
                .iter()
                .map(|t| (t.id.clone(), states[&t.id].clone()))
                .collect(),
            work_dir: work_dir.to_path_buf(),
        })
    }

    /// Marks every pending task downstream of `failed` as skipped.
    async fn skip_dependents<K>(
        dag: &Dag<K>,
        failed: &str,
        states: &mut HashMap<String, TaskState>,
        records: &Records,
    ) -> Result<(), LedgerError> {
        let mut frontier = vec![failed.to_owned()];
        while let Some(cause) = frontier.pop() {
            for spec in dag.tasks.iter().filter(|t| t.depends_on.contains(&cause)) {
                if matches!(states[&spec.id], TaskState::Pending) {
                    let skipped = TaskState::Skipped {
                        because: cause.clone(),
                    };
                    tracing::warn!(task = %spec.id, because = %cause, "task skipped");
                    records
                        .record(&spec.id, &skipped, None, Some(Utc::now()))
                        .await?;
                    states.insert(spec.id.clone(), skipped);
                    frontier.push(spec.id.clone());
                }
            }
        }
        Ok(())
    }
}

/// Whether a task succeeded finding nothing new.
fn unchanged(state: &TaskState) -> bool {
    matches!(state, TaskState::Succeeded { report, .. } if report.unchanged)
}

/// The state of a task not run because every task it depends on found
/// nothing new.
fn up_to_date(depends_on: &[String]) -> TaskState {
    TaskState::Succeeded {
        attempt: 0,
        report: TaskReport {
            summary: format!(
                "up to date: nothing new from {} since the last successful run",
                depends_on.join(", ")
            ),
            unchanged: true,
            ..TaskReport::default()
        },
    }
}

/// A run could not be carried out or recorded.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The ledger could not be written.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The work directory could not be created.
    #[error("cannot create the work directory {}", .0.display())]
    WorkDir(PathBuf, #[source] std::io::Error),
    /// A task of the DAG was given no implementation.
    #[error("task {0} has no implementation")]
    NoImplementation(String),
    /// A task panicked.
    #[error("a task panicked: {0}")]
    Panicked(String),
    /// The run was interrupted (recorded as `interrupted`).
    #[error("run {0} was interrupted")]
    Interrupted(String),
}

/// Where a run's task records go: to the ledger as they change, or held
/// until the run's end ([`RunOptions::tasks_at_end`]).
#[derive(Debug, Clone)]
struct Records {
    ledger: Ledger,
    run_id: String,
    held: Option<Arc<Mutex<Vec<TaskRecord>>>>,
}

impl Records {
    fn new(ledger: Ledger, run_id: &str, at_end: bool) -> Self {
        Self {
            ledger,
            run_id: run_id.to_owned(),
            held: at_end.then(Arc::default),
        }
    }

    /// Records a task's state for one attempt, replacing what was recorded
    /// for that attempt.
    async fn record(
        &self,
        task: &str,
        state: &TaskState,
        started_at: Option<DateTime<Utc>>,
        ended_at: Option<DateTime<Utc>>,
    ) -> Result<(), LedgerError> {
        let Some(held) = &self.held else {
            return self
                .ledger
                .record_task(&self.run_id, task, state, started_at, ended_at)
                .await;
        };
        let record = TaskRecord {
            task: task.to_owned(),
            state: state.clone(),
            started_at,
            ended_at,
        };
        let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
        match held
            .iter_mut()
            .find(|r| r.task == task && r.state.attempt() == state.attempt())
        {
            Some(r) => *r = record,
            None => held.push(record),
        }
        Ok(())
    }

    /// The records held for the run's end.
    fn held(&self) -> Vec<TaskRecord> {
        self.held
            .as_ref()
            .map(|h| h.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default()
    }
}

/// The attempts of one task.
struct Attempts {
    records: Records,
    ctx: TaskContext,
    retries: u32,
    backoff: Duration,
    max_backoff: Duration,
    timeout: Duration,
}

impl Attempts {
    async fn run(mut self, task: Arc<dyn Task>) -> TaskState {
        let mut attempt = 1;
        loop {
            self.ctx.attempt = attempt;
            let started_at = Utc::now();
            let running = TaskState::Running {
                attempt,
                started_at,
            };
            self.record(&running, Some(started_at), None).await;
            tracing::info!(attempt, "task started");
            let outcome = match tokio::time::timeout(self.timeout, task.run(&self.ctx)).await {
                Ok(result) => result,
                Err(_) => Err(TaskError::Retryable(
                    format!("timed out after {}", crate::duration::format(self.timeout)).into(),
                )),
            };
            let ended_at = Utc::now();
            let took = (ended_at - started_at).to_std().unwrap_or_default();
            let report = outcome.as_ref().ok();
            crate::metrics::metrics().task_ended(
                &self.ctx.dag,
                &self.ctx.task,
                if report.is_some() {
                    AttemptStatus::Succeeded
                } else {
                    AttemptStatus::Failed
                },
                took,
                report,
            );
            let state = match outcome {
                Ok(report) => {
                    let state = running.succeed(report);
                    if let TaskState::Succeeded {
                        report:
                            TaskReport {
                                rows_read,
                                rows_written,
                                rows_quarantined,
                                summary,
                                ..
                            },
                        ..
                    } = &state
                    {
                        tracing::info!(attempt, rows_read, rows_written, rows_quarantined, summary = %summary, "task succeeded");
                    }
                    self.record(&state, Some(started_at), Some(ended_at)).await;
                    return state;
                }
                Err(e) => running.fail(e.chain(), e.is_retryable()),
            };
            self.record(&state, Some(started_at), Some(ended_at)).await;
            let TaskState::Failed {
                retryable, error, ..
            } = &state
            else {
                unreachable!()
            };
            if !*retryable || attempt > self.retries {
                tracing::error!(attempt, retryable, error = %error, "task failed");
                return state;
            }
            let delay = backoff_delay(self.backoff, self.max_backoff, attempt);
            tracing::warn!(attempt, error = %error, retry_in_ms = delay.as_millis() as u64, "task attempt failed; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn record(
        &self,
        state: &TaskState,
        started: Option<DateTime<Utc>>,
        ended: Option<DateTime<Utc>>,
    ) {
        if let Err(e) = self
            .records
            .record(&self.ctx.task, state, started, ended)
            .await
        {
            tracing::error!(error = %e, cause = %e.cause(), "could not record the task in the ledger");
        }
    }
}

/// Resolves when `interrupt` turns true; never when there is none, or when
/// no one can turn it any more.
async fn interrupted(interrupt: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    let asked = match interrupt {
        Some(rx) => rx.wait_for(|stop| *stop).await.is_ok(),
        None => false,
    };
    if !asked {
        std::future::pending::<()>().await;
    }
}

/// The delay before retry `attempt` (from 1): `backoff * 2^(attempt-1)`,
/// capped at `max_backoff`, then scaled by a random factor in [0.5, 1.0] so
/// that tasks failing together do not retry together.
pub fn backoff_delay(backoff: Duration, max_backoff: Duration, attempt: u32) -> Duration {
    let exp = backoff.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
    let capped = exp.min(max_backoff);
    capped.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// Removes the work directories under `dir` (one DAG's) of failed and
/// interrupted runs but the newest `keep`. Those of running runs, of
/// successful ones (only `--keep-work` leaves them), and directories the
/// ledger does not know stay; `current`'s is never removed.
pub async fn prune_work(ledger: &Ledger, dir: &std::path::Path, current: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut ids: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if ids.is_empty() {
        return;
    }
    let states = match ledger.states(&ids).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "could not read run states to prune work directories");
            return;
        }
    };
    // Run ids are time-ordered: newest first.
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut kept = 0;
    for id in ids {
        if matches!(
            states.get(&id),
            Some(RunStatus::Failed | RunStatus::Interrupted)
        ) {
            kept += 1;
            if kept > keep && id != current {
                let _ = tokio::fs::remove_dir_all(dir.join(&id)).await;
            }
        }
    }
}

/// A new run id: time-ordered, unique across machines.
fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        for _ in 0..50 {
            let d1 = backoff_delay(b, max, 1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= b);
            let d3 = backoff_delay(b, max, 3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(backoff_delay(b, max, 30) <= max);
        }
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod runner_tests;
