//! `cutover backfill` on every warehouse: chunks loaded once each, a killed
//! backfill finished by a rerun, two workers sharing the chunks, and the
//! result equal to a nightly run's.

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Result;

use crate::support::{self, ok, TestWarehouse};

const RANGE: [&str; 6] = [
    "--from",
    "2026-01-01",
    "--to",
    "2026-01-25",
    "--chunk",
    "2d",
];
const CHUNKS: i64 = 12;

fn backfill(source: &str, warehouse: &str, work: &std::path::Path, args: &[&str]) -> Result<Child> {
    Ok(
        support::command(source, warehouse, work, &support::root().join("dags"))
            .args(["backfill", "views"])
            .args(RANGE)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    )
}

async fn finish(child: Child) -> Result<String> {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    Ok(ok(out))
}

/// Every chunk is done, by exactly one succeeded run; the facts equal a
/// nightly run's over the same events; no watermark moved.
async fn assert_done_once(wh: &TestWarehouse, source: &str, dir: &std::path::Path) -> Result<()> {
    let pool = support::pool(&wh.url).await?;
    let done = support::count(
        &pool,
        "SELECT COUNT(*) FROM cutover_backfill_chunks WHERE state = 'done'",
    )
    .await?;
    assert_eq!(done, CHUNKS, "{}: every chunk is done", wh.name);
    let twice = support::count(
        &pool,
        "SELECT COUNT(*) FROM (SELECT scheduled_at FROM cutover_runs WHERE trigger_kind = 'backfill' AND state = 'succeeded' GROUP BY scheduled_at HAVING COUNT(*) > 1) t",
    )
    .await?;
    assert_eq!(twice, 0, "{}: no chunk was done twice", wh.name);
    let runs = support::count(
        &pool,
        "SELECT COUNT(*) FROM cutover_runs WHERE trigger_kind = 'backfill' AND state = 'succeeded'",
    )
    .await?;
    assert_eq!(runs, CHUNKS, "{}: one succeeded run per chunk", wh.name);
    assert_eq!(
        support::count(&pool, "SELECT COUNT(*) FROM cutover_watermarks").await?,
        0,
        "{}: a backfill moves no watermark",
        wh.name
    );

    let reference_url = format!("sqlite:{}", dir.join("reference.db").display());
    ok(support::cutover_with(
        source,
        &reference_url,
        &dir.join("reference-work"),
        &support::root().join("dags"),
        &["run", "views"],
    ));
    let reference = support::pool(&reference_url).await?;
    let columns = [
        "event_id",
        "ts_ms",
        "date_key",
        "presentation_id",
        "session_id",
        "user_id",
        "device",
        "referrer",
        "doc_id",
    ];
    let facts = support::snapshot(&pool, "fact_views", &columns).await?;
    assert!(!facts.is_empty());
    assert_eq!(
        facts,
        support::snapshot(&reference, "fact_views", &columns).await?,
        "{}: the backfilled facts are the nightly run's, without duplicates",
        wh.name
    );
    pool.close().await;
    reference.close().await;
    Ok(())
}

