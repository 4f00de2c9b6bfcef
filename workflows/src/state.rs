//! The states of a task and of a run. The ledger stores the same enums.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::task::TaskReport;

/// Where one task of a run stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its dependencies.
    Pending,
    /// An attempt is under way.
    Running {
        /// The attempt, from 1.
        attempt: u32,
        /// When it started.
        started_at: DateTime<Utc>,
    },
    /// Its last attempt succeeded.
    Succeeded {
        /// The attempt that succeeded.
        attempt: u32,
        /// What it reported.
        report: TaskReport,
    },
    /// Its last attempt failed and no attempt is left, or the error was fatal.
    Failed {
        /// The last attempt.
        attempt: u32,
        /// The error with its causes.
        error: String,
        /// Whether the error was of a retryable kind.
        retryable: bool,
    },
    /// Not run because a dependency did not succeed.
    Skipped {
        /// The dependency that failed or was skipped.
        because: String,
    },
}

impl TaskState {
    /// The name the ledger stores: `pending`, `running`, `succeeded`,
    /// `failed` or `skipped`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running { .. } => "running",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Skipped { .. } => "skipped",
        }
    }

    /// Moves a running task to succeeded.
    pub fn succeed(&self, report: TaskReport) -> Self {
        Self::Succeeded {
            attempt: self.attempt(),
            report,
        }
    }

    /// Moves a running task to failed.
    pub fn fail(&self, error: String, retryable: bool) -> Self {
        Self::Failed {
            attempt: self.attempt(),
            error,
            retryable,
        }
    }

    /// The attempt this state belongs to; 0 before the first.
    pub fn attempt(&self) -> u32 {
        match self {
            Self::Running { attempt, .. }
            | Self::Succeeded { attempt, .. }
            | Self::Failed { attempt, .. } => *attempt,
            Self::Pending | Self::Skipped { .. } => 0,
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    /// Tasks are still running.
    Running,
    /// Every task succeeded.
    Succeeded,
    /// At least one task failed; its dependents were skipped.
    Failed {
        /// The tasks that failed.
        failed: Vec<String>,
    },
    /// Stopped before it ended (the scheduler stopped, or the process that
    /// ran it died). What it committed stays; the next run goes on from its
    /// watermarks.
    Interrupted,
}

impl RunState {
    /// The name the ledger stores.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Interrupted => "interrupted",
        }
    }
}
