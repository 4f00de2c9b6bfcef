//! The data points read from a MongoDB server (any server speaking the wire
//! protocol: `CUTOVER_TEST_MONGO_URL`, which `tests/run.sh` starts): the
//! warehouse's reports against the legacy aggregation pipelines, first in
//! full and then incrementally.

use anyhow::Result;
use bson::{Bson, Document};
use serde_json::Value;

use crate::star;
use crate::support::{self, cutover_with, ok, read_events};
use crate::views::expected_views_daily;

/// Loads an events file into a new database and returns its name.
pub(crate) async fn load_events(
    url: &str,
    path: &std::path::Path,
) -> Result<(mongodb::Client, String)> {
    let client = mongodb::Client::with_uri_str(url).await?;
    let db = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let coll = client.database(&db).collection::<Document>("events");
    let text = std::fs::read_to_string(path)?;
    let docs: Vec<Document> = text
        .lines()
        .map(
            |l| match Bson::try_from(serde_json::from_str::<Value>(l).unwrap()).unwrap() {
                Bson::Document(d) => d,
                _ => unreachable!(),
            },
        )
        .collect();
    for chunk in docs.chunks(1000) {
        coll.insert_many(chunk.to_vec()).await?;
    }
    Ok((client, db))
}

#[tokio::test]
async fn views_from_mongodb_match_an_independent_count() -> Result<()> {
    let Some(url) = support::server("CUTOVER_TEST_MONGO_URL") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let events_file = support::seed(dir.path(), 4_000, 21);
    let (expected, _) = expected_views_daily(&read_events(&events_file));
    let (client, db) = load_events(&url, &events_file).await?;
    let dags = support::dags_for_database(dir.path(), &db)?;

    let wh = format!("sqlite:{}", dir.path().join("w.db").display());
    let work = dir.path().join("work");
    let out = ok(cutover_with(&url, &wh, &work, &dags, &["run", "views"]));
    assert!(out.contains("fact_views matches the source"), "{out}");
    let report: Value = serde_json::from_str(&ok(cutover_with(
        &url,
        &wh,
        &work,
        &dags,
        &["report", "views_daily", "--format", "json"],
    )))?;
    assert_eq!(report, expected);
    let again = ok(cutover_with(&url, &wh, &work, &dags, &["run", "views"]));
    assert!(support::changed_nothing(&again), "{again}");
    client.database(&db).drop().await?;
    Ok(())
}

/// The committed watermark of an extract task, from a warehouse.
async fn watermark(url: &str, dag: &str, task: &str) -> Result<i64> {
    let pool = support::pool(url).await?;
    let w = support::count(
        &pool,
        &format!("SELECT ts_ms FROM cutover_watermarks WHERE dag = '{dag}' AND task = '{task}'"),
    )
    .await?;
    pool.close().await;
    Ok(w)
}

fn event(ty: &str, ts_ms: i64, fields: Document) -> Document {
    let mut d = bson::doc! {
        "_id": bson::oid::ObjectId::new(),
        "event_id": uuid::Uuid::new_v4().to_string(),
        "type": ty,
        "ts": bson::DateTime::from_millis(ts_ms),
        "v": 1,
    };
    d.extend(fields);
    d
}

/// Runs `run --all` from MongoDB into every warehouse and checks the five
/// reports against the legacy pipelines (computed once); returns them.
fn run_all_and_compare(
    url: &str,
    db: &str,
    dags: &std::path::Path,
    warehouses: &[support::TestWarehouse],
    work: &dyn Fn(&str) -> std::path::PathBuf,
    phase: &str,
) -> Vec<Value> {
    let mut legacy: Option<Vec<Value>> = None;
    for wh in warehouses {
        let out = ok(cutover_with(
            url,
            &wh.url,
            &work(wh.name),
            dags,
            &["run", "--all"],
        ));
        assert!(!out.contains("failed"), "{out}");
        let got = star::assert_reports_equal(
            url,
            &wh.url,
            &work(wh.name),
            dags,
            db,
            legacy.as_deref(),
            &format!("{} after {phase}", wh.name),
        );
        legacy.get_or_insert(got);
    }
    legacy.unwrap()
}

#[tokio::test]
async fn the_star_schema_from_100k_mongodb_events_equals_the_legacy_pipelines() -> Result<()> {
    let Some(url) = support::server("CUTOVER_TEST_MONGO_URL") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let events_file = support::seed(dir.path(), 100_000, 31);
    let (client, db) = load_events(&url, &events_file).await?;
    let dags = support::dags_for_database(dir.path(), &db)?;
    let warehouses = support::warehouses().await?;
    let work = |name: &str| dir.path().join(format!("work-{name}"));

    let legacy = run_all_and_compare(&url, &db, &dags, &warehouses, &work, "the first run");

    // The pipelines on the server agree with the same rules on the file.
    let file = events_file.display().to_string();
    for (report, from_mongo) in star::REPORTS.iter().zip(&legacy) {
        let out = ok(cutover_with(
            &file,
            &warehouses[0].url,
            &work("file"),
            &dags,
            &["report", report, "--source", "legacy", "--format", "json"],
        ));
        assert_eq!(
            &serde_json::from_str::<Value>(&out)?,
            from_mongo,
            "{report}: MongoDB pipelines and the file differ"
        );
    }
    client.database(&db).drop().await?;
    Ok(())
}

