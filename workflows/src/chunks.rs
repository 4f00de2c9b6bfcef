//! The chunk ledger of backfills (`cutover_backfill_chunks`): a backfill's
//! range of event time cut into chunks, each claimed by one worker at a
//! time, across every process that shares the warehouse.
//!
//! A worker claims the first chunk that is pending or whose claim expired;
//! on MySQL and PostgreSQL the claim reads it with `FOR UPDATE SKIP LOCKED`,
//! so concurrent workers pass over each other's rows instead of waiting, and
//! on SQLite (one writer) a compare-and-set update does. A claim adds one to
//! the chunk's attempts, which is the claim's token: renewing it and marking
//! the chunk done check the token, so a worker whose claim expired and was
//! taken over cannot mark the chunk.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use sqlx::{AnyPool, Row};

use crate::read::Window;
use crate::sql::{text, Backend};
use crate::state::read;
use crate::time::timestamp;

crate::stored_enum! {
    /// Where a chunk stands, as `cutover_backfill_chunks.state` stores it.
    pub enum ChunkState as "chunk state" {
        /// Not claimed yet, or failed and to be tried again.
        Pending = "pending",
        /// Claimed by a worker (whose claim may have expired).
        Running = "running",
        /// Loaded.
        Done = "done",
        /// Its run failed; the next run of the backfill tries it again.
        Failed = "failed",
    }
}

/// How a claimed chunk's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Loaded: the run and the events it read.
    Done {
        /// Events its extracts read.
        events: i64,
    },
    /// Its run failed.
    Failed {
        /// The first error.
        error: String,
    },
}

/// A chunk of a backfill: `[from_ms, until_ms)` of event time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chunk {
    /// The first instant (epoch ms).
    pub from_ms: i64,
    /// The first instant after it.
    pub until_ms: i64,
    /// Where it stands.
    pub state: ChunkState,
    /// Who claimed it last.
    pub holder: Option<String>,
    /// Claims so far; the current claim's token.
    pub attempts: i64,
    /// The run that did it, once done.
    pub run_id: Option<String>,
    /// Events its run read, once done.
    pub events: i64,
    /// Why its last run failed.
    pub error: Option<String>,
}

/// A chunk claimed by one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The chunk's start (epoch ms).
    pub from_ms: i64,
    /// The chunk's end (epoch ms).
    pub until_ms: i64,
    /// The claim's token (the chunk's attempts).
    pub token: i64,
}

/// The chunk ledger failed.
#[derive(Debug, thiserror::Error)]
#[error("backfill chunks of {backfill}: {what}")]
pub struct ChunkError {
    backfill: String,
    what: &'static str,
    #[source]
    source: sqlx::Error,
}

impl ChunkError {
    /// The database's error.
    pub fn cause(&self) -> &sqlx::Error {
        &self.source
    }
}

/// Cuts `[from_ms, until_ms)` into chunks of `chunk`, the last one shorter.
pub fn plan(from_ms: i64, until_ms: i64, chunk: Duration) -> Vec<Window> {
    let step = (chunk.as_millis() as i64).max(1);
    let mut out = Vec::new();
    let mut at = from_ms;
    while at < until_ms {
        let end = at.saturating_add(step).min(until_ms);
        out.push(Window {
            from_ms: at,
            until_ms: end,
        });
        at = end;
    }
    out
}

/// The chunks of one backfill.
#[derive(Debug, Clone)]
pub struct Chunks {
    pool: AnyPool,
    backend: Backend,
    /// The backfill's key: DAG, range and chunk size.
    pub backfill: String,
    /// Its DAG.
    pub dag: String,
    /// Who claims for this process.
    pub holder: String,
}

impl Chunks {
    /// The chunks of the backfill of `dag` keyed `backfill`, claimed as
    /// `holder`.
    pub fn new(pool: AnyPool, backend: Backend, backfill: &str, dag: &str, holder: &str) -> Self {
        Self {
            pool,
            backend,
            backfill: backfill.to_owned(),
            dag: dag.to_owned(),
            holder: holder.to_owned(),
        }
    }

