//! The views data point end to end on every available warehouse: its numbers
//! against an independent computation, idempotence, and quarantine.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::Result;
use serde_json::{json, Value};

use crate::support::{self, count, cutover, cutover_with, ok, read_events, snapshot, RawEvent};

/// The views_daily report computed straight from the file: valid
/// `presentation.viewed` documents, once per `event_id`.
pub fn expected_views_daily(events: &[RawEvent]) -> (Value, usize) {
    let mut seen = HashSet::new();
    let mut groups: BTreeMap<(String, String), (i64, BTreeSet<String>)> = BTreeMap::new();
    let mut invalid = BTreeSet::new();
    for e in events {
        if e.str("type") != Some("presentation.viewed") {
            continue;
        }
        let valid = e.str("event_id").is_some()
            && e.ts_ms().is_some()
            && e.str("presentation_id").is_some()
            && e.str("session_id").is_some()
            && e.nullable_str("user_id").is_some()
            && e.nullable_str("payload.referrer").is_some()
            && matches!(
                e.str("payload.device"),
                Some("desktop" | "mobile" | "tablet")
            );
        if !valid {
            invalid.insert(e.id.clone());
            continue;
        }
        if !seen.insert(e.str("event_id").unwrap().to_owned()) {
            continue;
        }
        let g = groups
            .entry((
                e.day().unwrap(),
                e.str("presentation_id").unwrap().to_owned(),
            ))
            .or_default();
        g.0 += 1;
        if let Some(Some(u)) = e.nullable_str("user_id") {
            g.1.insert(u.to_owned());
        }
    }
    let rows = groups
        .into_iter()
        .map(|((day, p), (views, users))| {
            json!({ "day": day, "presentation_id": p, "views": views, "unique_viewers": users.len() })
        })
        .collect();
    (Value::Array(rows), invalid.len())
}

