//! The scheduler daemon against MariaDB: three `cutover schedule` processes
//! share the warehouse and run a DAG scheduled every two seconds, each tick
//! exactly once; SIGTERM stops them cleanly.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Result;

use sqlx::{Column, Row};

use crate::support::{self, ok};

#[tokio::test]
async fn three_daemons_run_each_tick_once() -> Result<()> {
    let Some(wh) = support::mysql_warehouse().await? else {
        return Ok(());
    };
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
        daemons.push(schedule_daemon(
            &source,
            &wh.url,
            &dir.path().join(format!("w{n}")),
            &dags,
            &["users", "--lease-ttl", "3s", "--grace", "20s"],
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
        assert!(t.contains(".000Z"), "ticks are whole seconds: {t}");
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

/// A directory holding only copies of the shipped `users` DAG, one per
/// `(name, schedule lines, extract lines replacing its lookback)`.
fn users_dags(
    dir: &std::path::Path,
    variants: &[(&str, &str, &str)],
) -> Result<std::path::PathBuf> {
    let out = dir.join("dags");
    std::fs::create_dir_all(&out)?;
    let users = std::fs::read_to_string(support::root().join("dags/users.toml"))?;
    for (name, schedule, extract) in variants {
        let text = users
            .replace("name = \"users\"", &format!("name = \"{name}\""))
            .replace("cron = \"0 0 2 * * *\"", schedule)
            .replace("lookback = \"6h\"", extract);
        std::fs::write(out.join(format!("{name}.toml")), text)?;
    }
    Ok(out)
}

fn schedule_daemon(
    source: &str,
    warehouse: &str,
    work: &std::path::Path,
    dags: &std::path::Path,
    args: &[&str],
) -> Result<Child> {
    Ok(support::command(source, warehouse, work, dags)
        .arg("schedule")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// The ticks (`scheduled_at`) of a DAG's scheduled runs, oldest first, with
/// their states.
async fn ticks(pool: &sqlx::AnyPool, dag: &str) -> Result<Vec<(String, String)>> {
    strings(
        pool,
        &format!("SELECT scheduled_at, state FROM cutover_runs WHERE trigger_kind = 'schedule' AND dag = '{dag}' ORDER BY scheduled_at"),
    )
    .await
}

/// The rows of a query of two text columns.
async fn strings(pool: &sqlx::AnyPool, sql: &str) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query(sql).fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            let col =
                |i: &str| -> Result<String> { Ok(workflows::sql::text(r, i)?.unwrap_or_default()) };
            Ok((col(r.column(0).name())?, col(r.column(1).name())?))
        })
        .collect()
}

#[tokio::test]
async fn catch_up_policies_run_the_ticks_missed_while_no_daemon_ran() -> Result<()> {
    let Some(wh) = support::mysql_warehouse().await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 200, 9);
    let source = events.display().to_string();
    let policies = ["none", "latest", "all"];
    let variants: Vec<(String, String)> = policies
        .iter()
        .map(|p| {
            (
                format!("users_{p}"),
                format!("cron = \"0 * * * * *\"\ncatch_up = \"{p}\""),
            )
        })
        .collect();
    let dags = users_dags(
        dir.path(),
        &variants
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_str(), "lookback = \"6h\""))
            .collect::<Vec<_>>(),
    )?;
    let work = dir.path().join("w");
    ok(support::cutover_with(
        &source,
        &wh.url,
        &work,
        &dags,
        &["migrate"],
    ));

    // The last daemon claimed its last tick ten minutes ago, then stopped.
    // Keep clear of a minute's turn while the daemon starts.
    while chrono::Utc::now().timestamp() % 60 >= 50 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let now = chrono::Utc::now().timestamp_millis();
    let this_minute = now - now % 60_000;
    let last_tick = this_minute - 10 * 60_000;
    let pool = support::pool(&wh.url).await?;
    for (name, _) in &variants {
        sqlx::query(&format!(
            "INSERT INTO cutover_leases (dag, holder, token, expires_ms, last_tick_ms) VALUES ('{name}', 'gone', 7, 0, {last_tick})"
        ))
        .execute(&pool)
        .await?;
    }
    let mut daemon = schedule_daemon(&source, &wh.url, &work, &dags, &["--lease-ttl", "5s"])?;
    // `all` runs the ten missed ticks one after the other.
    support::wait_for_count(
        &wh.url,
        "SELECT COUNT(*) FROM cutover_runs WHERE dag = 'users_all' AND state = 'succeeded'",
        10,
        &mut daemon,
        Duration::from_secs(180),
    )
    .await?;
    support::terminate(daemon).await?;

    let minute = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let missed: Vec<String> = (1..=10).map(|k| minute(last_tick + k * 60_000)).collect();
    for (name, _) in &variants {
        // Runs of the ticks up to this minute: the catch-up runs (a tick
        // that came due while the test ran is a regular one).
        let caught: Vec<(String, String)> = ticks(&pool, name)
            .await?
            .into_iter()
            .filter(|(t, _)| *t <= minute(this_minute))
            .collect();
        assert!(
            caught.iter().all(|(_, s)| s == "succeeded"),
            "{name}: {caught:?}"
        );
        let caught: Vec<String> = caught.into_iter().map(|(t, _)| t).collect();
        let expected: &[String] = match name.as_str() {
            "users_none" => &[],
            "users_latest" => &missed[9..],
            _ => &missed,
        };
        assert_eq!(caught, expected, "{name}");
    }
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn a_slow_run_is_never_overlapped_and_sigterm_mid_run_is_recorded() -> Result<()> {
    let Some(wh) = support::mysql_warehouse().await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 400, 11);
    let source = events.display().to_string();
    // Every second, but a run reads all its dozen events at 3 per second:
    // each run outlasts several ticks.
    let slow = users_dags(
        &dir.path().join("slow"),
        &[(
            "users",
            "cron = \"* * * * * *\"",
            "lookback = \"3650d\"\nmax_rate = 3",
        )],
    )?;
    let work = dir.path().join("w");
    ok(support::cutover_with(
        &source,
        &wh.url,
        &work,
        &slow,
        &["migrate"],
    ));
    let mut daemon = schedule_daemon(
        &source,
        &wh.url,
        &work,
        &slow,
        // Every run reads again: nothing new would make it quick.
        &["--lease-ttl", "3s", "--grace", "1s", "--no-skip"],
    )?;
    support::wait_for_count(
        &wh.url,
        "SELECT COUNT(*) FROM cutover_runs WHERE state = 'succeeded'",
        3,
        &mut daemon,
        Duration::from_secs(120),
    )
    .await?;
    // Stop it in the middle of a run: the grace period is shorter than a run.
    support::wait_for_count(
        &wh.url,
        "SELECT COUNT(*) FROM cutover_runs WHERE state = 'running'",
        1,
        &mut daemon,
        Duration::from_secs(30),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (stdout, stderr) = support::terminate(daemon).await?;
    assert!(stdout.contains("1 runs interrupted"), "{stdout}\n{stderr}");

    let pool = support::pool(&wh.url).await?;
    let runs = ticks(&pool, "users").await?;
    assert!(runs.len() >= 4, "{runs:?}");
    let states: Vec<&str> = runs.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        states.iter().filter(|s| **s == "interrupted").count(),
        1,
        "the run under way is recorded as interrupted: {runs:?}"
    );
    assert!(
        states
            .iter()
            .all(|s| *s == "succeeded" || *s == "interrupted"),
        "{runs:?}"
    );
    assert_eq!(
        support::count(
            &pool,
            "SELECT COUNT(*) FROM cutover_task_attempts WHERE state = 'running'"
        )
        .await?,
        0,
        "no task is left running in the ledger"
    );
    // Ticks came every second, but a run took several: the ticks in between
    // were skipped, never run beside it.
    let secs: Vec<i64> = runs
        .iter()
        .map(|(t, _)| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp())
        .collect();
    assert!(
        secs.windows(2).all(|w| w[1] - w[0] >= 2),
        "runs started on consecutive ticks: {secs:?}"
    );
    let spans = strings(
        &pool,
        "SELECT started_at, ended_at FROM cutover_runs WHERE dag = 'users' ORDER BY started_at",
    )
    .await?;
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "runs overlap: {pair:?}");
    }

    // The next daemon (at full speed) completes a run from the watermark,
    // and the dimension is the one a single run loads.
    let fast = users_dags(
        &dir.path().join("fast"),
        &[("users", "cron = \"* * * * * *\"", "lookback = \"6h\"")],
    )?;
    let mut daemon = schedule_daemon(&source, &wh.url, &work, &fast, &["--lease-ttl", "3s"])?;
    let before = support::count(
        &pool,
        "SELECT COUNT(*) FROM cutover_runs WHERE state = 'succeeded'",
    )
    .await?;
    support::wait_for_count(
        &wh.url,
        "SELECT COUNT(*) FROM cutover_runs WHERE state = 'succeeded'",
        before + 1,
        &mut daemon,
        Duration::from_secs(60),
    )
    .await?;
    support::terminate(daemon).await?;
    let reference = tempfile::tempdir()?;
    let reference_url = format!("sqlite:{}", reference.path().join("r.db").display());
    ok(support::cutover_with(
        &source,
        &reference_url,
        &reference.path().join("w"),
        &fast,
        &["run", "users"],
    ));
    let columns = [
        "version_id",
        "user_id",
        "plan",
        "valid_from_ms",
        "valid_to_ms",
    ];
    let reference_pool = support::pool(&reference_url).await?;
    assert_eq!(
        support::snapshot(&pool, "dim_user", &columns).await?,
        support::snapshot(&reference_pool, "dim_user", &columns).await?
    );
    pool.close().await;
    Ok(())
}
