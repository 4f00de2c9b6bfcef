//! The run ledger: every run and every task attempt, recorded in the
//! warehouse in the tables `cutover_runs` and `cutover_task_attempts` (created
//! by the migrations).

use chrono::{DateTime, Utc};

use crate::time::timestamp;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::sql::{bind_all, text, write_row, Backend, Bound};
use crate::state::{read, AttemptStatus, RunState, RunStatus, TaskState, Trigger};

/// A ledger read or write failed.
#[derive(Debug, thiserror::Error)]
#[error("run ledger: {what}")]
pub struct LedgerError {
    what: String,
    #[source]
    source: sqlx::Error,
}

impl LedgerError {
    fn new(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let what = what.into();
        move |source| Self { what, source }
    }

    /// The database's error.
    pub fn cause(&self) -> &sqlx::Error {
        &self.source
    }
}

/// A run as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// The run's id.
    pub run_id: String,
    /// The DAG's name.
    pub dag: String,
    /// What started it.
    pub trigger: Trigger,
    /// The schedule tick it belongs to, for scheduled runs.
    pub scheduled_at: Option<String>,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// When it ended.
    pub ended_at: Option<String>,
    /// How it stands.
    pub state: RunStatus,
    /// Rows read by all its tasks.
    pub rows_read: i64,
    /// Rows written by all its tasks.
    pub rows_written: i64,
    /// Rows quarantined by all its tasks.
    pub rows_quarantined: i64,
    /// The first error, for failed runs.
    pub error: Option<String>,
}

/// One task attempt as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRecord {
    /// The task's id.
    pub task: String,
    /// The attempt, from 1; 0 for a skipped task.
    pub attempt: i64,
    /// How it stands.
    pub state: AttemptStatus,
    /// When it started.
    pub started_at: Option<String>,
    /// When it ended.
    pub ended_at: Option<String>,
    /// Rows read.
    pub rows_read: i64,
    /// Rows written.
    pub rows_written: i64,
    /// Rows quarantined.
    pub rows_quarantined: i64,
    /// The error, or why it was skipped.
    pub error: Option<String>,
}

/// The ledger in one warehouse.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: AnyPool,
    backend: Backend,
}

