//! The whole star schema on every available warehouse: after `run --all`
//! the five reports from the warehouse equal the legacy reports computed
//! from the same events; a second run changes no row; a run killed halfway
//! and rerun leaves what a clean run leaves.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::support::{self, cutover, cutover_with, ok, snapshot};

/// The reports of the event model.
pub const REPORTS: &[&str] = &[
    "views_daily",
    "slide_engagement",
    "shares_daily",
    "sessions_daily",
    "views_by_plan",
];

/// Every table of the star schema with all its columns.
pub const STAR: &[(&str, &[&str])] = &[
    (
        "dim_date",
        &["date_key", "date", "year", "month", "day", "weekday"],
    ),
    ("dim_device", &["device"]),
    (
        "dim_user",
        &[
            "version_id",
            "user_id",
            "plan",
            "valid_from_ms",
            "valid_to_ms",
            "doc_id",
            "source_type",
        ],
    ),
    (
        "dim_presentation",
        &[
            "presentation_id",
            "owner_id",
            "title",
            "slide_count",
            "created_ms",
            "version_ts_ms",
            "version_doc_id",
        ],
    ),
    (
        "fact_views",
        &[
            "event_id",
            "ts_ms",
            "date_key",
            "presentation_id",
            "session_id",
            "user_id",
            "device",
            "referrer",
            "doc_id",
        ],
    ),
    (
        "fact_engagement",
        &[
            "event_id",
            "ts_ms",
            "date_key",
            "presentation_id",
            "session_id",
            "user_id",
            "slide",
            "dwell_ms",
            "payload_version",
            "doc_id",
        ],
    ),
    (
        "fact_shares",
        &[
            "event_id",
            "ts_ms",
            "date_key",
            "presentation_id",
            "user_id",
            "channel",
            "doc_id",
        ],
    ),
    (
        "fact_sessions",
        &[
            "session_id",
            "user_id",
            "device",
            "started_ms",
            "start_date_key",
            "started_event_id",
            "ended_ms",
            "ended_event_id",
            "duration_ms",
        ],
    ),
    (
        "cutover_quarantine",
        &["dag", "task", "doc_id", "reason", "raw"],
    ),
    ("cutover_watermarks", &["dag", "task", "ts_ms"]),
];

/// A snapshot of every star table.
pub async fn star_snapshot(url: &str) -> Result<Vec<Vec<String>>> {
    let pool = support::pool(url).await?;
    let mut out = Vec::new();
    for (table, cols) in STAR {
        out.push(snapshot(&pool, table, cols).await?);
    }
    pool.close().await;
    Ok(out)
}

/// Whether two report values are equal, doubles within 1e-9.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && same(v1, v2))
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= 1e-9
        }
        _ => a == b,
    }
}

/// Asserts that every report from the warehouse equals the legacy one
/// (computed now, or given), and returns the legacy reports.
pub fn assert_reports_equal(
    source: &str,
    warehouse: &str,
    work: &Path,
    dags: &Path,
    database: &str,
    legacy: Option<&[Value]>,
    label: &str,
) -> Vec<Value> {
    let mut legacy_all = Vec::new();
    for (i, report) in REPORTS.iter().enumerate() {
        let read = |from: &str| -> Value {
            let out = ok(cutover_with(
                source,
                warehouse,
                work,
                dags,
                &[
                    "report",
                    report,
                    "--source",
                    from,
                    "--database",
                    database,
                    "--format",
                    "json",
                ],
            ));
            serde_json::from_str(&out).unwrap()
        };
        let ours = read("warehouse");
        let legacy = legacy.map_or_else(|| read("legacy"), |l| l[i].clone());
        assert!(
            !legacy.as_array().unwrap().is_empty(),
            "{report} is empty ({label})"
        );
        assert!(
            same(&ours, &legacy),
            "{report} differs from the legacy report ({label}):\nwarehouse: {ours}\nlegacy: {legacy}"
        );
        legacy_all.push(legacy);
    }
    legacy_all
}

