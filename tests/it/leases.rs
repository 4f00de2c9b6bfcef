//! DAG leases on every warehouse: at most one holder per DAG however many
//! processes race for it, and a holder that lost its lease cannot commit.

use std::time::Duration;

use anyhow::Result;
use workflows::{Backend, LeaseError, Leases};

use crate::support::{self, ok};

const TTL: Duration = Duration::from_millis(500);

async fn leases(url: &str) -> Result<Leases> {
    let pool = support::pool(url).await?;
    Ok(Leases::new(pool, Backend::from_url(url).unwrap()))
}

#[tokio::test]
async fn one_holder_per_tick_and_a_stale_holder_cannot_commit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 10, 1);
    for wh in support::warehouses().await? {
        ok(support::cutover(
            &events,
            &wh.url,
            &dir.path().join("w"),
            &["migrate"],
        ));
        // Three schedulers, each with its own connections, race for the
        // lease at every tick; the lease of the tick before has expired.
        let racers = [
            leases(&wh.url).await?,
            leases(&wh.url).await?,
            leases(&wh.url).await?,
        ];
        for tick in 1..=20i64 {
            let now = tick * 1_000;
            let (a, b, c) = tokio::join!(
                racers[0].acquire("views", "s0", TTL, now),
                racers[1].acquire("views", "s1", TTL, now),
                racers[2].acquire("views", "s2", TTL, now),
            );
            let won: Vec<_> = [a?, b?, c?].into_iter().flatten().collect();
            assert_eq!(won.len(), 1, "tick {tick} on {}: {won:?}", wh.name);
            assert_eq!(won[0].token, tick, "one token per tick on {}", wh.name);
        }

        // The holder of tick 20 pauses past its expiry; another takes over.
        let stale = racers[0]
            .acquire("users", "s0", TTL, 100_000)
            .await?
            .unwrap();
        let fresh = racers[1]
            .acquire("users", "s1", TTL, 101_000)
            .await?
            .unwrap();
        let pool = support::pool(&wh.url).await?;
        let backend = Backend::from_url(&wh.url).unwrap();
        let mut tx = pool.begin().await?;
        let refused = Leases::check(&mut tx, backend, &stale, 101_100).await;
        assert!(
            matches!(refused, Err(LeaseError::Lost { .. })),
            "the stale holder's commit is refused on {}: {refused:?}",
            wh.name
        );
        tx.rollback().await?;
        let mut tx = pool.begin().await?;
        Leases::check(&mut tx, backend, &fresh, 101_100).await?;
        tx.commit().await?;
        pool.close().await;
    }
    Ok(())
}
