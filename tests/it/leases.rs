//! DAG leases on every warehouse: one holder per schedule tick however many
//! schedulers race for it, and a holder that lost its lease cannot commit.

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
        // Three schedulers, each with its own connections, race for every
        // tick; the winner's run ends and releases the lease, and a late
        // scheduler finds the tick taken.
        let racers = [
            leases(&wh.url).await?,
            leases(&wh.url).await?,
            leases(&wh.url).await?,
        ];
        for tick in 1..=20i64 {
            let at = tick * 60_000;
            let (a, b, c) = tokio::join!(
                racers[0].claim_tick("views", "s0", at, TTL, at + 5),
                racers[1].claim_tick("views", "s1", at, TTL, at + 7),
                racers[2].claim_tick("views", "s2", at, TTL, at + 3),
            );
            let won: Vec<_> = [a?, b?, c?].into_iter().flatten().collect();
            assert_eq!(won.len(), 1, "tick {tick} on {}: {won:?}", wh.name);
            assert_eq!(won[0].token, tick, "one token per tick on {}", wh.name);
            racers[0].release(&won[0]).await?;
            let late = racers[(tick % 3) as usize]
                .claim_tick("views", "late", at, TTL, at + 2_000)
                .await?;
            assert!(late.is_none(), "tick {tick} ran twice on {}", wh.name);
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

#[tokio::test]
async fn a_run_whose_lease_was_taken_over_commits_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 300, 3);
    let dags = workflows::dag::load_dir::<tasks::kinds::TaskKind>(&support::root().join("dags"))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let users = dags.iter().find(|d| d.name == "users").unwrap();
    for wh in support::warehouses().await? {
        let warehouse = tasks::warehouse::Warehouse::connect(&wh.url).await?;
        warehouse.migrate().await?;
        let leases = Leases::new(warehouse.pool.clone(), warehouse.backend);
        let now = chrono::Utc::now().timestamp_millis();
        // This scheduler's lease expired while it was paused, and another
        // took the DAG over.
        let stale = leases
            .acquire("users", "paused", TTL, now - 60_000)
            .await?
            .unwrap();
        leases
            .acquire("users", "other", Duration::from_secs(600), now)
            .await?
            .unwrap();
        let env = tasks::kinds::Env::new(
            tasks::source::Source::open(&events.display().to_string()).await?,
            warehouse.clone(),
        );
        let opts = workflows::RunOptions {
            work_root: dir.path().join(format!("work-{}", wh.name)),
            lease: Some(stale),
            ..workflows::RunOptions::default()
        };
        let summary = workflows::Runner::new(warehouse.ledger())
            .run(users, env.tasks(users), &opts)
            .await?;
        assert!(
            !matches!(summary.state, workflows::RunState::Succeeded),
            "the run fails on {}",
            wh.name
        );
        let error = summary
            .tasks
            .iter()
            .find_map(|(_, s)| match s {
                workflows::TaskState::Failed { error, .. } => Some(error.clone()),
                _ => None,
            })
            .unwrap_or_default();
        assert!(error.contains("lease of dag users lost"), "{error}");
        let pool = support::pool(&wh.url).await?;
        for table in ["dim_user", "cutover_commits", "cutover_watermarks"] {
            let n = support::count(&pool, &format!("SELECT COUNT(*) FROM {table}")).await?;
            assert_eq!(n, 0, "{table} is untouched on {}", wh.name);
        }
        pool.close().await;
    }
    Ok(())
}