    fn err(&self, what: &'static str) -> impl FnOnce(sqlx::Error) -> ChunkError + '_ {
        move |source| ChunkError {
            backfill: self.backfill.clone(),
            what,
            source,
        }
    }

    /// Records the planned chunks that are not recorded yet, and makes the
    /// failed ones pending again, so that this run of the backfill tries
    /// them once more.
    ///
    /// # Errors
    /// The warehouse failed.
    pub async fn prepare(&self, planned: &[Window]) -> Result<(), ChunkError> {
        let insert = match self.backend {
            Backend::Sqlite => "INSERT OR IGNORE INTO",
            Backend::MySql => "INSERT IGNORE INTO",
            Backend::Postgres => "INSERT INTO",
        };
        let conflict = match self.backend {
            Backend::Postgres => " ON CONFLICT (backfill, from_ms) DO NOTHING",
            _ => "",
        };
        let sql = format!(
            "{insert} cutover_backfill_chunks (backfill, dag, from_ms, until_ms, state) VALUES ({}){conflict}",
            self.backend.markers().list(5)
        );
        let mut tx = self.pool.begin().await.map_err(self.err("recording"))?;
        for Window { from_ms, until_ms } in planned {
            sqlx::query(&sql)
                .bind(&self.backfill)
                .bind(&self.dag)
                .bind(from_ms)
                .bind(until_ms)
                .bind(ChunkState::Pending.as_str())
                .execute(&mut *tx)
                .await
                .map_err(self.err("recording"))?;
        }
        tx.commit().await.map_err(self.err("recording"))?;
        let retry = self
            .backend
            .sql("UPDATE cutover_backfill_chunks SET state = ? WHERE backfill = ? AND state = ?");
        sqlx::query(&retry)
            .bind(ChunkState::Pending.as_str())
            .bind(&self.backfill)
            .bind(ChunkState::Failed.as_str())
            .execute(&self.pool)
            .await
            .map_err(self.err("retrying failed chunks"))?;
        Ok(())
    }

    /// Every chunk, in time order.
    ///
    /// # Errors
    /// The warehouse failed.
    pub async fn list(&self) -> Result<Vec<Chunk>, ChunkError> {
        let sql = format!(
            "SELECT from_ms, until_ms, state, holder, attempts, run_id, events, error FROM cutover_backfill_chunks WHERE backfill = {} ORDER BY from_ms",
            self.backend.markers().next()
        );
        let rows = sqlx::query(&sql)
            .bind(&self.backfill)
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("reading"))?;
        rows.iter()
            .map(|r| {
                Ok(Chunk {
                    from_ms: r.try_get("from_ms")?,
                    until_ms: r.try_get("until_ms")?,
                    state: read(r, "state")?,
                    holder: text(r, "holder")?,
                    attempts: r.try_get("attempts")?,
                    run_id: text(r, "run_id")?,
                    events: r.try_get("events")?,
                    error: text(r, "error")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(self.err("reading"))
    }

    /// Claims the first chunk that is pending or whose claim expired before
    /// `now_ms`, for `ttl`; `None` when no chunk is free.
    ///
    /// # Errors
    /// The warehouse failed.
    pub async fn claim(&self, ttl: Duration, now_ms: i64) -> Result<Option<Claim>, ChunkError> {
        // What a claim sets, and which chunks are free to claim.
        const SET: &str =
            "SET state = ?, holder = ?, expires_ms = ?, attempts = attempts + 1, error = NULL";
        const FREE: &str = "backfill = ? AND (state = ? OR (state = ? AND expires_ms < ?))";
        let expires_ms = now_ms + ttl.as_millis() as i64;
        let running = ChunkState::Running.as_str();
        let claim = |row: &sqlx::any::AnyRow| -> Result<Claim, sqlx::Error> {
            Ok(Claim {
                from_ms: row.try_get("from_ms")?,
                until_ms: row.try_get("until_ms")?,
                token: row.try_get("attempts")?,
            })
        };
        if self.backend == Backend::Sqlite {
            // One statement: SQLite runs it alone, so no other writer comes
            // between the choice of the chunk and its update.
            let sql = format!(
                "UPDATE cutover_backfill_chunks {SET} WHERE backfill = ? AND from_ms = \
                 (SELECT from_ms FROM cutover_backfill_chunks WHERE {FREE} ORDER BY from_ms LIMIT 1) \
                 RETURNING from_ms, until_ms, attempts"
            );
            let row = sqlx::query(&sql)
                .bind(running)
                .bind(&self.holder)
                .bind(expires_ms)
                .bind(&self.backfill)
                .bind(&self.backfill)
                .bind(ChunkState::Pending.as_str())
                .bind(running)
                .bind(now_ms)
                .fetch_optional(&self.pool)
                .await
                .map_err(self.err("claiming"))?;
            return row
                .as_ref()
                .map(claim)
                .transpose()
                .map_err(self.err("claiming"));
        }
        // MySQL/PostgreSQL: lock the first free row no other worker has
        // locked, passing over locked ones instead of waiting for them.
        let pick = self.backend.sql(&format!(
            "SELECT from_ms FROM cutover_backfill_chunks WHERE {FREE} ORDER BY from_ms LIMIT 1 FOR UPDATE SKIP LOCKED"
        ));
        let take = self.backend.sql(&format!(
            "UPDATE cutover_backfill_chunks {SET} WHERE backfill = ? AND from_ms = ?"
        ));
        let read = self.backend.sql("SELECT from_ms, until_ms, attempts FROM cutover_backfill_chunks WHERE backfill = ? AND from_ms = ?");
        let mut tx = self.pool.begin().await.map_err(self.err("claiming"))?;
        let picked = sqlx::query(&pick)
            .bind(&self.backfill)
            .bind(ChunkState::Pending.as_str())
            .bind(running)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await
            .map_err(self.err("claiming"))?;
        let Some(row) = picked else {
            return Ok(None);
        };
        let from_ms: i64 = row.try_get(0).map_err(self.err("claiming"))?;
        sqlx::query(&take)
            .bind(running)
            .bind(&self.holder)
            .bind(expires_ms)
            .bind(&self.backfill)
            .bind(from_ms)
            .execute(&mut *tx)
            .await
            .map_err(self.err("claiming"))?;
        let row = sqlx::query(&read)
            .bind(&self.backfill)
            .bind(from_ms)
            .fetch_one(&mut *tx)
            .await
            .map_err(self.err("claiming"))?;
        tx.commit().await.map_err(self.err("claiming"))?;
        claim(&row).map(Some).map_err(self.err("claiming"))
    }

    /// How many chunks are still to do: pending, or claimed by a worker
    /// (which may yet fail or die, and its claim expire).
    ///
    /// # Errors
    /// The warehouse failed.
    pub async fn unfinished(&self) -> Result<i64, ChunkError> {
        let sql = self.backend.sql(
            "SELECT COUNT(*) FROM cutover_backfill_chunks WHERE backfill = ? AND state IN (?, ?)",
        );
        sqlx::query(&sql)
            .bind(&self.backfill)
            .bind(ChunkState::Pending.as_str())
            .bind(ChunkState::Running.as_str())
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(self.err("counting"))
    }

    /// Extends a claim to `ttl` from `now_ms`; `false` when it is no longer
    /// this worker's.
    ///
    /// # Errors
    /// The warehouse failed.
    pub async fn renew(
        &self,
        claim: &Claim,
        ttl: Duration,
        now_ms: i64,
    ) -> Result<bool, ChunkError> {
        let sql = self.backend.sql("UPDATE cutover_backfill_chunks SET expires_ms = ? WHERE backfill = ? AND from_ms = ? AND attempts = ? AND holder = ? AND state = ?");
        let done = sqlx::query(&sql)
            .bind(now_ms + ttl.as_millis() as i64)
            .bind(&self.backfill)
            .bind(claim.from_ms)
            .bind(claim.token)
            .bind(&self.holder)
            .bind(ChunkState::Running.as_str())
            .execute(&self.pool)
            .await
            .map_err(self.err("renewing a claim"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the end of a claimed chunk: `done` with its run and events,
    /// or `failed` with the error; `false` when the claim was no longer
    /// this worker's (nothing is recorded then).
    ///
    /// # Errors
    /// The warehouse failed.
    pub async fn finish(
        &self,
        claim: &Claim,
        run_id: &str,
        outcome: &ChunkOutcome,
    ) -> Result<bool, ChunkError> {
        let (state, events, error) = match outcome {
            ChunkOutcome::Done { events } => (ChunkState::Done, *events, None),
            ChunkOutcome::Failed { error } => (ChunkState::Failed, 0, Some(error.as_str())),
        };
        let sql = self.backend.sql("UPDATE cutover_backfill_chunks SET state = ?, run_id = ?, events = ?, error = ?, done_at = ?, expires_ms = 0 \
             WHERE backfill = ? AND from_ms = ? AND attempts = ? AND holder = ? AND state = ?");
        let done = sqlx::query(&sql)
            .bind(state.as_str())
            .bind(run_id)
            .bind(events)
            .bind(error)
            .bind(timestamp(Utc::now()))
            .bind(&self.backfill)
            .bind(claim.from_ms)
            .bind(claim.token)
            .bind(&self.holder)
            .bind(ChunkState::Running.as_str())
            .execute(&self.pool)
            .await
            .map_err(self.err("recording a chunk's end"))?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn done(events: i64) -> ChunkOutcome {
        ChunkOutcome::Done { events }
    }

    #[test]
    fn a_range_is_cut_into_whole_chunks_and_a_shorter_last_one() {
        let day = Duration::from_secs(86_400);
        let d = 86_400_000;
        let w = |from_ms, until_ms| Window { from_ms, until_ms };
        assert_eq!(plan(0, 3 * d, day), [w(0, d), w(d, 2 * d), w(2 * d, 3 * d)]);
        assert_eq!(plan(0, d + 5, day), [w(0, d), w(d, d + 5)]);
        assert!(plan(d, d, day).is_empty());
    }

    #[tokio::test]
    async fn workers_claim_each_chunk_once_and_a_dead_workers_chunk_after_its_expiry() {
        let pool = crate::test_pool().await;
        let a = Chunks::new(
            pool.clone(),
            Backend::Sqlite,
            "views 0..3 1ms",
            "views",
            "a",
        );
        let b = Chunks {
            holder: "b".into(),
            ..a.clone()
        };
        a.prepare(&plan(0, 3, Duration::from_millis(1)))
            .await
            .unwrap();
        // Preparing again (a rerun) adds nothing.
        b.prepare(&plan(0, 3, Duration::from_millis(1)))
            .await
            .unwrap();
        let c0 = a.claim(TTL, 1_000).await.unwrap().unwrap();
        let c1 = b.claim(TTL, 1_000).await.unwrap().unwrap();
        assert_eq!((c0.from_ms, c1.from_ms), (0, 1));
        assert!(a.finish(&c0, "r0", &done(7)).await.unwrap());
        // `b` dies holding chunk 1; chunk 2 is claimed, then, once b's claim
        // has expired, chunk 1 again, with the next token.
        let c2 = a.claim(TTL, 2_000).await.unwrap().unwrap();
        assert_eq!(c2.from_ms, 2);
        assert!(a.claim(TTL, 2_000).await.unwrap().is_none());
        assert_eq!(a.unfinished().await.unwrap(), 2);
        let again = a.claim(TTL, 11_001).await.unwrap().unwrap();
        assert_eq!((again.from_ms, again.token), (1, 2));
        // b comes back: its claim is gone.
        assert!(!b.renew(&c1, TTL, 11_002).await.unwrap());
        assert!(!b.finish(&c1, "rb", &done(1)).await.unwrap());
        assert!(a.finish(&again, "r1", &done(5)).await.unwrap());
        assert!(a
            .finish(
                &c2,
                "r2",
                &ChunkOutcome::Failed {
                    error: "boom".into()
                }
            )
            .await
            .unwrap());
        let states: Vec<(ChunkState, Option<String>)> = a
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.state, c.run_id))
            .collect();
        assert_eq!(
            states,
            [
                (ChunkState::Done, Some("r0".into())),
                (ChunkState::Done, Some("r1".into())),
                (ChunkState::Failed, Some("r2".into())),
            ]
        );
        // A rerun tries the failed chunk again, and only it.
        a.prepare(&plan(0, 3, Duration::from_millis(1)))
            .await
            .unwrap();
        assert_eq!(a.claim(TTL, 20_000).await.unwrap().unwrap().from_ms, 2);
        assert!(a.claim(TTL, 20_000).await.unwrap().is_none());
    }
}
