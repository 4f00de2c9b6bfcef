//! `cutover slice` on every warehouse, from the events file and from
//! MongoDB: seeded events across a daylight-saving change, plus a session
//! that ended before it started; the slice covers every stratum the data
//! holds, lists the others as empty, is the same for the same seed, agrees
//! on a fresh load, and shows a damaged row of a sampled presentation. The
//! HTML document is read back by a headless browser.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Result;
use serde_json::{json, Value};

use crate::support::{self, cutover_with, ok, TestWarehouse};

/// The strata the seeded data holds, whatever the seed.
const PRESENT: &[&str] = &[
    "day.first",
    "day.last",
    "day.busiest",
    "day.quietest",
    "day.dst_before",
    "day.dst_change",
    "day.dst_after",
    "plan.free",
    "plan.pro",
    "plan.team",
    "plan.changer",
    "plan.anonymous",
    "plan.unknown",
    "device.desktop",
    "device.mobile",
    "device.tablet",
    "channel.email",
    "channel.link",
    "channel.slack",
    "channel.embed",
    "payload.v1",
    "payload.v2",
    "dirt.late",
    "dirt.duplicate",
    "dirt.session_end_before_start",
    "dirt.renamed",
];

/// Seeded events from 2026-03-22 over 14 days (Europe/Berlin moves its
/// clocks on 2026-03-29), and a session whose end came before its start.
fn events_file(dir: &Path) -> PathBuf {
    let path = dir.join("events.jsonl");
    ok(Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "seed",
            "--events",
            "3000",
            "--seed",
            "41",
            "--start",
            "2026-03-22",
            "--out",
        ])
        .arg(&path)
        .output()
        .unwrap());
    let start = 1_774_519_200_000_i64; // 2026-03-26T10:00:00Z
    let date = |ms: i64| json!({ "$date": { "$numberLong": ms.to_string() } });
    let lines = [
        json!({ "_id": { "$oid": "69c5000000000000000000a1" }, "event_id": "backwards-start", "type": "session.started",
                "ts": date(start), "session_id": "s-backwards", "user_id": null, "payload": { "device": "tablet" } }),
        json!({ "_id": { "$oid": "69c5000000000000000000a2" }, "event_id": "backwards-view", "type": "presentation.viewed",
                "ts": date(start + 1_000), "session_id": "s-backwards", "presentation_id": "p-backwards", "user_id": null,
                "payload": { "device": "tablet", "referrer": null } }),
        json!({ "_id": { "$oid": "69c5000000000000000000a3" }, "event_id": "backwards-end", "type": "session.ended",
                "ts": date(start - 300_000), "session_id": "s-backwards", "payload": {} }),
    ];
    let mut text = std::fs::read_to_string(&path).unwrap();
    for l in lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

struct Setup {
    source: String,
    dags: PathBuf,
    extra: Vec<String>,
    label: String,
}

impl Setup {
    fn run(&self, wh: &str, work: &Path, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        if args.first() == Some(&"slice") {
            all.extend(self.extra.iter().map(String::as_str));
        }
        cutover_with(&self.source, wh, work, &self.dags, &all)
    }

    /// `cutover slice` with seed 5 (or `seed`), 30 samples, Europe/Berlin.
    fn slice_as(&self, wh: &str, work: &Path, seed: &str, more: &[&str]) -> Output {
        let mut args = vec![
            "slice",
            "--seed",
            seed,
            "--size",
            "30",
            "--time-zone",
            "Europe/Berlin",
        ];
        args.extend(more);
        self.run(wh, work, &args)
    }

    fn slice(&self, wh: &str, work: &Path, seed: &str) -> (Option<i32>, Value) {
        let out = self.slice_as(wh, work, seed, &["--format", "json"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "{}: slice printed no JSON ({e}):\n{stdout}\n{}",
                self.label,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), value)
    }
}

/// What decides a slice: its samples and their rows.
fn choice(v: &Value) -> (Value, Value) {
    let rows: Vec<Value> = v["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!([r["report"], r["rows"]]))
        .collect();
    (v["samples"].clone(), Value::Array(rows))
}

fn rows_of<'v>(v: &'v Value, report: &str) -> Vec<&'v Value> {
    v["reports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["report"] == report)
        .flat_map(|r| r["rows"].as_array().unwrap())
        .collect()
}

