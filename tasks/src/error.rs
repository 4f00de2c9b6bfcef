//! Turning driver errors into task errors: retryable or fatal by the error's
//! type and code, never by its message.

use workflows::db::{retryable, unique_violation};
use workflows::TaskError;

/// A task error from a failed merge statement. Merges insert only keys they
/// found missing, so a unique-key violation means another load (a backfill
/// worker, the feed, a nightly run) inserted the same key meanwhile: the
/// attempt is retryable, and the retry finds the row and merges into it.
pub fn from_merge(what: impl Into<String>, e: sqlx::Error) -> TaskError {
    if unique_violation(&e) {
        return TaskError::Retryable(Box::new(Context {
            what: format!("{} (a concurrent load inserted the same key)", what.into()),
            source: Box::new(e),
        }));
    }
    from_sqlx(what, e)
}

/// A task error from a database error, with `what` saying what was being done.
pub fn from_sqlx(what: impl Into<String>, e: sqlx::Error) -> TaskError {
    let retryable = retryable(&e);
    let err = Context {
        what: what.into(),
        source: Box::new(e),
    };
    if retryable {
        TaskError::Retryable(Box::new(err))
    } else {
        TaskError::Fatal(Box::new(err))
    }
}

/// A task error from an I/O error: interruptions and timeouts are retryable.
pub fn from_io(what: impl Into<String>, e: std::io::Error) -> TaskError {
    use std::io::ErrorKind::*;
    let retryable = matches!(
        e.kind(),
        Interrupted | TimedOut | WouldBlock | ConnectionReset | ConnectionAborted
    );
    let err = Context {
        what: what.into(),
        source: Box::new(e),
    };
    if retryable {
        TaskError::Retryable(Box::new(err))
    } else {
        TaskError::Fatal(Box::new(err))
    }
}

/// An error with a line of context in front of its source.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct Context {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl Context {
    /// Wraps `source` with `what`.
    pub fn new(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            what: what.into(),
            source: Box::new(source),
        }
    }
}
