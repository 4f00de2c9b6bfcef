//! Leases in the warehouse (`cutover_leases`): at most one active run per
//! DAG across every process that shares the warehouse.
//!
//! A holder takes a DAG's lease when it has expired or is its own; taking it
//! adds one to the DAG's token (a fencing token). The holder renews the lease
//! while it runs, and every commit it makes checks, in the committing
//! transaction and under a lock on the lease row, that the token is still its
//! own and unexpired ([`Leases::check`]). A holder that lost its lease (it was
//! paused or cut off past the expiry and another took over) can therefore no
//! longer commit: its check fails and its transaction rolls back.

use std::time::Duration;

use sqlx::AnyConnection;
use sqlx::{AnyPool, Row};

use crate::sql::{text, Backend};

/// A lease held on one DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The DAG.
    pub dag: String,
    /// Who holds it (a process's id).
    pub holder: String,
    /// The fencing token: one more than the previous holder's.
    pub token: i64,
    /// When it expires unless renewed (epoch ms).
    pub expires_ms: i64,
}

/// A lease could not be taken, kept or checked.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The warehouse failed.
    #[error("lease of dag {dag}: {source}")]
    Database {
        /// The DAG.
        dag: String,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// The lease is no longer this holder's: it expired, or another holder
    /// took it. Nothing may be committed under it.
    #[error("lease of dag {dag} lost: token {token} is no longer current (now {current}, held by `{holder}`, {state}); this run may no longer commit")]
    Lost {
        /// The DAG.
        dag: String,
        /// The token this holder had.
        token: i64,
        /// The token in the warehouse.
        current: i64,
        /// Who holds the current token.
        holder: String,
        /// `expired` or `active`.
        state: &'static str,
    },
}

/// The leases of one warehouse.
#[derive(Debug, Clone)]
pub struct Leases {
    pool: AnyPool,
    backend: Backend,
}

