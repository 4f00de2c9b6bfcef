//! `verify.checks` on every available warehouse: the checks the shipped
//! DAGs declare pass on a clean load of the seeded events (their `warn`
//! checks count exactly the rows of users who never registered), and each
//! kind of damage fails the check that looks for it, naming the check, its
//! table and how many rows fail, while a `warn` check reports without
//! failing its run. Damage is done to rows older than the runs' lookback,
//! which a rerun does not load again.

use anyhow::Result;
use sqlx::{AnyPool, Row};

use crate::support::{self, count, cutover_with, ok};

/// Eight hours: older than the shipped DAGs' six-hour lookback.
const OLD_MS: i64 = 8 * 3_600_000;

/// The one text a query returns (MySQL returns binary-collated text as bytes).
async fn text(pool: &AnyPool, sql: &str) -> Result<String> {
    let row = sqlx::query(sql).fetch_one(pool).await?;
    Ok(row.try_get::<String, _>(0).or_else(|_| {
        row.try_get::<Vec<u8>, _>(0)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    })?)
}

/// The texts a query returns.
async fn texts(pool: &AnyPool, sql: &str) -> Result<Vec<String>> {
    let rows = sqlx::query(sql).fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok(row.try_get::<String, _>(0).or_else(|_| {
                row.try_get::<Vec<u8>, _>(0)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            })?)
        })
        .collect()
}

async fn exec(pool: &AnyPool, sql: &str) -> Result<()> {
    sqlx::query(sql).execute(pool).await?;
    Ok(())
}

async fn watermark(pool: &AnyPool, dag: &str, task: &str) -> Result<i64> {
    count(
        pool,
        &format!("SELECT ts_ms FROM cutover_watermarks WHERE dag = '{dag}' AND task = '{task}'"),
    )
    .await
}

/// Asserts that `out` holds every one of `expected`.
fn holds(out: &str, expected: &[String], label: &str) {
    for e in expected {
        assert!(
            out.contains(e.as_str()),
            "{label}: expected\n  {e}\nin:\n{out}"
        );
    }
}

