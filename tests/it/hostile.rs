//! Hostile input: production data is dirty, and one bad document must
//! never stop, freeze or silently skip the rest. A table of bad documents
//! (bytes, dates, lengths, characters a backend refuses, keys that collide
//! under a collation) goes through every warehouse from the events file,
//! from MongoDB and from the live feed: the rest loads, each bad document
//! is quarantined with its reason, where it was and its raw form, a second
//! run changes nothing, and the five reports equal the legacy ones computed
//! without the quarantined documents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::star;
use crate::support::{self, count, cutover_with, ok, pool};

/// A hostile document and what must become of it.
struct Case {
    /// Its `_id` (ObjectId hex).
    id: &'static str,
    /// What it is.
    what: &'static str,
    /// The line in the events file.
    line: Vec<u8>,
    /// Quarantined by this task, with a reason containing this text, on
    /// these backends (`None`: loaded everywhere).
    quarantined: Option<(&'static str, &'static str, &'static [&'static str])>,
}

const ALL: &[&str] = &["sqlite", "mysql", "postgres"];

fn view(id: &str, event_id: &str, ts: Value, extra: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut d = json!({
        "_id": {"$oid": id}, "event_id": event_id, "type": "presentation.viewed",
        "ts": ts, "v": 1, "presentation_id": "p-hostile", "session_id": "s-hostile",
        "user_id": null, "payload": {"device": "desktop", "referrer": null}
    });
    extra(&mut d);
    d.to_string().into_bytes()
}

fn day() -> Value {
    json!({"$date": "2026-01-07T10:00:00Z"})
}

/// The table of hostile documents.
fn cases() -> Vec<Case> {
    let mut non_utf8 = view("66000000000000000000aa01", "h-bytes", day(), |_| {});
    // Make the presentation id hold bytes that are not UTF-8.
    let at = non_utf8
        .windows(9)
        .position(|w| w == b"p-hostile")
        .expect("the presentation id");
    non_utf8[at + 1] = 0xff;
    non_utf8[at + 2] = 0xfe;
    vec![
        Case {
            id: "66000000000000000000aa01",
            what: "a line that is not UTF-8",
            line: non_utf8,
            quarantined: Some(("extract_views", "is not UTF-8", ALL)),
        },
        Case {
            id: "66000000000000000000aa02",
            what: "a date 285,000 years from now",
            line: view(
                "66000000000000000000aa02",
                "h-far-future",
                json!({"$date": {"$numberLong": "9000000000000000"}}),
                |_| {},
            ),
            quarantined: Some(("extract_views", "outside the years 1 to 9999", ALL)),
        },
        Case {
            id: "66000000000000000000aa03",
            what: "a valid event dated 9999-12-31",
            line: view(
                "66000000000000000000aa03",
                "h-9999",
                json!({"$date": "9999-12-31T00:00:00Z"}),
                |_| {},
            ),
            quarantined: None,
        },
        Case {
            id: "66000000000000000000aa04",
            what: "an event id of 100 characters",
            line: view("66000000000000000000aa04", &"i".repeat(100), day(), |_| {}),
            quarantined: None,
        },
        Case {
            id: "66000000000000000000aa05",
            what: "a NUL in a string",
            line: view("66000000000000000000aa05", "h-nul", day(), |d| {
                d["presentation_id"] = json!("p\u{0}nul");
            }),
            quarantined: Some(("load_views", "NUL character", &["postgres"])),
        },
        Case {
            id: "66000000000000000000aa06",
            what: "a slide of 3,000,000,000 and a payload version of 3,000,000,000",
            line: json!({
                "_id": {"$oid": "66000000000000000000aa06"}, "event_id": "h-big-slide",
                "type": "slide.viewed", "ts": day(), "v": {"$numberLong": "3000000000"},
                "presentation_id": "p-hostile", "session_id": "s-hostile", "user_id": null,
                "payload": {"slide": {"$numberLong": "3000000000"}, "dwell_ms": 5}
            })
            .to_string()
            .into_bytes(),
            quarantined: None,
        },
        Case {
            id: "66000000000000000000aa07",
            what: "event id `dup`",
            line: view("66000000000000000000aa07", "dup", day(), |_| {}),
            quarantined: None,
        },
        Case {
            id: "66000000000000000000aa08",
            what: "event id `dup ` (a trailing space)",
            line: view("66000000000000000000aa08", "dup ", day(), |_| {}),
            quarantined: None,
        },
        Case {
            id: "66000000000000000000aa09",
            what: "an invalid event with a referrer of 70,000 characters",
            line: view("66000000000000000000aa09", "h-bad-long", day(), |d| {
                d["payload"] = json!({"device": "smartfridge", "referrer": "r".repeat(70_000)});
            }),
            quarantined: Some(("extract_views", "not one of desktop", ALL)),
        },
        Case {
            id: "66000000000000000000aa0a",
            what: "a valid event with a referrer of 70,000 characters",
            line: view("66000000000000000000aa0a", "h-long-referrer", day(), |d| {
                d["payload"]["referrer"] = json!("r".repeat(70_000));
            }),
            quarantined: None,
        },
        Case {
            id: "66000000000000000000aa0b",
            what: "an event id of 600 characters (MariaDB keys hold 512)",
            line: view("66000000000000000000aa0b", &"k".repeat(600), day(), |_| {}),
            quarantined: Some(("load_views", "at most 512 characters", &["mysql"])),
        },
    ]
}

