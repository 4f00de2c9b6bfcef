//! Turning driver errors into task errors: retryable or fatal by the error's
//! type and code, never by its message.

use workflows::TaskError;

/// Whether a database error may pass on its own: a connection or pool
/// problem, a deadlock, a lock or busy timeout.
pub fn sqlx_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // MySQL/MariaDB: lock wait timeout, deadlock, server gone / lost.
            Some("1205" | "1213" | "2006" | "2013")
            // PostgreSQL: serialization failure, deadlock, connection exceptions,
            // admin shutdown, cannot connect now.
            | Some("40001" | "40P01" | "08000" | "08003" | "08006" | "57P01" | "57P03")
            // SQLite: busy, locked.
            | Some("5" | "6" | "517" | "262")
        ),
        _ => false,
    }
}

/// Whether a database error is a unique-key violation.
pub fn unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // PostgreSQL, MySQL/MariaDB, SQLite (unique, primary key).
            Some("23505" | "1062" | "2067" | "1555")
        ),
        _ => false,
    }
}

/// Whether the database refused a statement because of the data it
/// carried (a value too long or out of range, a character it cannot
/// store, a null or check constraint, an index entry too large, a packet
/// too large), so that loading the other rows without it may succeed.
pub fn data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or_default();
            matches!(
                code,
                // MySQL/MariaDB: data too long, out of range, incorrect
                // string or value, data truncated, cannot be null, check
                // constraint, BIGINT out of range. (Not "packet too large":
                // the server closes the connection after it; loads keep
                // statements and rows under the limit instead.)
                "1406" | "1264" | "1366" | "1292" | "1265" | "1048" | "3819" | "4025"
                    | "1690" | "1367"
                // SQLite: constraint (check, not null), too big, mismatch.
                    | "19" | "275" | "1299" | "18" | "20"
                // PostgreSQL: not null, check, program limit (index row
                // too large).
                    | "23502" | "23514" | "54000"
            ) || code.starts_with("22")
        }
        _ => false,
    }
}

/// A database error's own message, without the driver's framing.
pub fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (code {code})", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

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
    let retryable = sqlx_retryable(&e);
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