impl Leases {
    /// The leases in a migrated warehouse.
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        Self { pool, backend }
    }

    fn db(dag: &str) -> impl FnOnce(sqlx::Error) -> LeaseError + '_ {
        move |source| LeaseError::Database {
            dag: dag.to_owned(),
            source,
        }
    }

    /// Takes the lease of `dag` for `ttl` from `now_ms` if it is free
    /// (expired, never taken, or already `holder`'s); `None` when another
    /// holder has it.
    ///
    /// # Errors
    /// The warehouse failed.
    pub async fn acquire(
        &self,
        dag: &str,
        holder: &str,
        ttl: Duration,
        now_ms: i64,
    ) -> Result<Option<Lease>, LeaseError> {
        self.take(dag, holder, ttl, now_ms, None).await
    }

    /// Takes the lease of `dag` to run its schedule tick `tick_ms`: as
    /// [`Leases::acquire`], and only if no holder has claimed this tick or a
    /// later one. However many schedulers race for a tick, one runs it, and
    /// a scheduler that comes late (after the run ended and released the
    /// lease) finds the tick taken.
    ///
    /// # Errors
    /// The warehouse failed.
    pub async fn claim_tick(
        &self,
        dag: &str,
        holder: &str,
        tick_ms: i64,
        ttl: Duration,
        now_ms: i64,
    ) -> Result<Option<Lease>, LeaseError> {
        self.take(dag, holder, ttl, now_ms, Some(tick_ms)).await
    }

    async fn take(
        &self,
        dag: &str,
        holder: &str,
        ttl: Duration,
        now_ms: i64,
        tick_ms: Option<i64>,
    ) -> Result<Option<Lease>, LeaseError> {
        let b = self.backend;
        let (insert, conflict) = match b {
            Backend::Sqlite => ("INSERT OR IGNORE INTO", ""),
            Backend::MySql => ("INSERT IGNORE INTO", ""),
            Backend::Postgres => ("INSERT INTO", " ON CONFLICT (dag) DO NOTHING"),
        };
        let ensure = format!(
            "{insert} cutover_leases (dag, holder, token, expires_ms) VALUES ({}, '', 0, 0){conflict}",
            b.markers().next()
        );
        sqlx::query(&ensure)
            .bind(dag)
            .execute(&self.pool)
            .await
            .map_err(Self::db(dag))?;
        let expires_ms = now_ms + ttl.as_millis() as i64;
        // The row lock the update takes orders concurrent takers: the second
        // sees the first's expiry and takes nothing.
        let mut m = b.markers();
        let mut p = || m.next();
        let mut take = format!(
            "UPDATE cutover_leases SET holder = {}, token = token + 1, expires_ms = {}",
            p(),
            p()
        );
        if tick_ms.is_some() {
            take += &format!(", last_tick_ms = {}", p());
        }
        take += &format!(
            " WHERE dag = {} AND (expires_ms <= {} OR holder = {})",
            p(),
            p(),
            p()
        );
        if tick_ms.is_some() {
            take += &format!(" AND last_tick_ms < {}", p());
        }
        let mut tx = self.pool.begin().await.map_err(Self::db(dag))?;
        let mut q = sqlx::query(&take).bind(holder).bind(expires_ms);
        if let Some(t) = tick_ms {
            q = q.bind(t);
        }
        q = q.bind(dag).bind(now_ms).bind(holder);
        if let Some(t) = tick_ms {
            q = q.bind(t);
        }
        let taken = q.execute(&mut *tx).await.map_err(Self::db(dag))?;
        if taken.rows_affected() == 0 {
            return Ok(None);
        }
        let token: i64 = sqlx::query(&format!(
            "SELECT token FROM cutover_leases WHERE dag = {}",
            b.markers().next()
        ))
        .bind(dag)
        .fetch_one(&mut *tx)
        .await
        .and_then(|r| r.try_get(0))
        .map_err(Self::db(dag))?;
        tx.commit().await.map_err(Self::db(dag))?;
        Ok(Some(Lease {
            dag: dag.to_owned(),
            holder: holder.to_owned(),
            token,
            expires_ms,
        }))
    }

    /// The latest schedule tick claimed on `dag` (epoch ms); `None` if no
    /// tick ever was.
    ///
    /// # Errors
    /// The warehouse failed.
    pub async fn last_tick(&self, dag: &str) -> Result<Option<i64>, LeaseError> {
        let sql = format!(
            "SELECT last_tick_ms FROM cutover_leases WHERE dag = {}",
            self.backend.markers().next()
        );
        let row = sqlx::query(&sql)
            .bind(dag)
            .fetch_optional(&self.pool)
            .await
            .map_err(Self::db(dag))?;
        let ms = match row {
            Some(r) => r.try_get::<i64, _>(0).map_err(Self::db(dag))?,
            None => 0,
        };
        Ok((ms > 0).then_some(ms))
    }

    /// Extends a lease held to `ttl` from `now_ms`.
    ///
    /// # Errors
    /// [`LeaseError::Lost`] when it expired or was taken; the warehouse failed.
    pub async fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
        now_ms: i64,
    ) -> Result<Lease, LeaseError> {
        let b = self.backend;
        let expires_ms = now_ms + ttl.as_millis() as i64;
        let sql = b.sql("UPDATE cutover_leases SET expires_ms = ? WHERE dag = ? AND token = ? AND expires_ms > ?");
        let renewed = sqlx::query(&sql)
            .bind(expires_ms)
            .bind(&lease.dag)
            .bind(lease.token)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(Self::db(&lease.dag))?;
        if renewed.rows_affected() == 0 {
            let mut conn = self.pool.acquire().await.map_err(Self::db(&lease.dag))?;
            Self::check(&mut conn, b, lease, now_ms).await?;
        }
        Ok(Lease {
            expires_ms,
            ..lease.clone()
        })
    }

    /// Gives a lease up, so that the next taker need not wait for it to
    /// expire. Releasing a lease already lost changes nothing.
    ///
    /// # Errors
    /// The warehouse failed.
    pub async fn release(&self, lease: &Lease) -> Result<(), LeaseError> {
        let b = self.backend;
        let sql = b.sql("UPDATE cutover_leases SET expires_ms = 0 WHERE dag = ? AND token = ?");
        sqlx::query(&sql)
            .bind(&lease.dag)
            .bind(lease.token)
            .execute(&self.pool)
            .await
            .map_err(Self::db(&lease.dag))?;
        Ok(())
    }

    /// Checks, on `conn` (inside the transaction about to commit), that
    /// `lease` is still current and unexpired at `now_ms`, locking the lease
    /// row until that transaction ends so that no one takes it meanwhile.
    ///
    /// # Errors
    /// [`LeaseError::Lost`]; the warehouse failed.
    pub async fn check(
        conn: &mut AnyConnection,
        backend: Backend,
        lease: &Lease,
        now_ms: i64,
    ) -> Result<(), LeaseError> {
        let lock = match backend {
            // SQLite has one writer at a time: the transaction's own write
            // lock covers it.
            Backend::Sqlite => "",
            Backend::MySql | Backend::Postgres => " FOR UPDATE",
        };
        let sql = format!(
            "SELECT holder, token, expires_ms FROM cutover_leases WHERE dag = {}{lock}",
            backend.markers().next()
        );
        let row = sqlx::query(&sql)
            .bind(&lease.dag)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Self::db(&lease.dag))?;
        let (holder, current, expires_ms) = match &row {
            Some(r) => (
                text(r, "holder")
                    .map_err(Self::db(&lease.dag))?
                    .unwrap_or_default(),
                r.try_get::<i64, _>("token").map_err(Self::db(&lease.dag))?,
                r.try_get::<i64, _>("expires_ms")
                    .map_err(Self::db(&lease.dag))?,
            ),
            None => (String::new(), 0, 0),
        };
        if current == lease.token && expires_ms > now_ms {
            return Ok(());
        }
        Err(LeaseError::Lost {
            dag: lease.dag.clone(),
            token: lease.token,
            current,
            holder,
            state: if expires_ms > now_ms {
                "active"
            } else {
                "expired"
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn leases() -> Leases {
        Leases::new(crate::test_pool().await, Backend::Sqlite)
    }

    const TTL: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_stale_holder_cannot_commit() {
        let l = leases().await;
        let a = l.acquire("views", "a", TTL, 1_000).await.unwrap().unwrap();
        assert_eq!(a.token, 1);
        assert!(l.acquire("views", "b", TTL, 2_000).await.unwrap().is_none());
        // Other DAGs are free.
        assert!(l.acquire("users", "b", TTL, 2_000).await.unwrap().is_some());
        let a = l.renew(&a, TTL, 9_000).await.unwrap();
        assert!(l
            .acquire("views", "b", TTL, 12_000)
            .await
            .unwrap()
            .is_none());

        // `a` pauses past its expiry; `b` takes over with the next token.
        let b = l.acquire("views", "b", TTL, 19_000).await.unwrap().unwrap();
        assert_eq!(b.token, 2);
        let mut conn = l.pool.acquire().await.unwrap();
        let lost = Leases::check(&mut conn, Backend::Sqlite, &a, 19_500).await;
        assert!(
            matches!(lost, Err(LeaseError::Lost { current: 2, ref holder, .. }) if holder == "b"),
            "{lost:?}"
        );
        Leases::check(&mut conn, Backend::Sqlite, &b, 19_500)
            .await
            .unwrap();
        drop(conn);
        assert!(matches!(
            l.renew(&a, TTL, 19_600).await,
            Err(LeaseError::Lost { .. })
        ));

        // Released, it is free at once; an old release changes nothing.
        l.release(&a).await.unwrap();
        assert!(l
            .acquire("views", "a", TTL, 20_000)
            .await
            .unwrap()
            .is_none());
        l.release(&b).await.unwrap();
        let a2 = l.acquire("views", "a", TTL, 20_000).await.unwrap().unwrap();
        assert_eq!(a2.token, 3);
    }

    #[tokio::test]
    async fn a_tick_is_claimed_once_even_by_a_late_scheduler() {
        let l = leases().await;
        let a = l
            .claim_tick("views", "a", 60_000, TTL, 60_010)
            .await
            .unwrap()
            .unwrap();
        assert!(l
            .claim_tick("views", "b", 60_000, TTL, 60_020)
            .await
            .unwrap()
            .is_none());
        // The run ends and releases the lease; a late scheduler finds the
        // tick taken, and takes the next one.
        l.release(&a).await.unwrap();
        assert!(l
            .claim_tick("views", "b", 60_000, TTL, 61_000)
            .await
            .unwrap()
            .is_none());
        let b = l
            .claim_tick("views", "b", 120_000, TTL, 120_010)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.token, 2);
        assert_eq!(l.last_tick("views").await.unwrap(), Some(120_000));
        assert_eq!(l.last_tick("users").await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_expired_lease_fails_its_check_even_when_no_one_took_it() {
        let l = leases().await;
        let a = l.acquire("views", "a", TTL, 0).await.unwrap().unwrap();
        let mut conn = l.pool.acquire().await.unwrap();
        let lost = Leases::check(&mut conn, Backend::Sqlite, &a, 10_000).await;
        assert!(
            matches!(
                lost,
                Err(LeaseError::Lost {
                    state: "expired",
                    ..
                })
            ),
            "{lost:?}"
        );
    }
}