#[tokio::test]
async fn a_killed_backfill_rerun_completes_each_chunk_once() -> Result<()> {
    for wh in support::warehouses().await? {
        let dir = tempfile::tempdir()?;
        let events = support::seed(dir.path(), 600, 21);
        let source = events.display().to_string();
        let work = dir.path().join("w");
        let dry = ok(support::cutover(
            &events,
            &wh.url,
            &work,
            &[
                "backfill",
                "views",
                RANGE[0],
                RANGE[1],
                RANGE[2],
                RANGE[3],
                RANGE[4],
                RANGE[5],
                "--dry-run",
            ],
        ));
        assert!(dry.contains("12 chunks"), "{dry}");
        assert_eq!(dry.matches("pending").count(), 12, "{dry}");

        // Slowed down, so that it is killed in the middle of a chunk.
        let mut first = backfill(
            &source,
            &wh.url,
            &work,
            &["--max-rate", "20", "--claim-ttl", "3s"],
        )?;
        support::wait_for_count(
            &wh.url,
            "SELECT COUNT(*) FROM cutover_backfill_chunks WHERE state = 'done'",
            3,
            &mut first,
            Duration::from_secs(120),
        )
        .await?;
        first.kill()?;
        first.wait()?;

        let rerun = finish(backfill(&source, &wh.url, &work, &["--claim-ttl", "3s"])?).await?;
        assert!(rerun.contains("0 failed"), "{}: {rerun}", wh.name);
        assert!(
            rerun.contains("done before or by other workers"),
            "{}: {rerun}",
            wh.name
        );
        assert_done_once(&wh, &source, dir.path()).await?;
        // The run the killed worker left is recorded as interrupted by the
        // worker that took its chunk over.
        let pool = support::pool(&wh.url).await?;
        assert_eq!(
            support::count(
                &pool,
                "SELECT COUNT(*) FROM cutover_runs WHERE state = 'running'"
            )
            .await?,
            0,
            "{}",
            wh.name
        );
        pool.close().await;

        // Run again, it finds everything done and loads nothing.
        let again = finish(backfill(&source, &wh.url, &work, &[])?).await?;
        assert!(
            again.contains("0 done by this process, 12 done before"),
            "{again}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn two_backfill_workers_split_the_chunks() -> Result<()> {
    for wh in support::warehouses().await? {
        let dir = tempfile::tempdir()?;
        let events = support::seed(dir.path(), 600, 22);
        let source = events.display().to_string();
        let args = ["--max-rate", "40", "--parallel", "2"];
        let a = backfill(&source, &wh.url, &dir.path().join("a"), &args)?;
        let b = backfill(&source, &wh.url, &dir.path().join("b"), &args)?;
        let (a, b) = (finish(a).await?, finish(b).await?);
        let by_this = |out: &str| -> i64 {
            out.split("chunks; ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no count in {out}"))
        };
        let (na, nb) = (by_this(&a), by_this(&b));
        assert_eq!(na + nb, CHUNKS, "{}: {a}\n{b}", wh.name);
        assert!(
            na > 0 && nb > 0,
            "{}: both workers did chunks: {a}\n{b}",
            wh.name
        );
        let pool = support::pool(&wh.url).await?;
        let holders = support::count(
            &pool,
            "SELECT COUNT(DISTINCT holder) FROM cutover_backfill_chunks",
        )
        .await?;
        assert_eq!(holders, 2, "{}", wh.name);
        pool.close().await;
        assert_done_once(&wh, &source, dir.path()).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_backfill_from_mongodb_loads_what_a_nightly_run_loads() -> Result<()> {
    let Some(mongo) = support::server("CUTOVER_TEST_MONGO_URL") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 600, 23);
    let (client, db) = crate::mongo::load_events(&mongo, &events).await?;
    let dags = support::dags_for_database(dir.path(), &db)?;
    let backfilled = format!("sqlite:{}", dir.path().join("b.db").display());
    let nightly = format!("sqlite:{}", dir.path().join("n.db").display());
    let mut args = vec!["backfill", "views"];
    args.extend(RANGE);
    args.extend(["--parallel", "3", "--max-rate", "200"]);
    let out = ok(support::cutover_with(
        &mongo,
        &backfilled,
        &dir.path().join("wb"),
        &dags,
        &args,
    ));
    assert!(out.contains("12 done by this process"), "{out}");
    ok(support::cutover_with(
        &mongo,
        &nightly,
        &dir.path().join("wn"),
        &dags,
        &["run", "views"],
    ));
    let columns = [
        "event_id", "ts_ms", "date_key", "user_id", "device", "doc_id",
    ];
    let (b, n) = (
        support::pool(&backfilled).await?,
        support::pool(&nightly).await?,
    );
    let facts = support::snapshot(&b, "fact_views", &columns).await?;
    assert!(!facts.is_empty());
    assert_eq!(facts, support::snapshot(&n, "fact_views", &columns).await?);
    client.database(&db).drop().await?;
    Ok(())
}