#[tokio::test]
async fn every_report_equals_legacy_and_a_second_run_changes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let events_file = support::seed(dir.path(), 20_000, 3);
    let source = events_file.display().to_string();
    let dags = support::root().join("dags");
    for wh in support::warehouses().await? {
        let work = dir.path().join(format!("work-{}", wh.name));
        // Two DAGs at a time (one at a time on SQLite): the fact DAGs load
        // the shared dimensions side by side.
        let out = ok(cutover(
            &events_file,
            &wh.url,
            &work,
            &["run", "--all", "--parallel", "2"],
        ));
        for dag in [
            "users",
            "presentations",
            "views",
            "engagement",
            "shares",
            "sessions",
        ] {
            assert!(out.contains(&format!("{dag} run")), "{dag} ran:\n{out}");
        }
        assert!(
            out.find("users run").unwrap() < out.find("views run").unwrap(),
            "the dimensions load first:\n{out}"
        );
        assert_reports_equal(&source, &wh.url, &work, &dags, "app", None, wh.name);

        let before = star_snapshot(&wh.url).await?;
        // Every task run again: the merges change nothing.
        let again = ok(cutover(
            &events_file,
            &wh.url,
            &work,
            &["run", "--all", "--no-skip"],
        ));
        assert!(
            support::changed_nothing(&again) && !again.contains("up to date"),
            "a second run changes nothing on {}:\n{again}",
            wh.name
        );
        assert_eq!(
            star_snapshot(&wh.url).await?,
            before,
            "the warehouse changed on the second run on {}",
            wh.name
        );
        // Nothing new: every extract says so and nothing after it runs.
        let noop = ok(cutover(&events_file, &wh.url, &work, &["run", "--all"]));
        let lines: Vec<&str> = noop
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .collect();
        let extracts = lines
            .iter()
            .filter(|l| l.trim_start().starts_with("extract_"));
        assert!(
            extracts.clone().count() >= 6
                && extracts
                    .clone()
                    .all(|l| l.contains("nothing new since run")),
            "every extract finds nothing new on {}:\n{noop}",
            wh.name
        );
        let rest = lines.iter().filter(|l| {
            let t = l.trim_start();
            !t.starts_with("extract_") && !t.contains("documents read")
        });
        assert!(
            rest.clone().all(|l| l.contains("ok: up to date")),
            "the tasks after them are up to date on {}:\n{noop}",
            wh.name
        );
        assert_eq!(star_snapshot(&wh.url).await?, before, "on {}", wh.name);
    }
    Ok(())
}

#[tokio::test]
async fn a_run_killed_halfway_and_rerun_leaves_what_a_clean_run_leaves() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let events_file = support::seed(dir.path(), 20_000, 9);
    // Small segments, so the kill lands between commits; the user
    // dimension's smaller still (some 22 segments of 25 documents), so
    // that a kill at its first commit finds the run still going, whichever
    // DAG ends last.
    let users = "\"user.plan_changed\"]\nlookback = \"6h\"\nbatch_size = ";
    let dags = support::dags_edited(dir.path(), |text| {
        text.replace("batch_size = 20000\n", "")
            .replace("lookback = \"6h\"", "lookback = \"6h\"\nbatch_size = 300")
            .replace(&format!("{users}300"), &format!("{users}25"))
    })?;
    let source = events_file.display().to_string();
    let cleans = support::warehouses().await?;
    for (wh, clean) in support::warehouses().await?.iter().zip(&cleans) {
        let work = dir.path().join(format!("work-{}", wh.name));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["run", "--all"])
            .env("CUTOVER_SOURCE_URL", &source)
            .env("CUTOVER_WAREHOUSE_URL", &wh.url)
            .env("CUTOVER_WORK_DIR", &work)
            .env("CUTOVER_DAGS", &dags)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        // Kill it once the type 2 user dimension has committed its first
        // segment: mid-merge of a history, with facts still to come.
        support::wait_for_count(
            &wh.url,
            "SELECT COUNT(*) FROM cutover_commits WHERE task = 'load_users'",
            1,
            &mut child,
            Duration::from_secs(120),
        )
        .await?;
        child.kill()?;
        child.wait()?;
        let pool = support::pool(&wh.url).await?;
        let unfinished = support::count(
            &pool,
            "SELECT COUNT(*) FROM cutover_runs WHERE state = 'running'",
        )
        .await?;
        pool.close().await;
        assert_eq!(unfinished, 1, "the kill interrupted a run on {}", wh.name);

        ok(cutover_with(
            &source,
            &wh.url,
            &work,
            &dags,
            &["run", "--all"],
        ));
        let rerun = star_snapshot(&wh.url).await?;

        let clean_work = dir.path().join(format!("clean-work-{}", wh.name));
        ok(cutover_with(
            &source,
            &clean.url,
            &clean_work,
            &dags,
            &["run", "--all"],
        ));
        assert_eq!(
            rerun,
            star_snapshot(&clean.url).await?,
            "killed and rerun differs from a clean run on {}",
            wh.name
        );
    }
    Ok(())
}