/// A seeded events file with the hostile lines in the middle.
fn hostile_file(dir: &Path, events: u64) -> Result<PathBuf> {
    let seeded = support::seed(dir, events, 31);
    let text = std::fs::read(&seeded)?;
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut out: Vec<u8> = Vec::new();
    let half = lines.len() / 2;
    for l in &lines[..half] {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    for c in cases() {
        out.extend_from_slice(&c.line);
        out.push(b'\n');
    }
    for l in &lines[half..] {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    let path = dir.join("hostile.jsonl");
    std::fs::write(&path, out)?;
    Ok(path)
}

/// The events file without the lines of these `_id`s (and without lines
/// that are not UTF-8), for computing what the legacy analytics count of
/// what the warehouse could hold.
fn without(path: &Path, ids: &[String], out: &Path) -> Result<()> {
    let text = std::fs::read(path)?;
    let mut kept = Vec::new();
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(s) = std::str::from_utf8(line) else {
            continue;
        };
        if ids.iter().any(|id| s.contains(id.as_str())) {
            continue;
        }
        kept.extend_from_slice(line);
        kept.push(b'\n');
    }
    std::fs::write(out, kept)?;
    Ok(())
}

/// One quarantine row.
#[derive(Debug)]
struct Quarantined {
    task: String,
    reason: String,
    location: String,
    encoding: String,
    raw: String,
}

async fn quarantine(url: &str) -> Result<BTreeMap<String, Quarantined>> {
    let pool = pool(url).await?;
    let rows = sqlx::query(
        "SELECT doc_id, task, reason, location, raw_encoding, raw FROM cutover_quarantine",
    )
    .fetch_all(&pool)
    .await?;
    let mut out = BTreeMap::new();
    for r in &rows {
        let text = |c: &str| support::text(r, c);
        out.insert(
            text("doc_id"),
            Quarantined {
                task: text("task"),
                reason: text("reason"),
                location: text("location"),
                encoding: text("raw_encoding"),
                raw: text("raw"),
            },
        );
    }
    pool.close().await;
    Ok(out)
}

/// The quarantine row of a case, found by its `_id` or (for a line that is
/// not a document) by its location.
fn row_of<'a>(q: &'a BTreeMap<String, Quarantined>, c: &Case) -> Option<&'a Quarantined> {
    q.get(c.id).or_else(|| {
        q.values()
            .find(|r| r.encoding == "base64" && decode(&r.raw) == c.line)
    })
}

fn decode(b64: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap_or_default()
}

