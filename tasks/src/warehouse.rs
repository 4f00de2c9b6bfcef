//! The warehouse: one connection pool to SQLite, MySQL/MariaDB or
//! PostgreSQL, its migrations, and the bookkeeping rows tasks write next to
//! the data (watermarks, quarantine).

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};
use workflows::redact::redact_url;
use workflows::{Backend, Ledger, SqlIdent};

static SQLITE: Migrator = sqlx::migrate!("../migrations/sqlite");
static MYSQL: Migrator = sqlx::migrate!("../migrations/mysql");
static POSTGRES: Migrator = sqlx::migrate!("../migrations/postgres");

/// How long connecting to the warehouse may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long opening a SQLite warehouse waits for another process's lock.
const SQLITE_LOCK_WAIT: Duration = Duration::from_secs(30);

/// A warehouse could not be reached or prepared.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The URL names no supported database.
    #[error("warehouse URL `{0}` is not sqlite:, mysql://, mariadb:// or postgres://")]
    Scheme(String),
    /// Connecting failed.
    #[error("cannot connect to the warehouse at {url}")]
    Connect {
        /// The URL without its password.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot migrate the warehouse")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("{0}")]
    Query(String, #[source] sqlx::Error),
}

/// A connected warehouse.
#[derive(Debug, Clone)]
pub struct Warehouse {
    /// The pool.
    pub pool: AnyPool,
    /// Which database family it is.
    pub backend: Backend,
    /// The URL with any password hidden, for messages.
    pub display_url: String,
}

impl Warehouse {
    /// Connects to the warehouse at `url`. A SQLite file and its directory
    /// are created when missing.
    ///
    /// # Errors
    /// The scheme is unknown or the database cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, WarehouseError> {
        // Switching a SQLite file to WAL takes an exclusive lock that SQLite's
        // busy timeout does not wait for: a process opening the file while
        // another one switches it, or holds a write, is told "database is
        // locked" at once. That passes; it is waited out for up to about
        // 30 s before it is reported.
        let mut waited = Duration::ZERO;
        loop {
            match Self::open(url).await {
                Err(WarehouseError::Connect { source, .. })
                    if Backend::from_url(url) == Some(Backend::Sqlite)
                        && workflows::db::retryable(&source)
                        && waited < SQLITE_LOCK_WAIT =>
                {
                    let pause = Duration::from_millis(200 + 100 * waited.as_secs().min(8));
                    tokio::time::sleep(pause).await;
                    waited += pause;
                }
                opened => return opened,
            }
        }
    }

    /// One attempt at [`Warehouse::connect`].
    async fn open(url: &str) -> Result<Self, WarehouseError> {
        sqlx::any::install_default_drivers();
        let backend =
            Backend::from_url(url).ok_or_else(|| WarehouseError::Scheme(redact_url(url)))?;
        let display_url = redact_url(url);
        let mut url = url.to_owned();
        if backend == Backend::Sqlite {
            let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
            let path = path.split('?').next().unwrap_or_default().to_owned();
            if !path.is_empty() && path != ":memory:" {
                if let Some(dir) = std::path::Path::new(&path).parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
            }
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
        }
        let connect_error = |source| WarehouseError::Connect {
            url: display_url.clone(),
            source,
        };
        let options = AnyConnectOptions::from_str(&url).map_err(connect_error)?;
        // One connection first, so that an unreachable server is reported in
        // seconds with its cause (refused, unknown host, denied), not as a
        // pool timeout after a minute of retries.
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            <sqlx::AnyConnection as sqlx::Connection>::connect_with(&options),
        )
        .await
        {
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
            }
            Ok(Err(e)) => return Err(connect_error(e)),
            Err(_) => {
                return Err(connect_error(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                ))))
            }
        }
        // SQLite takes one writer at a time: one connection avoids busy
        // errors between the ledger and a load's transaction.
        let max = if backend == Backend::Sqlite { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(connect_error)?;
        }
        Ok(Self {
            pool,
            backend,
            display_url,
        })
    }

    /// Applies the migrations of this backend that are not applied yet.
    ///
    /// # Errors
    /// A migration failed.
    pub async fn migrate(&self) -> Result<(), WarehouseError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE,
            Backend::MySql => &MYSQL,
            Backend::Postgres => &POSTGRES,
        };
        // Two processes starting at once on a fresh warehouse can race to
        // apply the same migration (seen on SQLite, which has no migration
        // lock, and on MariaDB, where the loser finds the winner's migration
        // row still marked unfinished). The loser fails; running again finds
        // the winner's work recorded and applies what is left. A slow winner
        // (a loaded machine, a large table altered) is waited for up to
        // about 15 s in all.
        let attempts = 12;
        let mut attempt = 1;
        loop {
            match migrator.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= attempts => return Err(WarehouseError::Migrate(e)),
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "migrating the warehouse again");
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                    attempt += 1;
                }
            }
        }
    }

    /// The run ledger in this warehouse.
    pub fn ledger(&self) -> Ledger {
        Ledger::new(self.pool.clone(), self.backend)
    }

    /// Quotes a checked identifier for this backend.
    pub fn q(&self, ident: &SqlIdent) -> String {
        self.backend.quote(ident)
    }

    /// The committed watermark (epoch ms) of an extract task.
    ///
    /// # Errors
    /// The read failed.
    pub async fn watermark(&self, dag: &str, task: &str) -> Result<Option<i64>, sqlx::Error> {
        let sql = self
            .backend
            .sql("SELECT ts_ms FROM cutover_watermarks WHERE dag = ? AND task = ?");
        let row = sqlx::query(&sql)
            .bind(dag)
            .bind(task)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<i64, _>(0)).transpose()
    }

    /// The source mark an extract recorded in the DAG's latest run before
    /// `run_id` that recorded one, with that run's state.
    ///
    /// # Errors
    /// The query failed.
    pub async fn previous_mark(
        &self,
        dag: &str,
        task: &str,
        run_id: &str,
    ) -> Result<Option<SourceMark>, sqlx::Error> {
        use workflows::sql::text;
        let sql = self.backend.sql(
            "SELECT m.run_id, m.mark, m.watermark_ms, r.state FROM cutover_source_marks m \
             JOIN cutover_runs r ON r.run_id = m.run_id \
             WHERE m.dag = ? AND m.task = ? AND m.run_id <> ? ORDER BY r.started_at DESC LIMIT 1",
        );
        let Some(row) = sqlx::query(&sql)
            .bind(dag)
            .bind(task)
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(SourceMark {
            run_id: text(&row, "run_id")?.unwrap_or_default(),
            mark: text(&row, "mark")?.unwrap_or_default(),
            watermark_ms: row.try_get("watermark_ms")?,
            succeeded: text(&row, "state")?.as_deref() == Some("succeeded"),
        }))
    }

    /// Records the source mark an extract found at its start.
    ///
    /// # Errors
    /// The write failed.
    pub async fn record_mark(
        &self,
        run_id: &str,
        dag: &str,
        task: &str,
        mark: &str,
        watermark_ms: Option<i64>,
    ) -> Result<(), sqlx::Error> {
        let sql = self.backend.sql(
            "INSERT INTO cutover_source_marks (run_id, dag, task, mark, watermark_ms) VALUES (?, ?, ?, ?, ?)",
        );
        sqlx::query(&sql)
            .bind(run_id)
            .bind(dag)
            .bind(task)
            .bind(mark)
            .bind(watermark_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The run that last wrote the watermark of a task.
    ///
    /// # Errors
    /// The query failed.
    pub async fn watermark_writer(
        &self,
        dag: &str,
        task: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        let sql = self
            .backend
            .sql("SELECT run_id FROM cutover_watermarks WHERE dag = ? AND task = ?");
        let row = sqlx::query(&sql)
            .bind(dag)
            .bind(task)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| workflows::sql::text(&r, "run_id").map(Option::unwrap_or_default))
            .transpose()
    }

    /// Counts the rows of a table.
    ///
    /// # Errors
    /// The query failed.
    pub async fn count(&self, table: &SqlIdent) -> Result<i64, sqlx::Error> {
        let sql = format!("SELECT COUNT(*) FROM {}", self.q(table));
        sqlx::query(&sql)
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>(0)
    }
}

