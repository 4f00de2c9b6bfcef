//! Kinds of database errors, from their types and codes, never from their
//! messages: whether one may pass on its own, is a unique-key violation, or
//! was caused by the data a statement carried.

/// A database error's code: MySQL's error number (its SQLSTATE, such as
/// `23000` for every constraint, says too little), PostgreSQL's SQLSTATE,
/// SQLite's extended result code.
fn code(db: &dyn sqlx::error::DatabaseError) -> Option<String> {
    match db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        Some(my) => Some(my.number().to_string()),
        None => db.code().map(std::borrow::Cow::into_owned),
    }
}

/// Whether a database error may pass on its own: a connection or pool
/// problem, a deadlock, a lock or busy timeout.
pub fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => matches!(
            code(db.as_ref()).as_deref(),
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
            code(db.as_ref()).as_deref(),
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
            let code = code(db.as_ref());
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