#[tokio::test]
async fn every_bad_document_is_quarantined_and_the_rest_loads() -> Result<()> {
    for wh in support::warehouses().await? {
        let dir = tempfile::tempdir()?;
        let events = hostile_file(dir.path(), 600)?;
        let work = dir.path().join("work");
        let dags = support::root().join("dags");
        let first = ok(support::cutover(&events, &wh.url, &work, &["run", "--all"]));
        assert!(!first.contains("FAILED"), "{}: {first}", wh.name);

        // The diagonal slice reads the same file to the end: every hostile
        // line is read or counted, and it answers (1 where it samples a
        // document the warehouse set aside and the legacy counts).
        let out = support::cutover(
            &events,
            &wh.url,
            &work,
            &["slice", "--size", "40", "--format", "json"],
        );
        let slice: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: slice printed no JSON ({e}): {}",
                wh.name,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(matches!(out.status.code(), Some(0 | 1)), "{}", wh.name);
        assert!(slice["documents"].as_u64().unwrap() > 600, "{}", wh.name);
        assert!(slice["invalid"].as_u64().unwrap() > 0, "{}", wh.name);

        // Each bad document is quarantined with its reason and where it
        // was; the others load.
        let q = quarantine(&wh.url).await?;
        let pool = pool(&wh.url).await?;
        for c in cases() {
            let row = row_of(&q, &c);
            match c.quarantined {
                Some((task, reason, on)) if on.contains(&wh.name) => {
                    let row = row.unwrap_or_else(|| {
                        panic!("{} is quarantined on {}: {q:#?}", c.what, wh.name)
                    });
                    assert_eq!(row.task, task, "{} on {}", c.what, wh.name);
                    assert!(
                        row.reason.contains(reason),
                        "{} on {}: {}",
                        c.what,
                        wh.name,
                        row.reason
                    );
                    assert!(
                        row.location.contains("line ") || row.location.contains(c.id),
                        "{} says where it was: {}",
                        c.what,
                        row.location
                    );
                }
                _ => assert!(row.is_none(), "{} loads on {}", c.what, wh.name),
            }
        }
        // The raw form is lossless: the line that is not UTF-8, byte for
        // byte; the 70,000-character referrer whole.
        let bytes = &cases()[0];
        let row = row_of(&q, bytes).expect("the line that is not UTF-8");
        assert_eq!(row.encoding, "base64");
        assert_eq!(decode(&row.raw), bytes.line);
        assert!(row.location.starts_with("line "), "{}", row.location);
        assert!(q["66000000000000000000aa09"].raw.len() > 70_000);

        let facts = |sql: &'static str| count(&pool, sql);
        assert_eq!(
            facts("SELECT COUNT(*) FROM fact_views WHERE event_id IN ('dup', 'dup ')").await?,
            2,
            "`dup` and `dup ` are two events on {}",
            wh.name
        );
        assert_eq!(
            facts("SELECT COUNT(*) FROM fact_engagement WHERE slide = 3000000000 AND payload_version = 3000000000").await?,
            1,
            "{}",
            wh.name
        );
        assert_eq!(
            facts("SELECT COUNT(*) FROM fact_views WHERE event_id = 'h-long-referrer'").await?,
            1,
            "{}",
            wh.name
        );
        assert_eq!(
            facts("SELECT COUNT(*) FROM fact_views WHERE event_id = 'h-9999'").await?,
            1,
            "the event dated 9999 is loaded on {}",
            wh.name
        );
        // ...but the watermark did not jump to it.
        let watermark =
            facts("SELECT MAX(ts_ms) FROM cutover_watermarks WHERE dag = 'views'").await?;
        assert!(
            watermark < chrono::Utc::now().timestamp_millis() + 3_600_000,
            "the watermark stays at most at now on {}: {watermark}",
            wh.name
        );
        assert!(
            first.contains("dated after now + 5m"),
            "the run says so: {first}"
        );

        // A second run changes nothing.
        let again = ok(support::cutover(&events, &wh.url, &work, &["run", "--all"]));
        assert!(support::changed_nothing(&again), "{}: {again}", wh.name);

        // A later event is still read by the next incremental run.
        let later = view(
            "66000000000000000000ab01",
            "h-later",
            json!({"$date": "2026-01-25T10:00:00Z"}),
            |_| {},
        );
        let mut text = std::fs::read(&events)?;
        text.extend_from_slice(&later);
        text.push(b'\n');
        std::fs::write(&events, text)?;
        ok(support::cutover(&events, &wh.url, &work, &["run", "views"]));
        assert_eq!(
            facts("SELECT COUNT(*) FROM fact_views WHERE event_id = 'h-later'").await?,
            1,
            "an event after the one dated 9999 is loaded on {}",
            wh.name
        );
        pool.close().await;

        // The reports equal the legacy ones but for exactly the quarantined
        // documents.
        let ids: Vec<String> = q.keys().cloned().collect();
        let filtered = dir.path().join("without-quarantined.jsonl");
        without(&events, &ids, &filtered)?;
        star::assert_reports_equal(
            &filtered.display().to_string(),
            &wh.url,
            &work,
            &dags,
            "app",
            None,
            wh.name,
        );
    }
    Ok(())
}

#[tokio::test]
async fn bad_documents_from_mongodb_are_quarantined_and_the_rest_loads() -> Result<()> {
    let Some(mongo) = support::server("CUTOVER_TEST_MONGO_URL") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let events = hostile_file(dir.path(), 400)?;
    // MongoDB documents are UTF-8: the line that is not stays in the file.
    // nx-27017 stores dates through Python's datetime, which ends at the
    // year 9999, so the date 285,000 years ahead stays in the file too (a
    // real MongoDB stores it; the events file covers it).
    const NOT_STORABLE: &str = "66000000000000000000aa02";
    let docs_file = dir.path().join("docs.jsonl");
    without(&events, &[NOT_STORABLE.to_owned()], &docs_file)?;
    let (client, db) = crate::mongo::load_events(&mongo, &docs_file).await?;
    let dags = support::dags_for_database(dir.path(), &db)?;
    for wh in support::warehouses().await? {
        let work = dir.path().join(format!("work-{}", wh.name));
        let first = ok(cutover_with(
            &mongo,
            &wh.url,
            &work,
            &dags,
            &["run", "--all"],
        ));
        assert!(!first.contains("FAILED"), "{}: {first}", wh.name);
        let q = quarantine(&wh.url).await?;
        for c in cases().iter().skip(1).filter(|c| c.id != NOT_STORABLE) {
            match c.quarantined {
                Some((task, reason, on)) if on.contains(&wh.name) => {
                    let row = q.get(c.id).unwrap_or_else(|| {
                        panic!("{} is quarantined on {}: {q:#?}", c.what, wh.name)
                    });
                    assert_eq!(row.task, task);
                    assert!(row.reason.contains(reason), "{}", row.reason);
                    assert!(row.location.contains(c.id), "{}", row.location);
                }
                _ => assert!(!q.contains_key(c.id), "{} loads on {}", c.what, wh.name),
            }
        }
        let again = ok(cutover_with(
            &mongo,
            &wh.url,
            &work,
            &dags,
            &["run", "--all"],
        ));
        assert!(support::changed_nothing(&again), "{}: {again}", wh.name);
        let p = pool(&wh.url).await?;
        let watermark = count(
            &p,
            "SELECT MAX(ts_ms) FROM cutover_watermarks WHERE dag = 'views'",
        )
        .await?;
        assert!(watermark < chrono::Utc::now().timestamp_millis() + 3_600_000);
        p.close().await;
    }
    client.database(&db).drop().await?;
    Ok(())
}