/// The source mark an extract recorded in an earlier run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMark {
    /// The run.
    pub run_id: String,
    /// The source's mark and the DAG's definition.
    pub mark: String,
    /// The watermark the extract read from.
    pub watermark_ms: Option<i64>,
    /// Whether that run succeeded.
    pub succeeded: bool,
}

/// What one column of a warehouse table can hold, as its definition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// The column's name.
    pub name: String,
    /// The most characters a string may have (`VARCHAR(n)`).
    pub max_chars: Option<u64>,
    /// The most bytes a string may have (MySQL's `TEXT` family).
    pub max_bytes: Option<u64>,
    /// The range of an integer column.
    pub int_range: Option<(i64, i64)>,
    /// Whether the column refuses null.
    pub not_null: bool,
    /// Whether strings may hold NUL characters (not in PostgreSQL).
    pub nul_ok: bool,
}

impl ColumnInfo {
    fn new(
        name: String,
        backend: Backend,
        data_type: &str,
        length: Option<i64>,
        octets: Option<i64>,
        not_null: bool,
        unsigned: bool,
    ) -> Self {
        let ty = data_type.to_ascii_lowercase();
        let signed = |bits: u32| -> (i64, i64) {
            if unsigned {
                (
                    0,
                    if bits >= 64 {
                        i64::MAX
                    } else {
                        (1i64 << bits) - 1
                    },
                )
            } else if bits >= 64 {
                (i64::MIN, i64::MAX)
            } else {
                (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
            }
        };
        let int_range = match ty.as_str() {
            "tinyint" => Some(signed(8)),
            "smallint" | "int2" => Some(signed(16)),
            "mediumint" => Some(signed(24)),
            "int" | "integer" | "int4" if backend != Backend::Sqlite => Some(signed(32)),
            _ => None,
        };
        let text_family = matches!(ty.as_str(), "tinytext" | "text" | "mediumtext" | "longtext");
        let char_family = matches!(
            ty.as_str(),
            "varchar" | "char" | "character varying" | "character"
        );
        Self {
            name,
            max_chars: if char_family {
                length.map(|n| n as u64)
            } else {
                None
            },
            max_bytes: if text_family && backend == Backend::MySql {
                octets.map(|n| n as u64)
            } else {
                None
            },
            int_range,
            not_null,
            nul_ok: backend != Backend::Postgres,
        }
    }
}

impl Warehouse {
    /// The columns of `table` and what each can hold; empty when the table
    /// does not exist.
    ///
    /// # Errors
    /// The catalog could not be read.
    pub async fn columns(&self, table: &str) -> Result<Vec<ColumnInfo>, sqlx::Error> {
        use workflows::sql::text;
        let b = self.backend;
        let table_marker = b.markers().next();
        let sql = match b {
            Backend::MySql => format!("SELECT COLUMN_NAME AS name, DATA_TYPE AS data_type, \
                CAST(CHARACTER_MAXIMUM_LENGTH AS SIGNED) AS len, CAST(CHARACTER_OCTET_LENGTH AS SIGNED) AS octets, \
                IS_NULLABLE AS nullable, COLUMN_TYPE AS column_type, EXTRA AS extra \
                FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = {table_marker}"),
            Backend::Postgres => format!("SELECT column_name::text AS name, data_type::text AS data_type, \
                character_maximum_length::bigint AS len, character_octet_length::bigint AS octets, \
                is_nullable::text AS nullable, data_type::text AS column_type, \
                CASE WHEN is_generated = 'ALWAYS' THEN 'GENERATED' ELSE '' END AS extra \
                FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = {table_marker}"),
            Backend::Sqlite => format!("SELECT name, type AS data_type, NULL AS len, NULL AS octets, \
                CASE WHEN \"notnull\" = 1 THEN 'NO' ELSE 'YES' END AS nullable, type AS column_type, \
                CASE WHEN hidden <> 0 THEN 'GENERATED' ELSE '' END AS extra \
                FROM pragma_table_xinfo({table_marker})"),
        };
        let rows = sqlx::query(&sql).bind(table).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let name = text(r, "name")?.unwrap_or_default();
            let extra = text(r, "extra")?.unwrap_or_default();
            if extra.to_ascii_uppercase().contains("GENERATED") {
                continue;
            }
            let data_type = text(r, "data_type")?.unwrap_or_default();
            // SQLite declares types freely: `VARCHAR(64)` is only a name.
            let data_type = data_type
                .split('(')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            let column_type = text(r, "column_type")?.unwrap_or_default();
            let len: Option<i64> = r.try_get("len").ok().flatten();
            let octets: Option<i64> = r.try_get("octets").ok().flatten();
            let not_null = text(r, "nullable")?.is_some_and(|n| n.eq_ignore_ascii_case("NO"));
            out.push(ColumnInfo::new(
                name,
                b,
                &data_type,
                len,
                octets,
                not_null,
                column_type.to_ascii_lowercase().contains("unsigned"),
            ));
        }
        Ok(out)
    }