#[tokio::test]
async fn views_match_an_independent_count_rerun_changes_nothing_and_invalid_documents_are_quarantined(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let events_file = support::seed(dir.path(), 6_000, 11);
    let events = read_events(&events_file);
    let (expected, invalid) = expected_views_daily(&events);
    assert!(invalid > 0, "the seed must hold invalid views");

    for wh in support::warehouses().await? {
        let work = dir.path().join(format!("work-{}", wh.name));
        let out = ok(cutover(&events_file, &wh.url, &work, &["run", "views"]));
        assert!(
            out.contains("views run") && out.contains("succeeded"),
            "{out}"
        );
        assert!(out.contains("fact_views matches the source"), "{out}");
        // A first load reads every day whole: the extract's digests settle
        // them all, and the source is not read a second time.
        assert!(
            out.contains("against the extract's digests, 0 read again"),
            "{out}"
        );

        let report = ok(cutover(
            &events_file,
            &wh.url,
            &work,
            &["report", "views_daily", "--format", "json"],
        ));
        let report: Value = serde_json::from_str(&report)?;
        assert_eq!(report, expected, "views_daily on {}", wh.name);

        let pool = support::pool(&wh.url).await?;
        let quarantined = count(
            &pool,
            "SELECT COUNT(*) FROM cutover_quarantine WHERE dag = 'views'",
        )
        .await?;
        assert_eq!(quarantined as usize, invalid, "quarantine on {}", wh.name);
        let reasons = snapshot(&pool, "cutover_quarantine", &["reason"]).await?;
        assert!(reasons.iter().all(|r| r.contains("column ")), "{reasons:?}");
        let raw_ok = count(
            &pool,
            "SELECT COUNT(*) FROM cutover_quarantine WHERE raw LIKE '%presentation.viewed%'",
        )
        .await?;
        assert_eq!(raw_ok, quarantined, "the raw document is kept");

        let tables = crate::star::STAR;
        let mut before = Vec::new();
        for (t, cols) in tables {
            before.push(snapshot(&pool, t, cols).await?);
        }

        let again = ok(cutover(&events_file, &wh.url, &work, &["run", "views"]));
        assert!(
            support::changed_nothing(&again),
            "a second run changes nothing:\n{again}"
        );
        for ((t, cols), b) in tables.iter().zip(&before) {
            assert_eq!(
                &snapshot(&pool, t, cols).await?,
                b,
                "{t} changed on the second run on {}",
                wh.name
            );
        }

        let runs: Value = serde_json::from_str(&ok(cutover(
            &events_file,
            &wh.url,
            &work,
            &["runs", "--format", "json"],
        )))?;
        let runs = runs.as_array().unwrap();
        assert_eq!(runs.len(), 2);
        assert!(runs
            .iter()
            .all(|r| r["state"] == "succeeded" && r["dag"] == "views"));
        assert_eq!(
            runs[1]["rows_quarantined"],
            json!(invalid),
            "the first run counts its quarantine"
        );

        let day: Value = serde_json::from_str(&ok(cutover(
            &events_file,
            &wh.url,
            &work,
            &[
                "report",
                "views_daily",
                "--from",
                "2026-01-07",
                "--to",
                "2026-01-08T00:00:00Z",
                "--format",
                "json",
            ],
        )))?;
        let want: Vec<&Value> = expected
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["day"] == "2026-01-07")
            .collect();
        assert!(!want.is_empty());
        assert_eq!(
            day.as_array().unwrap().iter().collect::<Vec<_>>(),
            want,
            "--from/--to on {}",
            wh.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn late_events_inside_the_lookback_are_picked_up_by_the_next_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let events_file = support::seed(dir.path(), 2_000, 5);
    let text = std::fs::read_to_string(&events_file)?;
    let lines: Vec<&str> = text.lines().collect();
    // The first run sees the first part of the file, the second the rest:
    // late arrivals in the rest are older than the first run's watermark.
    let split = lines.len() * 2 / 3;
    std::fs::write(&events_file, lines[..split].join("\n") + "\n")?;
    for wh in support::warehouses().await? {
        let work = dir.path().join(format!("work-{}", wh.name));
        std::fs::write(&events_file, lines[..split].join("\n") + "\n")?;
        ok(cutover(&events_file, &wh.url, &work, &["run", "views"]));
        std::fs::write(&events_file, text.clone())?;
        let out = ok(cutover(&events_file, &wh.url, &work, &["run", "views"]));
        assert!(out.contains("fact_views matches the source"), "{out}");
        let report: Value = serde_json::from_str(&ok(cutover(
            &events_file,
            &wh.url,
            &work,
            &["report", "views_daily", "--format", "json"],
        )))?;
        let (expected, _) = expected_views_daily(&read_events(&events_file));
        assert_eq!(report, expected, "on {}", wh.name);
    }
    Ok(())
}

#[tokio::test]
async fn a_failed_run_is_listed_with_its_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let events_file = support::seed(dir.path(), 200, 7);
    // A load into a table that no migration creates fails at run time.
    let dags = support::dags_edited(dir.path(), |text| {
        text.replace(
            "{ output = \"fact_views\", key",
            "{ output = \"fact_views\", table = \"no_such_table\", key",
        )
    })?;
    for wh in support::warehouses().await? {
        let work = dir.path().join(format!("work-{}", wh.name));
        let source = events_file.display().to_string();
        let out = support::cutover_with(&source, &wh.url, &work, &dags, &["run", "views"]);
        assert!(!out.status.success(), "the run fails on {}", wh.name);
        let runs: Value = serde_json::from_str(&ok(support::cutover_with(
            &source,
            &wh.url,
            &work,
            &dags,
            &["runs", "--format", "json"],
        )))?;
        assert_eq!(runs[0]["state"], "failed", "{runs}");
        let error = runs[0]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("load_views") && error.contains("no_such_table"),
            "the error names the task and the table on {}: {error}",
            wh.name
        );
    }
    Ok(())
}

/// A first load that lost an event (here a transform that leaves one out)
/// is not let through by the per-day digests: the day that differs is read
/// again and the verify and the `row_count` check name the event.
#[tokio::test]
async fn a_first_load_that_lost_an_event_fails_naming_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let events_file = support::seed(dir.path(), 3_000, 17);
    let events = read_events(&events_file);
    let lost = events
        .iter()
        .filter(|e| e.str("type") == Some("presentation.viewed"))
        .filter_map(|e| e.str("event_id"))
        .find(|id| id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .expect("a view")
        .to_owned();
    let dags = support::dags_edited(dir.path(), |text| {
        text.replace(
            "       presentation_id, session_id, user_id, device, referrer, doc_id\nFROM extract_views\n",
            &format!(
                "       presentation_id, session_id, user_id, device, referrer, doc_id\nFROM extract_views\nWHERE event_id <> '{lost}'\n"
            ),
        )
    })?;
    assert!(std::fs::read_to_string(dags.join("views.toml"))?.contains(&lost));
    for wh in support::warehouses().await? {
        let work = dir.path().join(format!("work-{}", wh.name));
        let source = events_file.display().to_string();
        let out = cutover_with(&source, &wh.url, &work, &dags, &["run", "views"]);
        assert!(!out.status.success(), "the run must fail on {}", wh.name);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("fact_views differs from the source on 1 day(s)")
                && text.contains(&format!("missing from the table: {lost}")),
            "verify on {}:\n{text}",
            wh.name
        );
        assert!(
            text.contains(&format!("{lost} (missing)")),
            "row_count on {}:\n{text}",
            wh.name
        );
    }
    Ok(())
}