impl Ledger {
    /// A ledger over a migrated warehouse.
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        Self { pool, backend }
    }

    /// The warehouse pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The warehouse backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Records the start of a run.
    ///
    /// # Errors
    /// The write failed.
    pub async fn begin_run(
        &self,
        run_id: &str,
        dag: &str,
        trigger: Trigger,
        scheduled_at: Option<DateTime<Utc>>,
        started_at: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let sql = format!(
            "INSERT INTO cutover_runs (run_id, dag, trigger_kind, scheduled_at, started_at, state, host, pid, process, heartbeat_ms, rows_read, rows_written, rows_quarantined) VALUES ({}, 0, 0, 0)",
            self.backend.markers().list(10)
        );
        sqlx::query(&sql)
            .bind(run_id)
            .bind(dag)
            .bind(trigger.as_str())
            .bind(scheduled_at.map(timestamp))
            .bind(timestamp(started_at))
            .bind(RunStatus::Running.as_str())
            .bind(hostname())
            .bind(i64::from(std::process::id()))
            .bind(process_identity())
            .bind(started_at.timestamp_millis())
            .execute(&self.pool)
            .await
            .map_err(LedgerError::new(format!(
                "recording the start of run {run_id}"
            )))?;
        Ok(())
    }

    /// Records a task's state for one attempt, inserting or replacing it.
    ///
    /// # Errors
    /// The write failed.
    pub async fn record_task(
        &self,
        run_id: &str,
        task: &str,
        state: &TaskState,
        started_at: Option<DateTime<Utc>>,
        ended_at: Option<DateTime<Utc>>,
    ) -> Result<(), LedgerError> {
        let attempt = i64::from(state.attempt());
        write_row(
            &self.pool,
            self.backend,
            "cutover_task_attempts",
            &[
                ("run_id", run_id.into()),
                ("task", task.into()),
                ("attempt", attempt.into()),
            ],
            &attempt_values(state, started_at, ended_at),
        )
        .await
        .map_err(LedgerError::new(format!(
            "recording task {task} of run {run_id}"
        )))
    }

    /// Records the end of a run with its totals, and with `tasks`, the
    /// records of its task attempts not yet written (a run whose
    /// [`RunOptions::tasks_at_end`](crate::RunOptions::tasks_at_end) is on),
    /// in one transaction.
    ///
    /// # Errors
    /// The write failed; nothing of it is recorded.
    pub async fn finish_run(
        &self,
        run_id: &str,
        end: RunEnd<'_>,
        tasks: &[TaskRecord],
    ) -> Result<(), LedgerError> {
        let what = || LedgerError::new(format!("recording the end of run {run_id}"));
        let error = end
            .error
            .map(|e| clip(&crate::redact::redact(e), MAX_ERROR));
        let sql = self.backend.sql("UPDATE cutover_runs SET state = ?, ended_at = ?, rows_read = ?, rows_written = ?, rows_quarantined = ?, error = ? WHERE run_id = ?");
        let update = sqlx::query(&sql)
            .bind(end.state.status().as_str())
            .bind(timestamp(end.ended_at))
            .bind(end.totals.read as i64)
            .bind(end.totals.written as i64)
            .bind(end.totals.quarantined as i64)
            .bind(error)
            .bind(run_id);
        if tasks.is_empty() {
            update.execute(&self.pool).await.map_err(what())?;
            return Ok(());
        }
        let rows: Vec<Vec<(&'static str, Bound)>> = tasks
            .iter()
            .map(|t| {
                let mut row = attempt_values(&t.state, t.started_at, t.ended_at);
                row.push(("run_id", run_id.into()));
                row.push(("task", t.task.as_str().into()));
                row.push(("attempt", i64::from(t.state.attempt()).into()));
                row
            })
            .collect();
        let columns: Vec<&str> = rows[0].iter().map(|(c, _)| *c).collect();
        let mut m = self.backend.markers();
        let tuples: Vec<String> = rows
            .iter()
            .map(|r| format!("({})", m.list(r.len())))
            .collect();
        let insert = format!(
            "INSERT INTO cutover_task_attempts ({}) VALUES {}",
            columns.join(", "),
            tuples.join(", ")
        );
        let q = rows
            .iter()
            .fold(sqlx::query(&insert), |q, row| bind_all(q, row, &[]));
        let mut tx = self.pool.begin().await.map_err(what())?;
        q.execute(&mut *tx).await.map_err(what())?;
        update.execute(&mut *tx).await.map_err(what())?;
        tx.commit().await.map_err(what())?;
        Ok(())
    }

    /// Records that run `run_id` is alive (its process goes on).
    ///
    /// # Errors
    /// The write failed.
    pub async fn heartbeat(&self, run_id: &str) -> Result<(), LedgerError> {
        let sql = self
            .backend
            .sql("UPDATE cutover_runs SET heartbeat_ms = ? WHERE run_id = ? AND state = ?");
        sqlx::query(&sql)
            .bind(Utc::now().timestamp_millis())
            .bind(run_id)
            .bind(RunStatus::Running.as_str())
            .execute(&self.pool)
            .await
            .map_err(LedgerError::new(format!(
                "recording that run {run_id} is alive"
            )))?;
        Ok(())
    }

    /// Records the runs of `dag` (all DAGs when `None`) that the ledger
    /// shows `running` but whose process is gone as interrupted: a process
    /// on this host that no longer exists, or any whose heartbeat is older
    /// than [`STALE_MS`]. Returns them.
    ///
    /// # Errors
    /// The ledger failed.
    pub async fn interrupt_dead(&self, dag: Option<&str>) -> Result<Vec<String>, LedgerError> {
        let filter = if dag.is_some() { " AND dag = ?" } else { "" };
        let sql = self.backend.sql(&format!(
            "SELECT run_id, host, pid, process, heartbeat_ms, started_at FROM cutover_runs WHERE state = ?{filter}"
        ));
        let mut q = sqlx::query(&sql).bind(RunStatus::Running.as_str());
        if let Some(d) = dag {
            q = q.bind(d);
        }
        let what = || LedgerError::new("reading the running runs");
        let rows = q.fetch_all(&self.pool).await.map_err(what())?;
        let now_ms = Utc::now().timestamp_millis();
        let mut dead = Vec::new();
        for r in &rows {
            let run_id = text(r, "run_id").map_err(what())?.unwrap_or_default();
            let host = text(r, "host").map_err(what())?;
            let pid: Option<i64> = r.try_get("pid").ok().flatten();
            let process = text(r, "process").map_err(what())?;
            let beat: Option<i64> = r.try_get("heartbeat_ms").ok().flatten();
            // On this machine and in this pid namespace, the process table
            // is the truth (a pid reused by another process has another
            // start time); elsewhere, the heartbeat.
            let gone = process.as_deref().and_then(process_gone) == Some(true);
            let beat = beat.or_else(|| {
                // Runs recorded before heartbeats: by their start.
                text(r, "started_at")
                    .ok()
                    .flatten()
                    .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| t.timestamp_millis() + OLD_RUN_GRACE_MS)
            });
            let local = process.as_deref().and_then(process_gone).is_some();
            let stale = !local && beat.is_some_and(|t| now_ms - t > STALE_MS);
            if gone || stale {
                let why = if gone {
                    format!(
                        "interrupted: its process ({}, pid {}) is gone (killed or crashed); what it committed stays, and the next run goes on from the watermarks",
                        host.as_deref().unwrap_or("?"),
                        pid.unwrap_or_default()
                    )
                } else {
                    format!(
                        "interrupted: no sign of life from its process ({}, pid {}) for {} s; what it committed stays, and the next run goes on from the watermarks",
                        host.as_deref().unwrap_or("?"),
                        pid.unwrap_or_default(),
                        (now_ms - beat.unwrap_or(now_ms)) / 1000
                    )
                };
                tracing::warn!(run_id = %run_id, reason = %why, "recording a dead run as interrupted");
                self.interrupt_run(&run_id, &why).await?;
                dead.push(run_id);
            }
        }
        Ok(dead)
    }

    /// The states of some runs, by id; runs the ledger does not know are
    /// left out.
    ///
    /// # Errors
    /// The read failed.
    pub async fn states(
        &self,
        run_ids: &[String],
    ) -> Result<std::collections::HashMap<String, RunStatus>, LedgerError> {
        let mut out = std::collections::HashMap::new();
        let what = || LedgerError::new("reading run states");
        for chunk in run_ids.chunks(200) {
            let sql = format!(
                "SELECT run_id, state FROM cutover_runs WHERE run_id IN ({})",
                self.backend.markers().list(chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await.map_err(what())? {
                out.insert(
                    text(&r, "run_id").map_err(what())?.unwrap_or_default(),
                    read(&r, "state").map_err(what())?,
                );
            }
        }
        Ok(out)
    }

    /// Records that run `run_id` was interrupted: the run and its attempts
    /// still `running` become `interrupted`, with `reason` as their error.
    ///
    /// # Errors
    /// The write failed.
    pub async fn interrupt_run(&self, run_id: &str, reason: &str) -> Result<(), LedgerError> {
        let now = timestamp(Utc::now());
        let what = || LedgerError::new(format!("recording that run {run_id} was interrupted"));
        // Its attempts first, so that a run recorded as interrupted has no
        // attempt left running.
        for (table, interrupted, running) in [
            (
                "cutover_task_attempts",
                AttemptStatus::Interrupted.as_str(),
                AttemptStatus::Running.as_str(),
            ),
            (
                "cutover_runs",
                RunStatus::Interrupted.as_str(),
                RunStatus::Running.as_str(),
            ),
        ] {
            let mut m = self.backend.markers();
            let sql = format!(
                "UPDATE {table} SET state = {}, ended_at = {}, error = {} WHERE run_id = {} AND state = {}",
                m.next(),
                m.next(),
                m.next(),
                m.next(),
                m.next()
            );
            sqlx::query(&sql)
                .bind(interrupted)
                .bind(&now)
                .bind(reason)
                .bind(run_id)
                .bind(running)
                .execute(&self.pool)
                .await
                .map_err(what())?;
        }
        Ok(())
    }

    /// The runs of `dag` started by `trigger` (for the tick `scheduled_at`,
    /// when given) that the ledger still shows as `running`, oldest first.
    async fn running(
        &self,
        dag: &str,
        trigger: Trigger,
        scheduled_at: Option<DateTime<Utc>>,
    ) -> Result<Vec<String>, LedgerError> {
        let tick = if scheduled_at.is_some() {
            " AND scheduled_at = ?"
        } else {
            ""
        };
        let sql = self.backend.sql(&format!(
            "SELECT run_id FROM cutover_runs WHERE dag = ? AND trigger_kind = ? AND state = ?{tick} ORDER BY started_at"
        ));
        let mut q = sqlx::query(&sql)
            .bind(dag)
            .bind(trigger.as_str())
            .bind(RunStatus::Running.as_str());
        if let Some(t) = scheduled_at {
            q = q.bind(timestamp(t));
        }
        let what = || LedgerError::new(format!("reading the running runs of {dag}"));
        let rows = q.fetch_all(&self.pool).await.map_err(what())?;
        rows.iter()
            .map(|r| text(r, "run_id").map(Option::unwrap_or_default))
            .collect::<Result<_, _>>()
            .map_err(what())
    }

    /// Records the runs of `dag` started by `trigger` (for the tick
    /// `scheduled_at`, when given) that the ledger still shows as `running`
    /// as interrupted, with `reason`: runs whose process died. Returns them.
    ///
    /// # Errors
    /// The ledger failed.
    pub async fn interrupt_abandoned(
        &self,
        dag: &str,
        trigger: Trigger,
        scheduled_at: Option<DateTime<Utc>>,
        reason: &str,
    ) -> Result<Vec<String>, LedgerError> {
        let abandoned = self.running(dag, trigger, scheduled_at).await?;
        for run_id in &abandoned {
            tracing::warn!(dag = %dag, run_id = %run_id, "recording an abandoned run as interrupted");
            self.interrupt_run(run_id, reason).await?;
        }
        Ok(abandoned)
    }

    /// The latest runs, newest first, of one DAG or of all.
    ///
    /// # Errors
    /// The read failed.
    pub async fn runs(&self, dag: Option<&str>, limit: i64) -> Result<Vec<RunRecord>, LedgerError> {
        let filter = if dag.is_some() { "WHERE dag = ?" } else { "" };
        let sql = self.backend.sql(&format!(
            "SELECT run_id, dag, trigger_kind, scheduled_at, started_at, ended_at, state, rows_read, rows_written, rows_quarantined, error \
             FROM cutover_runs {filter} ORDER BY started_at DESC, run_id DESC LIMIT ?"
        ));
        let mut q = sqlx::query(&sql);
        if let Some(dag) = dag {
            q = q.bind(dag);
        }
        let rows = q
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(LedgerError::new("listing runs"))?;
        rows.iter()
            .map(run_record)
            .collect::<Result<_, _>>()
            .map_err(LedgerError::new("reading runs"))
    }

    /// The task attempts of one run, in the order they were recorded.
    ///
    /// # Errors
    /// The read failed.
    pub async fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRecord>, LedgerError> {
        let sql = format!(
            "SELECT task, attempt, state, started_at, ended_at, rows_read, rows_written, rows_quarantined, error \
             FROM cutover_task_attempts WHERE run_id = {} ORDER BY started_at, task, attempt",
            self.backend.markers().next()
        );
        let rows = sqlx::query(&sql)
            .bind(run_id)
            .fetch_all(&self.pool)
            .await
            .map_err(LedgerError::new(format!(
                "listing the tasks of run {run_id}"
            )))?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRecord {
                    task: r.try_get("task")?,
                    attempt: r.try_get("attempt")?,
                    state: read(r, "state")?,
                    started_at: r.try_get("started_at")?,
                    ended_at: r.try_get("ended_at")?,
                    rows_read: r.try_get("rows_read")?,
                    rows_written: r.try_get("rows_written")?,
                    rows_quarantined: r.try_get("rows_quarantined")?,
                    error: text(r, "error")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(LedgerError::new("reading task attempts"))
    }
}

/// A run whose heartbeat is older than this is taken for dead (its
/// process beats every [`HEARTBEAT_MS`]).
pub const STALE_MS: i64 = 120_000;

/// How often a running run records that it is alive.
pub const HEARTBEAT_MS: u64 = 15_000;

/// A task attempt's record, kept by a run that writes them with its end.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    /// The task.
    pub task: String,
    /// Its state; the attempt is the state's.
    pub state: TaskState,
    /// When the attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
}

/// How a run ended, as [`Ledger::finish_run`] records it.
#[derive(Debug, Clone, Copy)]
pub struct RunEnd<'a> {
    /// Its state.
    pub state: &'a RunState,
    /// When it ended.
    pub ended_at: DateTime<Utc>,
    /// What it read, wrote and quarantined.
    pub totals: crate::runner::Totals,
    /// Its first error, if any.
    pub error: Option<&'a str>,
}