#[tokio::test]
async fn later_events_from_mongodb_appear_after_the_next_run_with_the_reports_still_equal(
) -> Result<()> {
    let Some(url) = support::server("CUTOVER_TEST_MONGO_URL") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let events_file = support::seed(dir.path(), 6_000, 32);
    let (client, db) = load_events(&url, &events_file).await?;
    let coll = client.database(&db).collection::<Document>("events");
    let dags = support::dags_for_database(dir.path(), &db)?;
    let warehouses = support::warehouses().await?;
    let work = |name: &str| dir.path().join(format!("work-{name}"));

    let check_all = |phase: &str| run_all_and_compare(&url, &db, &dags, &warehouses, &work, phase);
    check_all("the first run");

    // A second run changes nothing: the collection's mark (its count and
    // newest _id) is as the first run found it, so nothing after the
    // extracts runs.
    for wh in &warehouses {
        let before = star::star_snapshot(&wh.url).await?;
        let again = ok(cutover_with(
            &url,
            &wh.url,
            &work(wh.name),
            &dags,
            &["run", "--all"],
        ));
        assert!(
            again.contains("nothing new since run") && again.contains("ok: up to date"),
            "on {}:\n{again}",
            wh.name
        );
        assert_eq!(
            star::star_snapshot(&wh.url).await?,
            before,
            "on {}",
            wh.name
        );
    }

    // Events inserted afterwards: a view at the views watermark and a late
    // one inside the lookback, a plan change before them, the end of a
    // session whose start is loaded, and the end of a session whose start
    // arrives only later.
    let first = &warehouses[0].url;
    let w_view = watermark(first, "views", "extract_views").await?;
    let w_ended = watermark(first, "sessions", "extract_ended").await?;
    let w_started = watermark(first, "sessions", "extract_started").await?;
    let w_users = watermark(first, "users", "extract_users").await?;
    let user = "u000001";
    let open_session = {
        let pool = support::pool(&warehouses[0].url).await?;
        let row: (String, i64) = sqlx::query_as(
            "SELECT session_id, started_ms FROM fact_sessions \
             WHERE ended_ms IS NULL AND started_ms IS NOT NULL ORDER BY started_ms DESC LIMIT 1",
        )
        .fetch_one(&pool)
        .await?;
        row
    };
    let view = |ts: i64| {
        event(
            "presentation.viewed",
            ts,
            bson::doc! {
                "user_id": user, "presentation_id": "p000001", "session_id": "s-new-view",
                "payload": { "device": "tablet", "referrer": Bson::Null },
            },
        )
    };
    let plan_ts = (w_view - 3_600_000).max(w_users - 3_600_000);
    coll.insert_many(vec![
        view(w_view),
        view(w_view - 2 * 3_600_000),
        event(
            "user.plan_changed",
            plan_ts,
            bson::doc! { "user_id": user, "payload": { "plan": "team" } },
        ),
        event(
            "user.plan_changed",
            plan_ts,
            bson::doc! { "user_id": user, "payload": { "plan": "pro" } },
        ),
        event(
            "session.ended",
            w_ended,
            bson::doc! { "session_id": &open_session.0, "payload": {} },
        ),
        event(
            "session.ended",
            w_ended,
            bson::doc! { "session_id": "s-ends-first", "payload": {} },
        ),
    ])
    .await?;
    check_all("late events");
    for wh in &warehouses {
        let pool = support::pool(&wh.url).await?;
        let ended: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT ended_ms FROM fact_sessions WHERE session_id = '{}'",
            open_session.0
        ))
        .fetch_one(&pool)
        .await?;
        assert_eq!(
            ended,
            Some(w_ended),
            "the session is completed on {}",
            wh.name
        );
        let pending: (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT started_ms, ended_ms FROM fact_sessions WHERE session_id = 's-ends-first'",
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(
            pending,
            (None, Some(w_ended)),
            "the early end is kept on {}",
            wh.name
        );
        let views = support::count(
            &pool,
            "SELECT COUNT(*) FROM fact_views WHERE session_id = 's-new-view'",
        )
        .await?;
        assert_eq!(views, 2, "both new views are loaded on {}", wh.name);
        // Two plan changes at the same instant: the greater _id wins.
        let plan: String = sqlx::query_scalar(&format!(
            "SELECT plan FROM dim_user WHERE user_id = '{user}' AND valid_from_ms <= {plan_ts} \
             AND (valid_to_ms IS NULL OR {plan_ts} < valid_to_ms)"
        ))
        .fetch_one(&pool)
        .await?;
        assert_eq!(plan, "pro", "the plan at the time on {}", wh.name);
        pool.close().await;
    }

    // The start of the session whose end came first.
    coll.insert_one(event(
        "session.started",
        w_started - 3_600_000,
        bson::doc! { "session_id": "s-ends-first", "user_id": user, "payload": { "device": "mobile" } },
    ))
    .await?;
    check_all("a late start");
    for wh in &warehouses {
        let pool = support::pool(&wh.url).await?;
        let duration: Option<i64> = sqlx::query_scalar(
            "SELECT duration_ms FROM fact_sessions WHERE session_id = 's-ends-first'",
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(
            duration,
            Some(w_ended - (w_started - 3_600_000)),
            "on {}",
            wh.name
        );
        pool.close().await;
    }
    client.database(&db).drop().await?;
    Ok(())
}