/// A copy of the shipped DAGs with one file's text edited.
fn dags_with(dir: &Path, file: &str, from: &str, to: &str) -> Result<PathBuf> {
    let out = support::dags_edited(dir, |t| t)?;
    let path = out.join(file);
    let text = std::fs::read_to_string(&path)?;
    anyhow::ensure!(text.contains(from), "{file} has no `{from}`");
    std::fs::write(&path, text.replace(from, to))?;
    Ok(out)
}

#[tokio::test]
async fn what_would_lose_data_is_refused_before_anything_runs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 200, 3);
    let wh = format!("sqlite:{}", dir.path().join("w.db").display());
    let work = dir.path().join("work");
    let source = events.display().to_string();
    let cases = [
        (
            "views.toml",
            "{ output = \"fact_views\", key",
            "{ output = \"fact_view\", key",
            "field `targets[2].output`: `fact_view` is not an output of transform_views (did you mean `fact_views`?)",
        ),
        (
            "views.toml",
            "FROM extract_views\n\"\"\"\n\n[tasks.outputs.dim_date]",
            "FROM extract_view\n\"\"\"\n\n[tasks.outputs.dim_date]",
            "field `outputs.fact_views.sql`",
        ),
        (
            "shares.toml",
            "key = [\"event_id\"]",
            "key = [\"event\"]",
            "the output fact_shares has no column `event`",
        ),
    ];
    for (file, from, to, want) in cases {
        let d = dir
            .path()
            .join(format!("case-{}", uuid::Uuid::new_v4().simple()));
        let dags = dags_with(&d, file, from, to)?;
        let validate = cutover_with(&source, &wh, &work, &dags, &["dags", "validate"]);
        let text = String::from_utf8_lossy(&validate.stdout);
        assert!(!validate.status.success(), "{file}: {to} is refused");
        assert!(text.contains(file) && text.contains(want), "{text}");
        let run = cutover_with(&source, &wh, &work, &dags, &["run", "--all"]);
        assert!(!run.status.success());
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(want), "{stderr}");
    }
    // Nothing ran, no watermark moved.
    let p = pool(&wh).await;
    if let Ok(p) = p {
        let runs = count(&p, "SELECT COUNT(*) FROM cutover_runs")
            .await
            .unwrap_or(0);
        assert_eq!(runs, 0);
    }

    // Settings that make no sense are refused at once, with why.
    let refused: &[(&[&str], &str)] = &[
        (
            &[
                "backfill",
                "views",
                "--from",
                "2025-01-01",
                "--to",
                "2026-01-01",
                "--chunk",
                "1ms",
                "--dry-run",
            ],
            "shorter than a second",
        ),
        (
            &[
                "backfill",
                "views",
                "--from",
                "2025-01-01",
                "--to",
                "2026-01-01",
                "--chunk",
                "1m",
                "--dry-run",
            ],
            "more than 100000",
        ),
        (
            &[
                "backfill",
                "views",
                "--from",
                "2025-01-01",
                "--to",
                "2026-01-01",
                "--claim-ttl",
                "0s",
                "--parallel",
                "2",
            ],
            "too short",
        ),
        (
            &[
                "backfill",
                "views",
                "--from",
                "2026-01-02",
                "--to",
                "2026-01-01",
                "--dry-run",
            ],
            "--from must be before --to",
        ),
        (&["schedule", "--lease-ttl", "1s"], "too short"),
        (
            &[
                "consume",
                "--queue-url",
                "http://127.0.0.1:1/q",
                "--visibility-timeout",
                "0",
            ],
            "visibility-timeout",
        ),
    ];
    let dags = support::root().join("dags");
    for (args, want) in refused {
        let started = std::time::Instant::now();
        let out = cutover_with(&source, &wh, &work, &dags, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} is refused");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} is refused at once"
        );
    }
    Ok(())
}