/// The columns of a task attempt's row other than its key.
fn attempt_values(
    state: &TaskState,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
) -> Vec<(&'static str, Bound)> {
    let (read, written, quarantined, summary, error) = match state {
        TaskState::Succeeded { report, .. } => (
            report.rows_read as i64,
            report.rows_written as i64,
            report.rows_quarantined as i64,
            Some(crate::redact::redact(&report.summary).into_owned()),
            None,
        ),
        TaskState::Failed { error, .. } => (
            0,
            0,
            0,
            None,
            Some(clip(&crate::redact::redact(error), MAX_ERROR)),
        ),
        TaskState::Skipped { because } => (
            0,
            0,
            0,
            None,
            Some(format!("skipped: {because} did not succeed")),
        ),
        TaskState::Pending | TaskState::Running { .. } => (0, 0, 0, None, None),
    };
    let retryable = matches!(
        state,
        TaskState::Failed {
            retryable: true,
            ..
        }
    ) as i64;
    vec![
        ("state", state.status().as_str().into()),
        ("started_at", started_at.map(timestamp).into()),
        ("ended_at", ended_at.map(timestamp).into()),
        ("rows_read", read.into()),
        ("rows_written", written.into()),
        ("rows_quarantined", quarantined.into()),
        ("summary", summary.into()),
        ("error", error.into()),
        ("retryable", retryable.into()),
    ]
}