    /// The unique keys of `table` (its primary key and unique indexes),
    /// each as its column names in order.
    ///
    /// # Errors
    /// The catalog could not be read.
    pub async fn unique_keys(&self, table: &str) -> Result<Vec<Vec<String>>, sqlx::Error> {
        use workflows::sql::text;
        let table_marker = self.backend.markers().next();
        let sql = match self.backend {
            Backend::MySql => format!(
                "SELECT INDEX_NAME AS idx, COLUMN_NAME AS col FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = {table_marker} AND NON_UNIQUE = 0 \
                 ORDER BY INDEX_NAME, SEQ_IN_INDEX"
            ),
            Backend::Postgres => format!(
                "SELECT ic.relname::text AS idx, a.attname::text AS col \
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
                 JOIN pg_class ic ON ic.oid = i.indexrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, pos) ON true \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
                 WHERE i.indisunique AND i.indpred IS NULL AND n.nspname = current_schema() \
                 AND c.relname = {table_marker} ORDER BY ic.relname, k.pos"
            ),
            Backend::Sqlite => format!(
                "SELECT il.name AS idx, ii.name AS col FROM pragma_index_list({table_marker}) il \
                 JOIN pragma_index_info(il.name) ii WHERE il.\"unique\" = 1 AND il.partial = 0 \
                 ORDER BY il.name, ii.seqno"
            ),
        };
        let rows = sqlx::query(&sql).bind(table).fetch_all(&self.pool).await?;
        let mut keys: Vec<(String, Vec<String>)> = Vec::new();
        for r in &rows {
            let idx = text(r, "idx")?.unwrap_or_default();
            let col = text(r, "col")?.unwrap_or_default();
            match keys.last_mut() {
                Some((name, cols)) if *name == idx => cols.push(col),
                _ => keys.push((idx, vec![col])),
            }
        }
        let mut keys: Vec<Vec<String>> = keys.into_iter().map(|(_, cols)| cols).collect();
        if self.backend == Backend::Sqlite {
            // An INTEGER PRIMARY KEY is the rowid: no index lists it.
            let pk: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk",
            )
            .bind(table)
            .fetch_all(&self.pool)
            .await?;
            if !pk.is_empty() && !keys.contains(&pk) {
                keys.push(pk);
            }
        }
        Ok(keys)
    }
}

