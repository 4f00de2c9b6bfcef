//! The one trait through which the engine sees work, and the registry of task
//! kinds that DAG files name.

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A boxed error with its chain kept.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a task is told when it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The DAG's name.
    pub dag: String,
    /// The run's id.
    pub run_id: String,
    /// The task's id within the DAG.
    pub task: String,
    /// The attempt, starting at 1.
    pub attempt: u32,
    /// The run's work directory; a task writes its outputs under
    /// `work_dir/<task id>/` and reads its dependencies' outputs there.
    pub work_dir: PathBuf,
    /// The lease the run holds on its DAG, when it runs under one: a task
    /// that commits checks it in the committing transaction
    /// ([`crate::Leases::check`]).
    pub lease: Option<crate::Lease>,
    /// Whether a task may find that nothing is new since the last
    /// successful run and say so ([`TaskReport::unchanged`]), doing no work;
    /// the tasks that depend only on such tasks are then not run either.
    pub skip_unchanged: bool,
}

impl TaskContext {
    /// The directory that holds task `task`'s outputs in this run.
    pub fn output_dir(&self, task: &str) -> PathBuf {
        self.work_dir.join(task)
    }
}

/// What a successful attempt reports; the ledger records it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Source rows (documents, events, staged rows) the task read.
    pub rows_read: u64,
    /// Rows the task wrote (files for upstream tasks, or the warehouse).
    pub rows_written: u64,
    /// Invalid inputs set aside in quarantine.
    pub rows_quarantined: u64,
    /// A one-line human summary, shown by `cutover run`.
    pub summary: String,
    /// Nothing is new since the last successful run (only when the context
    /// allows it): the task did no work, and neither will the tasks that
    /// depend only on unchanged tasks.
    #[serde(default)]
    pub unchanged: bool,
}

/// Why an attempt failed. Whether it is retried comes from this type, never
/// from the text of the message.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// May pass on its own (a connection dropped, a lock timed out): retried
    /// while the task has retries left.
    #[error("{0}")]
    Retryable(#[source] BoxError),
    /// Will fail again the same way (bad configuration, a verification that
    /// found a difference): never retried.
    #[error("{0}")]
    Fatal(#[source] BoxError),
}

impl TaskError {
    /// A fatal error from a message.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::Fatal(message.into().into())
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }

    /// The message with its chain of causes, `a: b: c`.
    pub fn chain(&self) -> String {
        // The variant's own text is its source's: start from the source.
        match std::error::Error::source(self) {
            Some(inner) => crate::redact::chain(inner),
            None => self.to_string(),
        }
    }
}

/// A unit of work of some kind, built from a task's settings.
#[async_trait]
pub trait Task: Send + Sync {
    /// Runs one attempt.
    ///
    /// # Errors
    /// A [`TaskError`] saying whether another attempt may succeed.
    async fn run(&self, ctx: &TaskContext) -> Result<TaskReport, TaskError>;
}

/// A kind of task as `cutover dags kinds` lists it: each kind module
/// declares its own once.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    /// The name DAG files use in `kind = "..."`.
    pub name: &'static str,
    /// One line saying what it does.
    pub summary: &'static str,
    /// What it does in a run.
    pub role: Role,
    /// The names of the kind's own settings, for unknown-field errors.
    pub fields: fn() -> &'static [&'static str],
}

/// A problem in a kind's settings, found without I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingProblem {
    /// The setting's path within the task, e.g. `columns.ts.type`.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl SettingProblem {
    /// A problem with one setting.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

/// What a kind of task does in a run: how its rows count in the run's
/// totals (documents read by extracts, rows changed by loads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads source documents.
    Extract,
    /// Turns rows into other rows.
    Transform,
    /// Writes the warehouse.
    Load,
    /// Checks the warehouse.
    Verify,
}

/// The registry of task kinds: the parsed settings of every kind, as one
/// type. Implemented once, by the `tasks` crate.
pub trait TaskKinds: Sized + Send + Sync + std::fmt::Debug + Serialize + 'static {
    /// Every kind, in the order `cutover dags kinds` shows them.
    fn catalog() -> &'static [KindInfo];

    /// Parses the settings of a task of kind `kind` (a name from
    /// [`TaskKinds::catalog`]); `settings` holds the task's table without
    /// the fields common to every task.
    ///
    /// # Errors
    /// Every problem found, each naming its field.
    fn parse(kind: &str, settings: toml::Table) -> Result<Self, Vec<SettingProblem>>;

    /// The kind of these settings, from [`TaskKinds::catalog`].
    fn info(&self) -> &'static KindInfo;

    /// The kind's name.
    fn kind_name(&self) -> &'static str {
        self.info().name
    }

    /// What the kind does in a run.
    fn role(&self) -> Role {
        self.info().role
    }

    /// The report names a DAG's `[cutover]` may name; empty: any.
    fn reports() -> &'static [&'static str] {
        &[]
    }

    /// Checks that need the rest of the DAG, without I/O: e.g. that a task
    /// named as an input is one of this task's dependencies. `tasks` holds
    /// every task of the DAG that parsed, by id.
    fn check(&self, depends_on: &[String], tasks: &[(&str, &Self)]) -> Vec<SettingProblem>;
}

/// Builds the implementations of a DAG's tasks from their settings: what
/// the binary hands to the daemon and the backfill workers, which know the
/// kinds only through [`TaskKinds`].
pub trait TaskBuilder<K: TaskKinds>: Send + Sync + 'static {
    /// Builds every task of `dag`, reading as `read` says.
    fn build(
        &self,
        dag: &crate::Dag<K>,
        read: &crate::read::ReadOptions,
    ) -> std::collections::HashMap<String, std::sync::Arc<dyn Task>>;
}