/// The longest error the ledger keeps whole; longer ones keep their head
/// and tail, where the first message and the root cause are.
const MAX_ERROR: usize = 256 << 10;

/// `s` cut to at most `max` bytes, keeping its head and its tail with what
/// was left out said between them.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    // The marker takes at most this much.
    const MARKER: usize = 48;
    if max <= MARKER {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        return s[..end].to_owned();
    }
    let half = (max - MARKER) / 2;
    let mut head = half;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - half;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} [... {} bytes left out ...] {}",
        &s[..head],
        tail - head,
        &s[tail..]
    )
}

/// This machine's name, as runs, leases and consumers record it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Runs recorded without a heartbeat (by an older version) count as stale
/// this long after they started.
const OLD_RUN_GRACE_MS: i64 = 86_400_000 - STALE_MS;

/// This process as the ledger records it: the machine's boot, the pid
/// namespace, the pid and the process's start time, so that another process
/// can tell whether it is still alive (and not a reused pid). `None` where
/// the system does not tell (not Linux).
pub fn process_identity() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let pid = std::process::id();
    let start = start_time(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(format!(
        "{}/{}/{pid}/{start}",
        boot.trim(),
        ns.to_string_lossy()
    ))
}

/// The start time (clock ticks after boot) in a `/proc/PID/stat` line.
fn start_time(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process `identity` ([`process_identity`]) names is gone;
/// `None` when it ran on another machine or in another pid namespace, where
/// this one cannot tell.
pub fn process_gone(identity: &str) -> Option<bool> {
    let mine = process_identity()?;
    let mut theirs = identity.split('/');
    let mut ours = mine.split('/');
    let (boot, ns) = (theirs.next()?, theirs.next()?);
    if Some(boot) != ours.next() || Some(ns) != ours.next() {
        return None;
    }
    let pid = theirs.next()?;
    let start: u64 = theirs.next()?.parse().ok()?;
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => Some(start_time(&stat) != Some(start)),
        Err(_) => Some(true),
    }
}

fn run_record(r: &AnyRow) -> Result<RunRecord, sqlx::Error> {
    Ok(RunRecord {
        run_id: r.try_get("run_id")?,
        dag: r.try_get("dag")?,
        trigger: read(r, "trigger_kind")?,
        scheduled_at: r.try_get("scheduled_at")?,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        state: read(r, "state")?,
        rows_read: r.try_get("rows_read")?,
        rows_written: r.try_get("rows_written")?,
        rows_quarantined: r.try_get("rows_quarantined")?,
        error: text(r, "error")?,
    })
}