async fn slice_on(s: &Setup, w: &TestWarehouse, browse: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    let label = format!("{} from {}", w.name, s.label);
    ok(s.run(&w.url, &work, &["run", "--all"]));

    let (code, v) = s.slice(&w.url, &work, "5");
    assert_eq!(code, Some(0), "{label}: a fresh load agrees: {v:#}");
    assert_eq!(v["status"], "equal");
    let strata = v["strata"].as_array().unwrap();
    for name in PRESENT {
        let st = strata.iter().find(|x| x["name"] == *name).unwrap();
        assert!(
            st["candidates"].as_u64().unwrap() > 0 && !st["samples"].as_array().unwrap().is_empty(),
            "{label}: {name} is covered: {st}"
        );
    }
    // Every stratum is listed; one the data cannot hold is empty.
    assert!(strata.len() >= PRESENT.len());
    for st in strata {
        let empty = st["candidates"] == 0;
        assert_eq!(
            empty,
            st["samples"].as_array().unwrap().is_empty(),
            "{label}: {st}"
        );
    }
    let samples = v["samples"].as_array().unwrap();
    assert!(samples.len() >= 30, "{label}: {}", samples.len());
    let backwards = samples
        .iter()
        .find(|x| {
            x["strata"]
                .as_array()
                .unwrap()
                .contains(&json!("dirt.session_end_before_start"))
        })
        .unwrap();
    assert_eq!(backwards["entity"]["id"], "s-backwards");
    let sessions = rows_of(&v, "sessions_daily");
    assert!(
        sessions
            .iter()
            .any(|r| r["key"] == json!(["2026-03-26", "tablet"])
                && r["samples"].as_array().unwrap().contains(&backwards["n"])),
        "{label}: the backwards session's row is shown: {sessions:?}"
    );
    for report in [
        "views_daily",
        "slide_engagement",
        "shares_daily",
        "sessions_daily",
        "views_by_plan",
    ] {
        let rows = rows_of(&v, report);
        assert!(!rows.is_empty(), "{label}: {report} has sampled rows");
        assert!(
            rows.iter().all(|r| r["verdict"] == "equal"),
            "{label}: {report}"
        );
    }

    // The same seed gives the same slice; another seed another.
    let (_, again) = s.slice(&w.url, &work, "5");
    assert_eq!(choice(&again), choice(&v), "{label}: deterministic");
    let (_, other) = s.slice(&w.url, &work, "6");
    assert_ne!(other["samples"], v["samples"], "{label}: another seed");

    // Damage a views_daily row of a sampled presentation.
    let row = rows_of(&v, "views_daily")
        .into_iter()
        .find(|r| r["legacy"][0].as_i64().unwrap() >= 2)
        .expect("a sampled presentation with two views on a day")
        .clone();
    let (day, presentation) = (
        row["key"][0].as_str().unwrap(),
        row["key"][1].as_str().unwrap(),
    );
    let pool = support::pool(&w.url).await?;
    let from = day_ms(day);
    let victim: String = sqlx::query_scalar(&sql_params(
        "SELECT event_id FROM fact_views WHERE presentation_id = {} AND ts_ms >= {} AND ts_ms < {} ORDER BY event_id LIMIT 1",
        &w.url,
    ))
    .bind(presentation)
    .bind(from)
    .bind(from + 86_400_000)
    .fetch_one(&pool)
    .await?;
    sqlx::query(&sql_params(
        "DELETE FROM fact_views WHERE event_id = {}",
        &w.url,
    ))
    .bind(&victim)
    .execute(&pool)
    .await?;
    pool.close().await;

    let (code, damaged) = s.slice(&w.url, &work, "5");
    assert_eq!(code, Some(1), "{label}: a difference exits 1");
    assert_eq!(damaged["status"], "differs");
    let shown = rows_of(&damaged, "views_daily")
        .into_iter()
        .find(|r| r["key"] == row["key"])
        .unwrap();
    assert_eq!(shown["verdict"], "differs", "{label}: {shown}");
    assert!(shown["differing"]
        .as_array()
        .unwrap()
        .contains(&json!("views")));
    assert_eq!(
        shown["warehouse"][0].as_i64().unwrap() + 1,
        shown["legacy"][0].as_i64().unwrap()
    );

    // The documents a reviewer reads say the same.
    let md = s.slice_as(&w.url, &work, "5", &["--format", "markdown"]);
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(md.contains("## views_daily: DIFFERS"), "{label}:\n{md}");
    assert!(
        md.contains("cutover slice --size 30 --seed 5"),
        "{label}: the command is given"
    );
    assert!(
        md.contains("| **DIFFERS** |"),
        "{label}: the difference is highlighted"
    );
    if browse {
        let page = dir.path().join("slice.html");
        let out = s.slice_as(
            &w.url,
            &work,
            "5",
            &["--format", "html", "--out", page.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(1));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(" differing: written to") && !said.contains(" 0 differing"),
            "{said}"
        );
        browse_page(&page, presentation, day);
    }
    Ok(())
}