/// `runs --format json`.
fn runs(source: &str, wh: &str, work: &Path) -> Vec<Value> {
    let out = ok(cutover_with(
        source,
        wh,
        work,
        &support::root().join("dags"),
        &["runs", "--format", "json", "--limit", "100"],
    ));
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn the_ledger_tells_the_truth_about_killed_and_failed_runs() -> Result<()> {
    for wh in support::warehouses().await? {
        if wh.name == "postgres" {
            continue;
        }
        let dir = tempfile::tempdir()?;
        let events = support::seed(dir.path(), 20_000, 17);
        let source = events.display().to_string();
        let work = dir.path().join("work");
        // Slowed down, so that it is killed in the middle.
        let slow = dags_with(
            dir.path(),
            "views.toml",
            "batch_size = 20000",
            "batch_size = 500\nmax_rate = 500",
        )?;
        let mut child = support::command(&source, &wh.url, &work, &slow)
            .args(["run", "views"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        support::wait_for_count(
            &wh.url,
            "SELECT COUNT(*) FROM cutover_task_attempts WHERE state = 'running'",
            1,
            &mut child,
            Duration::from_secs(60),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        child.kill()?;
        child.wait()?;
        let killed = runs(&source, &wh.url, &work);
        assert_eq!(
            killed[0]["state"], "running",
            "before the next run: {killed:?}"
        );
        let killed_id = killed[0]["run_id"].as_str().unwrap().to_owned();
        assert!(work.join("views").join(&killed_id).exists());

        // The next run of the DAG records it as interrupted.
        let out = ok(cutover_with(
            &source,
            &wh.url,
            &work,
            &slow.clone(),
            &["run", "views"],
        ));
        let after = runs(&source, &wh.url, &work);
        let old = after
            .iter()
            .find(|r| r["run_id"] == killed_id.as_str())
            .unwrap();
        assert_eq!(old["state"], "interrupted", "{old}");
        assert!(old["error"].as_str().unwrap().contains("is gone"), "{old}");
        assert!(after.iter().all(|r| r["state"] != "running"), "{after:?}");
        // Its counts are the run's own summary.
        let newest = &after[0];
        let line = out
            .lines()
            .find(|l| l.contains("documents read"))
            .expect("a totals line");
        let want = format!(
            "{} documents read, {} rows changed, {} quarantined",
            newest["rows_read"], newest["rows_written"], newest["rows_quarantined"]
        );
        assert!(line.trim().starts_with(&want), "{line} vs {want}");
        // A successful run leaves no work directory; a killed one's stays.
        assert!(!work
            .join("views")
            .join(newest["run_id"].as_str().unwrap())
            .exists());
        assert!(work.join("views").join(&killed_id).exists());

        // Failed runs keep their work directories, the newest three only;
        // a long cause is recorded whole enough to read.
        let p = pool(&wh.url).await?;
        sqlx::query("DELETE FROM fact_views").execute(&p).await?;
        let loud = dags_with(
            dir.path().join("loud").as_path(),
            "views.toml",
            "table = \"fact_views\"\n",
            "table = \"fact_views\"\nshow = 1000000\n",
        )?;
        for _ in 0..4 {
            let out = cutover_with(&source, &wh.url, &work, &loud, &["run", "views"]);
            assert!(!out.status.success());
        }
        let failed = runs(&source, &wh.url, &work);
        let last = &failed[0];
        assert_eq!(last["state"], "failed");
        let error = last["error"].as_str().unwrap();
        assert!(
            error.len() > 65_535,
            "the whole cause is kept: {} bytes",
            error.len()
        );
        assert!(error.contains("fact_views differs from the source"));
        let dirs = std::fs::read_dir(work.join("views"))?.count();
        assert_eq!(
            dirs, 3,
            "three failed or interrupted work directories are kept"
        );
        p.close().await;
    }
    Ok(())
}

/// Everything a canary secret could reach: standard output and error of
/// every command, the log, the ledger, the quarantine and `/metrics`.
#[tokio::test]
async fn no_secret_reaches_any_output() -> Result<()> {
    const CANARY: &str = "Cnry7f3e9a";
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 300, 5);
    let source = events.display().to_string();
    let work = dir.path().join("work");
    let dags = support::root().join("dags");
    let mut seen = String::new();
    let run =
        |seen: &mut String, source: &str, warehouse: &str, args: &[&str], env: &[(&str, &str)]| {
            let mut cmd = support::command(source, warehouse, &work, &dags);
            for (k, v) in env {
                cmd.env(k, v);
            }
            let out = cmd.args(args).output().unwrap();
            seen.push_str(&String::from_utf8_lossy(&out.stdout));
            seen.push_str(&String::from_utf8_lossy(&out.stderr));
            out
        };
    let sqlite = format!("sqlite:{}", dir.path().join("w.db").display());
    let forms = [
        format!("mysql://l:{CANARY}@127.0.0.1:1/w"),
        format!("postgres://adm@srv:{CANARY}@127.0.0.1:1/d"),
        format!("mysql://l:p@{CANARY}@127.0.0.1:1/w"),
        format!("postgres://u@127.0.0.1:1/d?password={CANARY}"),
        format!("mongodb:/a:{CANARY}@m/app"),
        format!("mysql://l:{CANARY}@host.invalid/w"),
    ];
    for url in &forms {
        let started = std::time::Instant::now();
        let out = run(&mut seen, &source, url, &["run", "views"], &[]);
        assert!(!out.status.success());
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "an unreachable warehouse is reported at once"
        );
        run(&mut seen, &source, url, &["run", "--help"], &[]);
        run(&mut seen, &source, url, &["runs"], &[]);
        run(
            &mut seen,
            &source,
            url,
            &["status", "--format", "json"],
            &[],
        );
    }
    for url in [
        format!("mongodb:/a:{CANARY}@m/app"),
        format!("mongodb://u:{CANARY}@127.0.0.1:1/app?serverSelectionTimeoutMS=1000"),
        format!("mongodb+srv://u:{CANARY}@cluster.invalid/app"),
    ] {
        let out = run(&mut seen, &url, &sqlite, &["run", "views"], &[]);
        assert!(!out.status.success(), "{url}");
        run(
            &mut seen,
            &url,
            &sqlite,
            &["report", "views_daily", "--source", "legacy"],
            &[],
        );
    }
    let stderr_cause = seen.contains("Connection refused") || seen.contains("connection refused");
    assert!(stderr_cause, "the cause is given: {seen}");

    // A working warehouse whose URL carries the canary (PostgreSQL with
    // trust authentication ignores the password), with the AWS secret set,
    // verbose JSON logs and the metrics endpoint.
    if let Some(wh) = support::warehouses()
        .await?
        .into_iter()
        .find(|w| w.name == "postgres")
    {
        let url = wh.url.replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{CANARY}@"),
            1,
        );
        assert_ne!(url, wh.url);
        let port = free_port();
        let aws = [
            ("AWS_SECRET_ACCESS_KEY", CANARY),
            ("AWS_SESSION_TOKEN", CANARY),
        ];
        let mut cmd = support::command(&source, &url, &work, &dags);
        cmd.args([
            "-vv",
            "--log-format",
            "json",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "schedule",
            "users",
        ])
        .envs(aws)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let child = cmd.spawn()?;
        let metrics = http_get(port, "/metrics").await?;
        seen.push_str(&metrics);
        let (out, err) = support::terminate(child).await?;
        seen.push_str(&out);
        seen.push_str(&err);
        let out = run(&mut seen, &source, &url, &["-vv", "run", "--all"], &aws);
        assert!(out.status.success());
        run(
            &mut seen,
            &source,
            &url,
            &["runs", "--format", "json"],
            &aws,
        );
        run(&mut seen, &source, &url, &["status"], &aws);
        run(
            &mut seen,
            &source,
            &url,
            &["quarantine", "list", "--format", "json"],
            &aws,
        );
        // And what it stored.
        let p = pool(&wh.url).await?;
        for table in [
            "cutover_runs",
            "cutover_task_attempts",
            "cutover_quarantine",
            "cutover_commits",
        ] {
            let rows = sqlx::query(&format!("SELECT * FROM {table}"))
                .fetch_all(&p)
                .await?;
            for r in &rows {
                for i in 0..sqlx::Row::len(r) {
                    if let Ok(Some(v)) = sqlx::Row::try_get::<Option<String>, _>(r, i) {
                        seen.push_str(&v);
                    }
                }
            }
        }
        p.close().await;
    }
    assert!(!seen.is_empty());
    assert!(
        !seen.contains(CANARY),
        "the canary secret was printed, logged or stored: ...{}...",
        seen.find(CANARY)
            .map(|i| &seen[i.saturating_sub(200)..(i + 50).min(seen.len())])
            .unwrap_or_default()
    );
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET over a plain TCP connection, retried until the server listens.
async fn http_get(port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..100 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
            let mut body = String::new();
            s.read_to_string(&mut body).await?;
            return Ok(body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("nothing listens on {port}")
}

#[tokio::test]
async fn the_metrics_endpoint_cuts_off_slow_clients() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 100, 5);
    let wh = format!("sqlite:{}", dir.path().join("w.db").display());
    let port = free_port();
    let child = support::command(
        &events.display().to_string(),
        &wh,
        &dir.path().join("w"),
        &support::root().join("dags"),
    )
    .args([
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "schedule",
        "users",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()?;
    let first = http_get(port, "/metrics").await?;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // A client that never finishes its headers is cut off.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").await?;
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut buf)).await?;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cut off after the header timeout"
    );
    // Connections beyond the limit (64) are closed at once; the idle ones
    // within it are cut off after the header timeout, and the server
    // answers again.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?);
    }
    let mut closed = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await {
            closed += usize::from(matches!(r, Ok(0) | Err(_)));
        }
    }
    assert!(
        closed >= 30,
        "connections beyond the limit are closed: {closed}"
    );
    let started = std::time::Instant::now();
    let again = loop {
        match http_get(port, "/metrics").await {
            Ok(r) if r.starts_with("HTTP/1.1 200") => break r,
            _ if started.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("the server answers again: {other:?}"),
        }
    };
    assert!(again.contains("cutover_runs"), "{again}");
    drop(idle);
    support::terminate(child).await?;
    Ok(())
}

