//! The scheduler daemon against MariaDB: three `cutover schedule` processes
//! share the warehouse and run a DAG scheduled every two seconds, each tick
//! exactly once; SIGTERM stops them cleanly.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Result;

use crate::support::{self, ok};

fn daemon(
    source: &str,
    warehouse: &str,
    work: &std::path::Path,
    dags: &std::path::Path,
) -> Result<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["schedule", "users", "--lease-ttl", "3s", "--grace", "20s"])
        .env("CUTOVER_SOURCE_URL", source)
        .env("CUTOVER_WAREHOUSE_URL", warehouse)
        .env("CUTOVER_WORK_DIR", work)
        .env("CUTOVER_DAGS", dags)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

#[tokio::test]
async fn three_daemons_run_each_tick_once() -> Result<()> {
    let mut warehouses = support::warehouses().await?;
    let Some(i) = warehouses.iter().position(|w| w.name == "mysql") else {
        eprintln!("CUTOVER_TEST_MYSQL_URL is not set: skipped");
        return Ok(());
    };
    let wh = warehouses.swap_remove(i);
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 200, 9);
    let source = events.display().to_string();
    let dags = support::dags_edited(dir.path(), |text| {
        text.replace("cron = \"0 0 2 * * *\"", "cron = \"*/2 * * * * *\"")
    })?;
    ok(support::cutover_with(
        &source,
        &wh.url,
        &dir.path().join("w0"),
        &dags,
        &["migrate"],
    ));
    let mut daemons = Vec::new();
    for n in 0..3 {
        daemons.push(daemon(
            &source,
            &wh.url,
            &dir.path().join(format!("w{n}")),
            &dags,
        )?);
    }
    // At least 20 ticks.
    let scheduled =
        "SELECT COUNT(DISTINCT scheduled_at) FROM cutover_runs WHERE trigger_kind = 'schedule'";
    support::wait_for_count(
        &wh.url,
        scheduled,
        20,
        &mut daemons[0],
        Duration::from_secs(120),
    )
    .await?;
    for d in &daemons {
        Command::new("kill")
            .args(["-TERM", &d.id().to_string()])
            .status()?;
    }
    for d in daemons {
        let out = tokio::task::spawn_blocking(move || d.wait_with_output()).await??;
        assert!(
            out.status.success(),
            "SIGTERM ends a daemon cleanly: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("scheduler stopped"));
    }
    let pool = support::pool(&wh.url).await?;
    let twice = support::count(
        &pool,
        "SELECT COUNT(*) FROM (SELECT scheduled_at FROM cutover_runs WHERE trigger_kind = 'schedule' GROUP BY scheduled_at HAVING COUNT(*) > 1) t",
    )
    .await?;
    assert_eq!(twice, 0, "no tick ran twice");
    let unfinished = support::count(
        &pool,
        "SELECT COUNT(*) FROM cutover_runs WHERE trigger_kind = 'schedule' AND state <> 'succeeded'",
    )
    .await?;
    assert_eq!(unfinished, 0, "every run finished and succeeded");
    let ticks = support::snapshot(
        &pool,
        "cutover_runs WHERE trigger_kind = 'schedule'",
        &["scheduled_at"],
    )
    .await?;
    for t in &ticks {
        let secs: u32 = t
            .split(':')
            .nth(2)
            .and_then(|s| s.get(..2))
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        assert_eq!(secs % 2, 0, "runs are on the schedule's ticks: {t}");
    }
    pool.close().await;

    // `runs --format json` gives each run's tick, start, end and state, and
    // no run of the DAG overlaps another.
    let runs: serde_json::Value = serde_json::from_str(&ok(support::cutover_with(
        &source,
        &wh.url,
        &dir.path().join("w0"),
        &dags,
        &[
            "runs", "--dag", "users", "--limit", "1000", "--format", "json",
        ],
    )))?;
    let mut spans: Vec<(String, String)> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert!(
                r["run_id"].is_string() && r["scheduled_at"].is_string(),
                "{r}"
            );
            assert_eq!(r["state"], "succeeded", "{r}");
            (
                r["started_at"].as_str().unwrap().to_owned(),
                r["ended_at"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(spans.len() >= 20);
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "runs overlap: {pair:?}");
    }
    Ok(())
}