/// The page as a browser builds it: the differing row is highlighted, and
/// every report, the strata and the sign-off are there.
fn browse_page(page: &Path, presentation: &str, day: &str) {
    let Some(chromium) = support::chromium() else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<h1>Diagonal slice: ") && dom.contains("sampled rows DIFFER</h1>"),
        "{dom}"
    );
    for heading in [
        "Strata",
        "Samples",
        "views_daily: DIFFERS",
        "slide_engagement: equal",
        "Sign-off",
    ] {
        assert!(
            dom.contains(&format!("<h2>{heading}</h2>")),
            "{heading}: {dom}"
        );
    }
    let differing: Vec<&str> = dom
        .split("<tr class=\"differs\">")
        .skip(1)
        .map(|r| r.split("</tr>").next().unwrap())
        .collect();
    assert!(
        differing.iter().any(|r| r.contains(presentation)
            && r.contains(day)
            && r.contains("<td class=\"differs\">")),
        "the damaged row is highlighted: {differing:?}"
    );
}

fn day_ms(day: &str) -> i64 {
    let d = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
    d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis()
}

/// `{}` placeholders as the backend's parameter markers.
fn sql_params(q: &str, url: &str) -> String {
    let mut out = String::new();
    let mut n = 0;
    for (i, part) in q.split("{}").enumerate() {
        if i > 0 {
            n += 1;
            if url.starts_with("postgres") {
                out.push_str(&format!("${n}"));
            } else {
                out.push('?');
            }
        }
        out.push_str(part);
    }
    out
}

#[tokio::test]
async fn the_slice_covers_every_stratum_and_shows_damage_from_a_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = events_file(dir.path());
    for (i, w) in support::warehouses().await?.iter().enumerate() {
        let s = Setup {
            source: path.display().to_string(),
            dags: support::root().join("dags"),
            extra: Vec::new(),
            label: "a file".into(),
        };
        slice_on(&s, w, i == 0).await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_slice_covers_every_stratum_and_shows_damage_from_mongodb() -> Result<()> {
    let Some(url) = support::server("CUTOVER_TEST_MONGO_URL") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let path = events_file(dir.path());
    for w in support::warehouses().await? {
        let (_client, db) = crate::mongo::load_events(&url, &path).await?;
        let s = Setup {
            source: url.clone(),
            dags: support::dags_for_database(dir.path(), &db)?,
            extra: vec!["--database".into(), db],
            label: "MongoDB".into(),
        };
        slice_on(&s, &w, false).await?;
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
    let (code, err) = run(&["slice", "--time-zone", "Mars/Olympus"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("`Mars/Olympus` is not an IANA time zone"),
        "{err}"
    );
    let (code, err) = run(&["slice", "--from", "2026-01-09", "--to", "2026-01-02"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--to must be a later day"), "{err}");
    let (code, err) = run(&["slice"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("none.jsonl"),
        "a missing events file is named: {err}"
    );
}
