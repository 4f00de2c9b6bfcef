//! The states of a task and of a run, and every state or kind cutover
//! stores as text, each with one mapping to and from its SQL text.

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
    /// The state without its data, as the ledger stores it.
    pub fn status(&self) -> AttemptStatus {
        match self {
            Self::Pending => AttemptStatus::Pending,
            Self::Running { .. } => AttemptStatus::Running,
            Self::Succeeded { .. } => AttemptStatus::Succeeded,
            Self::Failed { .. } => AttemptStatus::Failed,
            Self::Skipped { .. } => AttemptStatus::Skipped,
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
    /// The state without its data, as the ledger stores it.
    pub fn status(&self) -> RunStatus {
        match self {
            Self::Running => RunStatus::Running,
            Self::Succeeded => RunStatus::Succeeded,
            Self::Failed { .. } => RunStatus::Failed,
            Self::Interrupted => RunStatus::Interrupted,
        }
    }
}

/// A stored value the table holds as text that none of its values maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a known {what}")]
pub struct UnknownState {
    /// What kind of value it should be, e.g. `run status`.
    pub what: &'static str,
    /// The text found.
    pub text: String,
}

/// Declares an enum stored as text in cutover's tables, with its one
/// mapping each way: `as_str` (and `Display`, `Serialize`) to the text,
/// `FromStr` back, and [`read`] from a row.
#[macro_export]
macro_rules! stored_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident as $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The text the tables store.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::state::UnknownState;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok(Self::$variant), )+
                    other => Err($crate::state::UnknownState {
                        what: $what,
                        text: other.to_owned(),
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

/// Reads a stored enum from the text column `column` of a row.
///
/// # Errors
/// The column is missing, or holds a text no value maps to.
pub fn read<T>(row: &sqlx::any::AnyRow, column: &str) -> Result<T, sqlx::Error>
where
    T: std::str::FromStr<Err = UnknownState>,
{
    let text = crate::sql::text(row, column)?.unwrap_or_default();
    text.parse()
        .map_err(|e: UnknownState| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(e),
        })
}

stored_enum! {
    /// How a run stands, as `cutover_runs.state` stores it.
    pub enum RunStatus as "run state" {
        /// Tasks are still running.
        Running = "running",
        /// Every task succeeded.
        Succeeded = "succeeded",
        /// At least one task failed.
        Failed = "failed",
        /// Stopped before it ended.
        Interrupted = "interrupted",
    }
}

stored_enum! {
    /// How a task attempt stands, as `cutover_task_attempts.state` stores it.
    pub enum AttemptStatus as "attempt state" {
        /// Waiting for its dependencies.
        Pending = "pending",
        /// Under way.
        Running = "running",
        /// Succeeded.
        Succeeded = "succeeded",
        /// Failed.
        Failed = "failed",
        /// Not run because a dependency did not succeed.
        Skipped = "skipped",
        /// Stopped with its run (`cutover_runs` says why).
        Interrupted = "interrupted",
    }
}

stored_enum! {
    /// What started a run, as `cutover_runs.trigger_kind` stores it.
    pub enum Trigger as "run trigger" {
        /// `cutover run`.
        Manual = "manual",
        /// The scheduler daemon, at a schedule tick.
        Schedule = "schedule",
        /// A chunk of `cutover backfill`.
        Backfill = "backfill",
        /// `cutover demo`.
        Demo = "demo",
        /// A micro-batch of the live feed (`cutover consume`).
        Feed = "sqs",
        /// `cutover quarantine replay`.
        Replay = "replay",
    }
}