#[tokio::test]
async fn the_feed_leaves_others_messages_and_never_stalls() -> Result<()> {
    let Some(sqs) = crate::sqs::Sqs::from_env().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let ev = |id: u32, ty: &str, event_id: &str, extra: Value| {
        let mut d = json!({
            "_id": {"$oid": format!("67000000000000000000{id:04x}")}, "event_id": event_id,
            "type": ty, "ts": {"$date": "2026-01-07T10:00:00Z"}, "v": 1,
        });
        for (k, v) in extra.as_object().unwrap() {
            d[k] = v.clone();
        }
        d.to_string()
    };
    let view_extra = json!({"presentation_id": "p1", "session_id": "s1", "user_id": null, "payload": {"device": "mobile", "referrer": null}});
    for wh in support::warehouses().await? {
        if wh.name == "postgres" {
            continue;
        }
        let mut bodies: Vec<String> = (0..5)
            .map(|i| {
                ev(
                    i,
                    "presentation.viewed",
                    &format!("v{i}"),
                    view_extra.clone(),
                )
            })
            .collect();
        // A view the warehouse cannot hold on MariaDB (a 600-character
        // key): quarantined there, loaded elsewhere; the batch commits.
        bodies.push(ev(
            9,
            "presentation.viewed",
            &"k".repeat(600),
            view_extra.clone(),
        ));
        for i in 0..3 {
            bodies.push(ev(
                100 + i,
                "user.registered",
                &format!("u{i}"),
                json!({"user_id": format!("user{i}"), "payload": {"plan": "pro", "country": "FR"}}),
            ));
        }
        for i in 0..2 {
            bodies.push(ev(
                200 + i,
                "newsletter.opened",
                &format!("n{i}"),
                json!({}),
            ));
        }
        let queue = sqs.queue(30).await?;
        sqs.publish(&queue, &bodies).await?;
        let work = dir.path().join(format!("work-{}", wh.name));
        let args = [
            "views",
            "--until-idle",
            "3",
            "--wait",
            "1",
            "--batch-age",
            "1s",
        ];
        let out = ok(tokio::time::timeout(
            Duration::from_secs(120),
            tokio::task::spawn_blocking({
                let mut c = sqs.consume(&queue, &wh.url, &work, &args);
                move || c.output()
            }),
        )
        .await
        .context("consume --until-idle exits")???);
        let number_before = |what: &str| -> u64 {
            let at = out
                .find(what)
                .unwrap_or_else(|| panic!("`{what}` in {out}"));
            out[..at]
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a count before `{what}` in {out}"))
        };
        // Each time one comes back to this consumer it is left again.
        assert!(
            number_before("left for consumers of other DAGs") >= 3,
            "{out}"
        );
        assert!(number_before("of types no DAG takes") >= 2, "{out}");
        assert_eq!(
            sqs.depth(&queue).await?,
            3,
            "the users' messages stay on the queue"
        );
        let p = pool(&wh.url).await?;
        let views = count(&p, "SELECT COUNT(*) FROM fact_views").await?;
        assert_eq!(views, if wh.name == "mysql" { 5 } else { 6 }, "{}", wh.name);
        // Another consumer, of the users DAG, takes them.
        let out = ok(sqs
            .consume(
                &queue,
                &wh.url,
                &work,
                &[
                    "users",
                    "--until-idle",
                    "3",
                    "--wait",
                    "1",
                    "--batch-age",
                    "1s",
                ],
            )
            .output()?);
        assert!(out.contains("0 left for consumers"), "{out}");
        assert_eq!(count(&p, "SELECT COUNT(*) FROM dim_user").await?, 3);
        assert_eq!(sqs.depth(&queue).await?, 0);
        p.close().await;
        sqs.delete(&queue).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_locked_warehouse_delays_the_feed_and_loses_nothing() -> Result<()> {
    let Some(sqs) = crate::sqs::Sqs::from_env().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let events = support::seed(dir.path(), 60, 8);
    let bodies: Vec<String> = std::fs::read_to_string(&events)?
        .lines()
        .map(str::to_owned)
        .collect();
    let db = dir.path().join("w.db");
    let wh = format!("sqlite:{}", db.display());
    let work = dir.path().join("work");
    ok(support::cutover(&events, &wh, &work, &["migrate"]));
    let queue = sqs.queue(30).await?;
    sqs.publish(&queue, &bodies).await?;
    // Another process holds the warehouse for 25 seconds.
    let locker = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3, time\nc = sqlite3.connect({:?}, isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(25)\nc.execute('COMMIT')",
            db.display().to_string()
        ))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut locker = locker;
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(locker.stdout.as_mut().unwrap()).read_line(&mut line)?;
        assert_eq!(line.trim(), "locked");
    }
    let mut c = sqs.consume(
        &queue,
        &wh,
        &work,
        &["--until-idle", "5", "--wait", "1", "--batch-age", "1s"],
    );
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::task::spawn_blocking(move || c.output()),
    )
    .await
    .context("consume --until-idle exits once the queue is drained")???;
    locker.wait()?;
    let text = ok(out);
    assert!(text.contains("with a failed DAG"), "{text}");
    assert_eq!(
        sqs.depth(&queue).await?,
        0,
        "every message was loaded and deleted: {text}"
    );
    // The same warehouse a nightly run makes.
    let nightly = format!("sqlite:{}", dir.path().join("n.db").display());
    ok(support::cutover(
        &events,
        &nightly,
        &dir.path().join("nw"),
        &["run", "--all"],
    ));
    assert_eq!(
        crate::sqs::star_tables(&wh).await?,
        crate::sqs::star_tables(&nightly).await?
    );
    sqs.delete(&queue).await;
    Ok(())
}

