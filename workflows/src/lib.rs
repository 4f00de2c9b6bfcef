//! The cutover engine and its orchestration: DAG files and their
//! validation, the runner, the run ledger, leases, schedules, the scheduler
//! daemon and the backfill workers, and the SQL dialect helpers the ledger
//! shares with the task kinds.
//!
//! This crate knows nothing of MongoDB, Polars, SQS or HTTP. It sees the
//! work a DAG does through one trait, [`task::Task`], the kinds of task
//! through one registry, [`task::TaskKinds`], and builds tasks through
//! [`task::TaskBuilder`], all implemented by the `tasks` crate.

pub mod backfill;
pub mod chunks;
pub mod daemon;
pub mod dag;
pub mod db;
pub mod duration;
pub mod keep_alive;
pub mod lease;
pub mod ledger;
pub mod metrics;
pub mod read;
pub mod redact;
pub mod runner;
pub mod schedule;
pub mod sql;
pub mod state;
pub mod task;
pub mod time;

pub use chunks::{ChunkOutcome, ChunkState, Chunks, Claim};
pub use dag::{Dag, DagError, TaskSpec};
pub use lease::{Lease, LeaseError, Leases};
pub use ledger::Ledger;
pub use read::{RateLimit, ReadOptions, Window};
pub use runner::{RunOptions, RunSummary, Runner, Totals};
pub use sql::{Backend, SqlIdent};
pub use state::{AttemptStatus, RunState, RunStatus, TaskState, Trigger};
pub use task::{
    KindInfo, Role, SettingProblem, Task, TaskBuilder, TaskContext, TaskError, TaskKinds,
    TaskReport,
};

/// A migrated in-memory SQLite warehouse with one connection, for tests.
#[cfg(test)]
pub(crate) async fn test_pool() -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::migrate!("../migrations/sqlite")
        .run(&pool)
        .await
        .unwrap();
    pool
}
