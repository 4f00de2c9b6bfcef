//! The cutover engine: DAG files and their validation, the runner, the run
//! ledger and the SQL dialect helpers the ledger shares with the task kinds.
//!
//! This crate knows nothing of MongoDB, Polars or SQS. It sees the work a DAG
//! does through one trait, [`task::Task`], and the kinds of task through one
//! registry, [`task::TaskKinds`], both implemented by the `tasks` crate.

pub mod chunks;
pub mod dag;
pub mod lease;
pub mod ledger;
pub mod metrics;
pub mod redact;
pub mod runner;
pub mod schedule;
pub mod sql;
pub mod state;
pub mod task;

pub use chunks::{Chunks, Claim};
pub use dag::{Dag, DagError, TaskSpec};
pub use lease::{Lease, LeaseError, Leases};
pub use ledger::Ledger;
pub use runner::{RunOptions, RunSummary, Runner, Totals};
pub use sql::{Backend, SqlIdent};
pub use state::{RunState, TaskState};
pub use task::{
    KindInfo, Role, SettingProblem, Task, TaskContext, TaskError, TaskKinds, TaskReport,
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