#[tokio::test]
async fn shipped_checks_pass_on_clean_data_and_name_each_damage() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 4_000, 5);
    let source = events.display().to_string();
    let shipped = support::root().join("dags");
    // For the damage runs: the engagement fact's row count compared over
    // everything up to the watermark, not only the run's range, and its
    // viewers required (an `error` not_null on a column that can be NULL).
    let all = support::dags_edited(dir.path(), |text| {
        text.replace(
            r#"{ check = "row_count", table = "fact_engagement" }"#,
            r#"{ check = "row_count", table = "fact_engagement", scope = "all" },
  { check = "not_null", table = "fact_engagement", columns = ["user_id"], key = "event_id" }"#,
        )
    })?;
    for wh in support::warehouses().await? {
        let label = wh.name;
        let work = dir.path().join(format!("work-{label}"));
        let run = |dags: &std::path::Path, args: &[&str]| {
            cutover_with(&source, &wh.url, &work, dags, args)
        };
        let clean = ok(run(&shipped, &["run", "--all"]));
        let pool = support::pool(&wh.url).await?;

        // Clean: every error check passes (the runs succeeded); each fact's
        // warning about users that never registered counts exactly their
        // rows. (`run --all` loads presentations before users, so their
        // owners are warned about too; sessions whose start is not in the
        // file have NULL start columns.)
        holds(
            &clean,
            &[
                format!("{:<22} ok: 5 of 5 checks passed", "check_users"),
                format!("{:<22} ok: ", "check_presentations"),
            ],
            &format!("clean, {label}"),
        );
        let mut warned = 0;
        for (task, check, table, time) in [
            ("check_views", 5, "fact_views", "ts_ms"),
            ("check_engagement", 4, "fact_engagement", "ts_ms"),
            ("check_shares", 4, "fact_shares", "ts_ms"),
            ("check_sessions", 5, "fact_sessions", "started_ms"),
        ] {
            let n = count(
                &pool,
                &format!(
                    "SELECT COUNT(*) FROM {table} WHERE user_id IS NOT NULL AND user_id NOT IN (SELECT user_id FROM dim_user)"
                ),
            )
            .await?;
            let mut expected = vec![format!("{task:<22} ok: ")];
            if n > 0 {
                warned += 1;
                expected.push(format!(
                    "(warn) checks[{check}] relationships {table}.user_id -> dim_user.user_id valid at {table}.{time}: {n} rows whose user_id is not in dim_user.user_id at their time; e.g. "
                ));
            }
            holds(&clean, &expected, &format!("clean, {label}"));
        }
        assert!(
            warned > 0,
            "the seeded users who never registered are warned about ({label})"
        );
        let totals = count(&pool, "SELECT COUNT(*) FROM fact_views").await?;
        assert!(totals > 100, "views loaded ({label})");

        // views: a day of dim_date deleted, a device set to `fax`.
        let w = watermark(&pool, "views", "extract_views").await?;
        let day = count(&pool, "SELECT MIN(date_key) FROM fact_views").await?;
        let on_day = count(
            &pool,
            &format!("SELECT COUNT(*) FROM fact_views WHERE date_key = {day}"),
        )
        .await?;
        assert!(
            count(
                &pool,
                &format!("SELECT MAX(ts_ms) FROM fact_views WHERE date_key = {day}")
            )
            .await?
                < w - OLD_MS,
            "the first day is older than the lookback ({label})"
        );
        let fax = text(
            &pool,
            &format!(
                "SELECT event_id FROM fact_views WHERE ts_ms < {} ORDER BY event_id LIMIT 1",
                w - OLD_MS
            ),
        )
        .await?;
        exec(
            &pool,
            &format!("DELETE FROM dim_date WHERE date_key = {day}"),
        )
        .await?;
        let date = format!(
            "{:04}-{:02}-{:02}",
            day / 10_000,
            day / 100 % 100,
            day % 100
        );
        exec(
            &pool,
            &format!("UPDATE fact_views SET device = 'fax' WHERE event_id = '{fax}'"),
        )
        .await?;
        let out = run(&shipped, &["run", "views", "--no-skip"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "errors fail the run ({label}):\n{stdout}"
        );
        holds(
            &stdout,
            &[
                format!("{:<22} FAILED after 1 attempt(s): 3 of 9 checks failed", "check_views"),
                format!("checks[2] relationships fact_views.date_key -> dim_date.date_key: {on_day} rows whose date_key is not in dim_date.date_key; e.g. "),
                format!("checks[3] relationships fact_views.device -> dim_device.device: 1 rows whose device is not in dim_device.device; e.g. {fax} (device = fax)"),
                format!("checks[6] accepted_values fact_views.device: 1 rows whose device is not one of desktop, mobile, tablet; e.g. {fax} (device = fax)"),
            ],
            &format!("views, {label}"),
        );
        // The other facts refer to that day too: it comes back.
        let (y, m, d) = (day / 10_000, day / 100 % 100, day % 100);
        let weekday = chrono::NaiveDate::from_ymd_opt(y as i32, m as u32, d as u32)
            .map(|t| chrono::Datelike::weekday(&t).number_from_monday())
            .unwrap_or_default();
        exec(
            &pool,
            &format!(
                "INSERT INTO dim_date (date_key, date, year, month, day, weekday) VALUES ({day}, '{date}', {y}, {m}, {d}, {weekday})"
            ),
        )
        .await?;

        // engagement: three old rows deleted, every time moved 40 days back.
        let w = watermark(&pool, "engagement", "extract_engagement").await?;
        let gone = texts(
            &pool,
            &format!(
                "SELECT event_id FROM fact_engagement WHERE ts_ms < {} ORDER BY event_id LIMIT 3",
                w - OLD_MS
            ),
        )
        .await?;
        assert_eq!(gone.len(), 3);
        exec(
            &pool,
            &format!(
                "DELETE FROM fact_engagement WHERE event_id IN ('{}')",
                gone.join("', '")
            ),
        )
        .await?;
        exec(
            &pool,
            "UPDATE fact_engagement SET ts_ms = ts_ms - 3456000000",
        )
        .await?;
        // Anonymous views have no viewer; one more loses its viewer.
        let viewer_lost = text(
            &pool,
            &format!(
                "SELECT event_id FROM fact_engagement WHERE user_id IS NOT NULL AND ts_ms < {} ORDER BY event_id LIMIT 1",
                w - OLD_MS - 3456000000
            ),
        )
        .await?;
        exec(
            &pool,
            &format!("UPDATE fact_engagement SET user_id = NULL WHERE event_id = '{viewer_lost}'"),
        )
        .await?;
        let anonymous = count(
            &pool,
            "SELECT COUNT(*) FROM fact_engagement WHERE user_id IS NULL",
        )
        .await?;
        let out = run(&all, &["run", "engagement", "--no-skip"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "errors fail the run ({label}):\n{stdout}"
        );
        holds(
            &stdout,
            &[
                "checks[6] freshness fact_engagement.ts_ms within 1day 2h: 1 stale table: the newest ts_ms".into(),
                "checks[7] row_count fact_engagement: 3 events that differ (3 missing)".into(),
                format!("{} (missing)", gone[0]),
                format!("checks[8] not_null fact_engagement(user_id): {anonymous} rows with a NULL (user_id: {anonymous}); e.g. event_id = "),
            ],
            &format!("engagement, {label}"),
        );

        // sessions: a start event id copied onto another session (an error),
        // a device set to NULL (a warning).
        let w = watermark(&pool, "sessions", "extract_started").await?;
        let old = texts(
            &pool,
            &format!("SELECT session_id FROM fact_sessions WHERE started_ms < {} ORDER BY session_id LIMIT 3", w - OLD_MS),
        )
        .await?;
        // Sessions whose start is not in the file have NULL start columns.
        let nulls = count(
            &pool,
            "SELECT COUNT(*) FROM fact_sessions WHERE started_ms IS NULL OR start_date_key IS NULL OR device IS NULL",
        )
        .await?;
        let copied = text(
            &pool,
            &format!(
                "SELECT started_event_id FROM fact_sessions WHERE session_id = '{}'",
                old[0]
            ),
        )
        .await?;
        exec(
            &pool,
            &format!(
                "UPDATE fact_sessions SET started_event_id = '{copied}' WHERE session_id = '{}'",
                old[1]
            ),
        )
        .await?;
        exec(
            &pool,
            &format!(
                "UPDATE fact_sessions SET device = NULL WHERE session_id = '{}'",
                old[2]
            ),
        )
        .await?;
        let out = run(&shipped, &["run", "sessions", "--no-skip"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "errors fail the run ({label}):\n{stdout}"
        );
        holds(
            &stdout,
            &[
                format!("{:<22} FAILED after 1 attempt(s): 1 of 9 checks failed", "check_sessions"),
                format!("checks[1] unique fact_sessions(started_event_id): 1 values held by more than one row; e.g. {copied} (2 rows)"),
                format!("(warn) checks[2] not_null fact_sessions(started_ms, start_date_key, device): {} rows with a NULL (", nulls + 1),
                format!("session_id = {}", old[2]),
            ],
            &format!("sessions, {label}"),
        );

        // shares: a sharer's user versions deleted: a warning, and the run
        // succeeds.
        let sharer = text(&pool, "SELECT MIN(user_id) FROM fact_shares").await?;
        exec(
            &pool,
            &format!("DELETE FROM dim_user WHERE user_id = '{sharer}'"),
        )
        .await?;
        let n = count(
            &pool,
            "SELECT COUNT(*) FROM fact_shares WHERE user_id NOT IN (SELECT user_id FROM dim_user)",
        )
        .await?;
        let by_sharer = count(
            &pool,
            &format!("SELECT COUNT(*) FROM fact_shares WHERE user_id = '{sharer}'"),
        )
        .await?;
        assert!(n >= by_sharer && by_sharer > 0);
        let out = ok(run(&shipped, &["run", "shares", "--no-skip"]));
        holds(
            &out,
            &[
                format!("{:<22} ok: 7 of 8 checks passed; 1 warned", "check_shares"),
                format!("(warn) checks[4] relationships fact_shares.user_id -> dim_user.user_id valid at fact_shares.ts_ms: {n} rows whose user_id is not in dim_user.user_id at their time"),
            ],
            &format!("shares, {label}"),
        );
        pool.close().await;
    }
    Ok(())
}
