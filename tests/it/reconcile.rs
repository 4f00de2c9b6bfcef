//! `cutover reconcile` on every warehouse, from the events file and from
//! MongoDB: a warehouse loaded from seeded events reconciles clean; then it
//! is damaged in five independent ways and the reconciliation names each
//! damaged report and day and the exact events behind it, also when the
//! drill-down must bisect its days into small windows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sqlx::AnyPool;
use sqlx::Row;

use crate::support::{self, cutover_with, ok, text, TestWarehouse};

/// Where the events are.
enum Events {
    File(std::path::PathBuf),
    Mongo {
        url: String,
        client: mongodb::Client,
        db: String,
    },
}

impl Events {
    fn url(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Mongo { url, .. } => url.clone(),
        }
    }

    /// Adds one document after the load.
    async fn append(&self, line: &Value) -> Result<()> {
        match self {
            Self::File(p) => {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(p)?;
                writeln!(f, "{line}")?;
            }
            Self::Mongo { client, db, .. } => {
                let bson::Bson::Document(doc) = bson::Bson::try_from(line.clone())? else {
                    unreachable!()
                };
                client
                    .database(db)
                    .collection::<bson::Document>("events")
                    .insert_one(doc)
                    .await?;
            }
        }
        Ok(())
    }
}

struct Setup {
    events: Events,
    dags: std::path::PathBuf,
    database: String,
}

fn run(s: &Setup, wh: &str, work: &Path, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    if args.first() == Some(&"reconcile") {
        all.extend(["--database", &s.database]);
    }
    cutover_with(&s.events.url(), wh, work, &s.dags, &all)
}

fn day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

async fn one(pool: &AnyPool, sql: &str) -> Result<sqlx::any::AnyRow> {
    sqlx::query(sql)
        .fetch_one(pool)
        .await
        .with_context(|| sql.to_owned())
}

/// What the damages were, to find in the result.
struct Damage {
    /// A deleted views fact.
    view: (String, String),
    /// Two engagement facts whose dwells were swapped, and their day.
    swapped: (String, String, String),
    /// A user whose plan version was altered, and the days of their views
    /// in that version.
    user: (String, BTreeSet<String>),
    /// A share added to the source after the load.
    added: (String, String),
    /// A share quarantined (and so missing) although the legacy counts it.
    quarantined: (String, String),
}

async fn damage(s: &Setup, pool: &AnyPool) -> Result<Damage> {
    let exec = |sql: String| async move {
        sqlx::query(&sql)
            .execute(pool)
            .await
            .with_context(|| sql.clone())
    };
    // 1. A views fact deleted.
    let r = one(
        pool,
        "SELECT event_id, ts_ms FROM fact_views ORDER BY ts_ms, event_id LIMIT 1 OFFSET 40",
    )
    .await?;
    let view = (text(&r, "event_id"), day(r.try_get("ts_ms")?));
    exec(format!(
        "DELETE FROM fact_views WHERE event_id = '{}'",
        view.0
    ))
    .await?;

    // 2. Two engagement dwells swapped on one day: counts and sums agree.
    let rows = sqlx::query(
        "SELECT a.event_id AS a, b.event_id AS b, a.dwell_ms AS da, b.dwell_ms AS db, a.ts_ms AS ts \
         FROM fact_engagement a JOIN fact_engagement b \
           ON a.date_key = b.date_key AND a.event_id < b.event_id \
          AND a.dwell_ms <> b.dwell_ms AND (a.presentation_id <> b.presentation_id OR a.slide <> b.slide) \
         ORDER BY a.ts_ms, a.event_id, b.event_id LIMIT 1",
    )
    .fetch_all(pool)
    .await?;
    let r = &rows[0];
    let (a, b) = (text(r, "a"), text(r, "b"));
    let (da, db): (i64, i64) = (r.try_get("da")?, r.try_get("db")?);
    exec(format!(
        "UPDATE fact_engagement SET dwell_ms = {db} WHERE event_id = '{a}'"
    ))
    .await?;
    exec(format!(
        "UPDATE fact_engagement SET dwell_ms = {da} WHERE event_id = '{b}'"
    ))
    .await?;
    let swapped = (a, b, day(r.try_get("ts")?));

    // 3. A user dimension version given another plan.
    let r = one(
        pool,
        "SELECT u.version_id, u.user_id, u.plan FROM fact_views f JOIN dim_user u \
           ON u.user_id = f.user_id AND u.valid_from_ms <= f.ts_ms \
          AND (u.valid_to_ms IS NULL OR f.ts_ms < u.valid_to_ms) \
         ORDER BY f.ts_ms DESC, f.event_id LIMIT 1",
    )
    .await?;
    let (version, user, plan) = (
        text(&r, "version_id"),
        text(&r, "user_id"),
        text(&r, "plan"),
    );
    let other = if plan == "team" { "free" } else { "team" };
    exec(format!(
        "UPDATE dim_user SET plan = '{other}' WHERE version_id = '{version}'"
    ))
    .await?;
    let days: BTreeSet<String> = sqlx::query(&format!(
        "SELECT f.ts_ms FROM fact_views f JOIN dim_user u ON u.user_id = f.user_id \
           AND u.valid_from_ms <= f.ts_ms AND (u.valid_to_ms IS NULL OR f.ts_ms < u.valid_to_ms) \
         WHERE u.version_id = '{version}'"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| day(r.get::<i64, _>(0)))
    .collect();

    // 4. A share quarantined: its fact gone, the quarantine holding it.
    let r = one(
        pool,
        "SELECT event_id, ts_ms, doc_id FROM fact_shares ORDER BY ts_ms, event_id LIMIT 1 OFFSET 5",
    )
    .await?;
    let quarantined = (text(&r, "event_id"), day(r.try_get("ts_ms")?));
    exec(format!(
        "DELETE FROM fact_shares WHERE event_id = '{}'",
        quarantined.0
    ))
    .await?;
    exec(format!(
        "INSERT INTO cutover_quarantine (dag, task, doc_id, event_id, event_type, reason, raw, run_id, quarantined_at) \
         VALUES ('shares', 'load_shares', '{}', '{}', 'presentation.shared', 'damaged by the test', '{{}}', 'test', '2026-01-01T00:00:00Z')",
        text(&r, "doc_id"),
        quarantined.0
    ))
    .await?;

    // 5. A share added to the source after the load, on another day.
    let r = one(pool, "SELECT MAX(ts_ms) FROM fact_shares").await?;
    let last: i64 = r.try_get(0)?;
    let ts = last - 3_600_000;
    assert_ne!(day(ts), quarantined.1, "the seed spans days");
    let added = ("late-share-1".to_owned(), day(ts));
    s.events
        .append(&json!({
            "_id": { "$oid": "7fffffffffffffffffffff01" },
            "event_id": added.0,
            "type": "presentation.shared",
            "ts": { "$date": { "$numberLong": ts.to_string() } },
            "presentation_id": "p-added",
            "user_id": "u-added",
            "payload": { "channel": "slack" }
        }))
        .await?;
    Ok(Damage {
        view,
        swapped,
        user: (user, days),
        added,
        quarantined,
    })
}

/// The differing days of each report.
fn differing(result: &Value) -> BTreeMap<String, BTreeSet<String>> {
    result["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let days = r["days"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["status"] == "differs")
                .map(|d| d["day"].as_str().unwrap().to_owned())
                .collect();
            (r["report"].as_str().unwrap().to_owned(), days)
        })
        .collect()
}