/// Writes or advances a watermark inside a transaction; it never moves back.
///
/// # Errors
/// The write failed.
pub async fn advance_watermark(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    dag: &str,
    task: &str,
    ts_ms: i64,
    run_id: &str,
) -> Result<(), sqlx::Error> {
    let now = workflows::time::timestamp(chrono::Utc::now());
    let values = backend.markers().list(5);
    let upsert = match backend {
        Backend::MySql => format!(
            "INSERT INTO cutover_watermarks (dag, task, ts_ms, run_id, updated_at) VALUES ({values}) \
             ON DUPLICATE KEY UPDATE run_id = IF(VALUES(ts_ms) > ts_ms, VALUES(run_id), run_id), \
             updated_at = IF(VALUES(ts_ms) > ts_ms, VALUES(updated_at), updated_at), \
             ts_ms = GREATEST(ts_ms, VALUES(ts_ms))"
        ),
        Backend::Sqlite | Backend::Postgres => format!(
            "INSERT INTO cutover_watermarks (dag, task, ts_ms, run_id, updated_at) VALUES ({values}) \
             ON CONFLICT (dag, task) DO UPDATE SET ts_ms = excluded.ts_ms, run_id = excluded.run_id, updated_at = excluded.updated_at \
             WHERE excluded.ts_ms > cutover_watermarks.ts_ms"
        ),
    };
    sqlx::query(&upsert)
        .bind(dag)
        .bind(task)
        .bind(ts_ms)
        .bind(run_id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// What one committed segment of a load did, for [`record_commit`].
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The DAG.
    pub dag: &'a str,
    /// The load task.
    pub task: &'a str,
    /// The segment number.
    pub segment: u32,
    /// Rows offered to the merge.
    pub rows_offered: u64,
    /// Rows the merge changed.
    pub rows_changed: u64,
    /// The watermark the segment completes, if any.
    pub watermark_ms: Option<i64>,
}

/// Records a committed segment in `cutover_commits`, inside the segment's
/// own transaction.
///
/// # Errors
/// The insert failed.
pub async fn record_commit(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    c: Commit<'_>,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO cutover_commits (run_id, dag, task, segment, rows_offered, rows_changed, watermark_ms, committed_at) \
         VALUES ({})",
        backend.markers().list(8)
    );
    sqlx::query(&sql)
        .bind(c.run_id)
        .bind(c.dag)
        .bind(c.task)
        .bind(i64::from(c.segment))
        .bind(c.rows_offered as i64)
        .bind(c.rows_changed as i64)
        .bind(c.watermark_ms)
        .bind(workflows::time::timestamp(chrono::Utc::now()))
        .execute(conn)
        .await?;
    Ok(())
}