#[tokio::test]
async fn copies_of_one_key_merge_as_one_row_on_every_backend() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("copies.jsonl");
    let mut text = String::new();
    for i in 0..20_000u32 {
        text.push_str(&String::from_utf8(view(
            &format!("6700000000000000{i:08x}"),
            "the-same-event",
            json!({"$date": format!("2026-01-07T10:{:02}:{:02}.{:03}Z", i / 3600 % 60, i / 60 % 60, i % 1000)}),
            |_| {},
        ))?);
        text.push('\n');
    }
    std::fs::write(&file, text)?;
    for wh in support::warehouses().await? {
        let work = dir.path().join(format!("work-{}", wh.name));
        let out = ok(support::cutover(&file, &wh.url, &work, &["run", "views"]));
        assert!(out.contains("20002 rows merged"), "{out}");
        let p = pool(&wh.url).await?;
        assert_eq!(count(&p, "SELECT COUNT(*) FROM fact_views").await?, 1);
        // The copy with the greatest doc_id is the one kept.
        let kept = sqlx::query("SELECT doc_id FROM fact_views")
            .fetch_one(&p)
            .await?;
        assert_eq!(
            support::text(&kept, "doc_id"),
            format!("6700000000000000{:08x}", 19_999)
        );
        p.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn the_quarantine_is_listed_shown_and_replayed() -> Result<()> {
    for wh in support::warehouses().await? {
        if wh.name == "postgres" {
            continue;
        }
        let dir = tempfile::tempdir()?;
        let events = hostile_file(dir.path(), 300)?;
        let source = events.display().to_string();
        let work = dir.path().join("work");
        let dags = support::root().join("dags");
        ok(support::cutover(&events, &wh.url, &work, &["run", "--all"]));
        let cli = |args: &[&str]| cutover_with(&source, &wh.url, &work, &dags, args);
        let list = ok(cli(&["quarantine", "list", "--dag", "views"]));
        assert!(
            list.contains("66000000000000000000aa09") && list.contains("line "),
            "{list}"
        );
        let shown = ok(cli(&["quarantine", "show", "66000000000000000000aa09"]));
        assert!(
            shown.contains("smartfridge") && shown.contains(&"r".repeat(1000)),
            "the raw form, whole"
        );
        let json: Value =
            serde_json::from_str(&ok(cli(&["quarantine", "list", "--format", "json"])))?;
        let before = json.as_array().unwrap().len();

        // The cause is fixed: the DAG accepts the device, and on MariaDB
        // the key column is widened.
        let fixed = dags_with(
            dir.path(),
            "views.toml",
            "one_of = [\"desktop\", \"mobile\", \"tablet\"]",
            "one_of = [\"desktop\", \"mobile\", \"tablet\", \"smartfridge\"]",
        )?;
        if wh.name == "mysql" {
            let p = pool(&wh.url).await?;
            sqlx::query("ALTER TABLE fact_views MODIFY event_id VARCHAR(700) NOT NULL")
                .execute(&p)
                .await?;
            p.close().await;
        }
        let out = ok(cutover_with(
            &source,
            &wh.url,
            &work,
            &fixed,
            &["quarantine", "replay", "--dag", "views"],
        ));
        let p = pool(&wh.url).await?;
        assert_eq!(
            count(
                &p,
                "SELECT COUNT(*) FROM fact_views WHERE event_id = 'h-bad-long'"
            )
            .await?,
            1,
            "{out}"
        );
        let long_key = format!(
            "SELECT COUNT(*) FROM fact_views WHERE event_id = '{}'",
            "k".repeat(600)
        );
        let loaded: i64 = sqlx::query_scalar::<_, i64>(&long_key)
            .fetch_one(&p)
            .await?;
        assert_eq!(loaded, 1, "{}: {out}", wh.name);
        let q = quarantine(&wh.url).await?;
        assert!(!q.contains_key("66000000000000000000aa09"), "{out}");
        assert!(!q.contains_key("66000000000000000000aa0b"), "{out}");
        // What cannot load yet stays, and says why.
        assert!(q.contains_key("66000000000000000000aa02"), "{out}");
        assert!(out.contains("still not a document"), "{out}");
        let after: Value =
            serde_json::from_str(&ok(cli(&["quarantine", "list", "--format", "json"])))?;
        assert!(after.as_array().unwrap().len() < before);
        // Owner-only files.
        #[cfg(unix)]
        if wh.name == "sqlite" {
            use std::os::unix::fs::PermissionsExt;
            let db = wh.url.trim_start_matches("sqlite:");
            assert_eq!(
                std::fs::metadata(db)?.permissions().mode() & 0o077,
                0,
                "{db}"
            );
            assert_eq!(std::fs::metadata(&work)?.permissions().mode() & 0o077, 0);
        }
        p.close().await;
    }
    Ok(())
}