/// The findings (kind, id) of a report's day.
fn findings(result: &Value, report: &str, day: &str) -> Vec<(String, String, String)> {
    let r = result["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["report"] == report)
        .unwrap();
    let d = r["days"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["day"] == day)
        .unwrap();
    d["events"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["id"].as_str().unwrap().to_owned(),
                f["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn kinds_ids(f: &[(String, String, String)]) -> BTreeSet<(String, String)> {
    f.iter().map(|(k, i, _)| (k.clone(), i.clone())).collect()
}

fn pair(kind: &str, id: &str) -> (String, String) {
    (kind.to_owned(), id.to_owned())
}

fn reconcile_json(s: &Setup, wh: &str, work: &Path, extra: &[&str]) -> (bool, Value) {
    let mut args = vec!["reconcile", "--format", "json", "--sample", "1000"];
    args.extend(extra);
    let out = run(s, wh, work, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "reconcile printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), value)
}

async fn damaged_reports_are_named(s: &Setup, w: &TestWarehouse) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    let label = format!(
        "{} from {}",
        w.name,
        match s.events {
            Events::File(_) => "a file",
            Events::Mongo { .. } => "MongoDB",
        }
    );
    let out = ok(run(s, &w.url, &work, &["run", "--all"]));
    assert!(
        out.contains("equal to the legacy reports"),
        "{label}: the DAGs prove their reports:\n{out}"
    );

    let (clean, result) = reconcile_json(s, &w.url, &work, &[]);
    assert!(clean, "{label}: a fresh load reconciles clean: {result:#}");
    assert_eq!(result["status"], "equal");
    assert!(differing(&result).values().all(BTreeSet::is_empty));

    let pool = support::pool(&w.url).await?;
    let d = damage(s, &pool).await?;
    // A small limit makes every differing day bisect into windows (on
    // MongoDB, each window costs a count aggregation: kept to a few).
    let small = match s.events {
        Events::File(_) => "3",
        Events::Mongo { .. } => "12",
    };
    for limit in ["20000", small] {
        let (clean, result) = reconcile_json(s, &w.url, &work, &["--drill-limit", limit]);
        let label = format!("{label}, drill limit {limit}");
        assert!(!clean, "{label}: a damaged warehouse exits non-zero");
        let days = differing(&result);
        let expect = |v: &[&String]| v.iter().map(|s| (*s).clone()).collect::<BTreeSet<_>>();
        assert_eq!(days["views_daily"], expect(&[&d.view.1]), "{label}");
        assert_eq!(days["slide_engagement"], expect(&[&d.swapped.2]), "{label}");
        assert_eq!(
            days["shares_daily"],
            expect(&[&d.added.1, &d.quarantined.1]),
            "{label}"
        );
        assert!(
            days["sessions_daily"].is_empty(),
            "{label}: {:?}",
            days["sessions_daily"]
        );
        let mut by_plan = d.user.1.clone();
        by_plan.insert(d.view.1.clone());
        assert_eq!(days["views_by_plan"], by_plan, "{label}");

        assert_eq!(
            kinds_ids(&findings(&result, "views_daily", &d.view.1)),
            BTreeSet::from([pair("missing_from_facts", &d.view.0)]),
            "{label}"
        );
        assert_eq!(
            kinds_ids(&findings(&result, "slide_engagement", &d.swapped.2)),
            BTreeSet::from([
                pair("value_differs", &d.swapped.0),
                pair("value_differs", &d.swapped.1)
            ]),
            "{label}"
        );
        assert_eq!(
            kinds_ids(&findings(&result, "shares_daily", &d.added.1)),
            BTreeSet::from([pair("missing_from_facts", &d.added.0)]),
            "{label}"
        );
        let q = findings(&result, "shares_daily", &d.quarantined.1);
        assert_eq!(
            kinds_ids(&q),
            BTreeSet::from([pair("quarantined", &d.quarantined.0)]),
            "{label}"
        );
        assert!(
            q[0].2.contains("damaged by the test"),
            "{label}: the reason is given: {q:?}"
        );
        for day in &d.user.1 {
            let f = findings(&result, "views_by_plan", day);
            assert!(
                f.iter().any(|(k, _, detail)| k == "dimension_version"
                    && detail.contains(&format!("user {}", d.user.0))),
                "{label}: {day} names the user {}: {f:?}",
                d.user.0
            );
        }
    }

    // The table names the same, for people; the history lists every run.
    let out = run(s, &w.url, &work, &["reconcile", "shares_daily"]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("shares_daily on {}: DIFFERS", d.quarantined.1)),
        "{table}"
    );
    assert!(
        table.contains(&d.quarantined.0) && table.contains("quarantined"),
        "{table}"
    );
    let history: Value = serde_json::from_str(&ok(run(
        s,
        &w.url,
        &work,
        &["reconcile", "--history", "--format", "json"],
    )))?;
    let history = history.as_array().unwrap();
    assert!(history.len() >= 4, "{label}: {history:?}");
    assert_eq!(history[0]["status"], "differs");
    assert_eq!(history[0]["reports"], json!(["shares_daily=differs"]));
    assert!(history.iter().any(|h| h["status"] == "equal"));
    let shown: Value = serde_json::from_str(&ok(run(
        s,
        &w.url,
        &work,
        &["reconcile", "--show", history[0]["id"].as_str().unwrap()],
    )))?;
    assert_eq!(shown["id"], history[0]["id"]);
    assert_eq!(shown["reports"][0]["report"], "shares_daily");
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn damage_is_named_down_to_the_events_from_a_file() -> Result<()> {
    for w in support::warehouses().await? {
        let dir = tempfile::tempdir()?;
        let path = support::seed(dir.path(), 3_000, 31);
        let s = Setup {
            events: Events::File(path),
            dags: support::root().join("dags"),
            database: "app".into(),
        };
        damaged_reports_are_named(&s, &w).await?;
    }
    Ok(())
}

#[tokio::test]
async fn damage_is_named_down_to_the_events_from_mongodb() -> Result<()> {
    let Some(url) = support::server("CUTOVER_TEST_MONGO_URL") else {
        return Ok(());
    };
    for w in support::warehouses().await? {
        let dir = tempfile::tempdir()?;
        let path = support::seed(dir.path(), 3_000, 31);
        let (client, db) = crate::mongo::load_events(&url, &path).await?;
        let s = Setup {
            dags: support::dags_for_database(dir.path(), &db)?,
            events: Events::Mongo {
                url: url.clone(),
                client,
                db: db.clone(),
            },
            database: db,
        };
        damaged_reports_are_named(&s, &w).await?;
    }
    Ok(())
}

#[test]
fn bad_arguments_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let wh = format!("sqlite:{}", dir.path().join("w.db").display());
    let events = dir.path().join("none.jsonl");
    let run = |args: &[&str]| {
        let out = support::cutover(&events, &wh, &dir.path().join("work"), args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["reconcile", "views_weekly"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("views_weekly") && err.contains("data point"),
        "{err}"
    );
    let (code, err) = run(&["reconcile", "--from", "2026-02-30"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--from `2026-02-30` is not a day"), "{err}");
    let (code, err) = run(&["reconcile", "--show", "nope"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no reconciliation `nope`"), "{err}");
}
