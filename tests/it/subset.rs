//! `cutover subset` from an events file and from MongoDB: the copy is
//! closed under the event model's relations (no view without both ends of
//! its session and its viewer's whole plan history, no sampled presentation
//! without all its facts), its reports equal the source's restricted to the
//! sample, anonymisation leaves no original id or text and is keyed, and the
//! same seed gives the same copy. Checked here by reading the files with
//! serde_json alone, and by `cutover report` on both sides.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::Result;
use bson::Document;
use futures::TryStreamExt;
use serde_json::Value;

use crate::support::{self, command, ok, RawEvent};

const KEY: &str = "a development key of 32 bytes...";
const OTHER_KEY: &str = "another development key, 32 byte";

/// A source file: seeded events, then a line that is not JSON and a line
/// that is not UTF-8, in the middle.
fn source(dir: &Path) -> PathBuf {
    let path = support::seed(dir, 3_000, 17);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    let cut = middle + bytes[middle..].iter().position(|b| *b == b'\n').unwrap() + 1;
    let mut hostile = b"{\"type\": \"presentation.viewed\", not json\n".to_vec();
    hostile.extend_from_slice(b"{\"type\": \"presentation.viewed\", \"title\": \"\xff\xfe\"}\n");
    bytes.splice(cut..cut, hostile);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Every document line of a file, read with serde_json; lines that are not
/// JSON left out.
fn docs(path: &Path) -> Vec<RawEvent> {
    std::fs::read(path)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .map(|json| RawEvent {
            id: json["_id"]["$oid"].as_str().unwrap_or_default().to_owned(),
            json,
        })
        .collect()
}

fn subset(source: &str, dir: &Path, args: &[&str], key: Option<&str>) -> Output {
    let mut cmd = command(
        source,
        &format!("sqlite:{}", dir.join("unused.db").display()),
        &dir.join("work"),
        &support::root().join("dags"),
    );
    cmd.arg("subset")
        .args(args)
        .env_remove("CUTOVER_SUBSET_KEY");
    if let Some(key) = key {
        cmd.env("CUTOVER_SUBSET_KEY", key);
    }
    cmd.output().expect("the cutover binary runs")
}

fn ty(e: &RawEvent) -> &str {
    e.str("type").unwrap_or_default()
}

/// The closure property, checked on the copy against the source (both
/// not anonymised): every view and slide view has both ends of its session
/// as the source has them, every user who appears has their whole plan
/// history, and every sampled entity all its facts.
fn assert_closed(full: &[RawEvent], copy: &[RawEvent], by: &str) {
    assert_closed_within(full, copy, by, ("0000-00-00", "9999-99-99"));
}

/// The same, for a copy of the facts of the days from `days.0` (a date,
/// inclusive) to `days.1` (exclusive).
fn assert_closed_within(full: &[RawEvent], copy: &[RawEvent], by: &str, days: (&str, &str)) {
    let count = |events: &[RawEvent], f: &dyn Fn(&RawEvent) -> bool| -> usize {
        events.iter().filter(|e| f(e)).count()
    };
    let sessions: BTreeSet<&str> = copy
        .iter()
        .filter(|e| matches!(ty(e), "presentation.viewed" | "slide.viewed"))
        .filter_map(|e| e.str("session_id"))
        .collect();
    assert!(!sessions.is_empty(), "the copy has no views");
    for s in &sessions {
        for end in ["session.started", "session.ended"] {
            let of = |e: &RawEvent| ty(e) == end && e.str("session_id") == Some(s);
            assert_eq!(
                count(copy, &of),
                count(full, &of),
                "{end} of session {s}: the copy does not hold what the source does"
            );
        }
    }
    let users: BTreeSet<&str> = copy.iter().filter_map(|e| e.str("user_id")).collect();
    for u in &users {
        let of = |e: &RawEvent| {
            matches!(ty(e), "user.registered" | "user.plan_changed") && e.str("user_id") == Some(u)
        };
        assert_eq!(count(copy, &of), count(full, &of), "plan history of {u}");
    }
    // Every fact of a sampled entity: the entities whose facts the copy has.
    let field = if by == "users" {
        "user_id"
    } else {
        "presentation_id"
    };
    let facts = ["presentation.viewed", "slide.viewed", "presentation.shared"];
    let sampled: BTreeSet<&str> = copy
        .iter()
        .filter(|e| facts.contains(&ty(e)))
        .filter_map(|e| e.str(field))
        .collect();
    if by == "presentations" {
        for p in &sampled {
            let of = |e: &RawEvent| {
                facts.contains(&ty(e))
                    && e.str("presentation_id") == Some(p)
                    && e.day()
                        .is_some_and(|d| days.0 <= d.as_str() && d.as_str() < days.1)
            };
            assert_eq!(count(copy, &of), count(full, &of), "facts of {p}");
            let created = |e: &RawEvent| {
                ty(e) == "presentation.created" && e.str("presentation_id") == Some(p)
            };
            assert_eq!(
                count(copy, &created),
                count(full, &created),
                "creation of {p}"
            );
        }
    }
}

/// A legacy report of an events file, as JSON rows.
fn report(path: &Path, dir: &Path, name: &str) -> Vec<Value> {
    let out = ok(support::cutover(
        path,
        &format!("sqlite:{}", dir.join("unused.db").display()),
        &dir.join("work"),
        &["report", name, "--source", "legacy", "--format", "json"],
    ));
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_subset_of_a_file_is_closed_and_its_reports_survive() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = source(dir.path());
    let src = path.display().to_string();
    let full = docs(&path);
    let copy_path = dir.path().join("copy.jsonl");
    let out = subset(
        &src,
        dir.path(),
        &[
            "--presentations",
            "6",
            "--seed",
            "3",
            "--out",
            copy_path.to_str().unwrap(),
        ],
        None,
    );
    let stdout = ok(out);
    assert!(
        stdout.contains("sampled 6 presentations (seed 3)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the five reports survive the cut"),
        "{stdout}"
    );
    assert!(
        stdout.contains("skipped 2 lines of the source that are not documents"),
        "{stdout}"
    );
    let copy = docs(&copy_path);
    assert!(
        copy.len() < full.len() / 3,
        "{} of {}",
        copy.len(),
        full.len()
    );
    assert_closed(&full, &copy, "presentations");
    // Dirt belonging to the sample is kept: an invalid document, a
    // producer's second copy.
    assert!(!stdout.contains("kept as they are: 0 invalid"), "{stdout}");

    // Independently: the per-presentation reports of the copy are the
    // source's rows of the sampled presentations.
    let sampled: HashSet<String> = copy
        .iter()
        .filter(|e| ty(e) == "presentation.viewed" || ty(e) == "slide.viewed")
        .filter_map(|e| e.str("presentation_id").map(str::to_owned))
        .collect();
    for name in ["views_daily", "slide_engagement"] {
        let whole: Vec<Value> = report(&path, dir.path(), name)
            .into_iter()
            .filter(|r| sampled.contains(r["presentation_id"].as_str().unwrap_or_default()))
            .collect();
        assert!(!whole.is_empty());
        assert_eq!(report(&copy_path, dir.path(), name), whole, "{name}");
    }

    // The same seed gives the same copy; another seed another sample.
    let by_seed = |seed: &str, out: &Path| {
        let out = out.to_str().unwrap();
        ok(subset(
            &src,
            dir.path(),
            &["--presentations", "6", "--seed", seed, "--out", out],
            None,
        ))
    };
    let again = dir.path().join("again.jsonl");
    by_seed("3", &again);
    assert_eq!(std::fs::read(&again)?, std::fs::read(&copy_path)?);
    let other = dir.path().join("other.jsonl");
    by_seed("4", &other);
    assert_ne!(std::fs::read(&other)?, std::fs::read(&copy_path)?);

    // A range of days: the facts of those days only, what they depend on
    // whenever it happened.
    let window = dir.path().join("window.jsonl");
    let stdout = ok(subset(
        &src,
        dir.path(),
        &[
            "--from",
            "2026-01-08",
            "--to",
            "2026-01-10",
            "--out",
            window.to_str().unwrap(),
        ],
        None,
    ));
    assert!(
        stdout.contains("the five reports survive the cut"),
        "{stdout}"
    );
    let window = docs(&window);
    let facts = ["presentation.viewed", "slide.viewed", "presentation.shared"];
    let days: BTreeSet<String> = window
        .iter()
        .filter(|e| facts.contains(&ty(e)))
        .filter_map(RawEvent::day)
        .collect();
    assert_eq!(
        days.into_iter().collect::<Vec<_>>(),
        ["2026-01-08", "2026-01-09"]
    );
    assert_closed_within(
        &full,
        &window,
        "presentations",
        ("2026-01-08", "2026-01-10"),
    );

    // By users: closed the same way.
    let by_users = dir.path().join("users.jsonl");
    let stdout = ok(subset(
        &src,
        dir.path(),
        &["--users", "5", "--out", by_users.to_str().unwrap()],
        None,
    ));
    assert!(
        stdout.contains("the five reports survive the cut"),
        "{stdout}"
    );
    assert_closed(&full, &docs(&by_users), "users");
    Ok(())
}

/// Every original id and text of the source: user, session, presentation
/// and event ids, titles, referrers.
fn originals(full: &[RawEvent]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in full {
        for path in [
            "user_id",
            "session_id",
            "presentation_id",
            "event_id",
            "payload.title",
            "payload.referrer",
        ] {
            if let Some(v) = e.str(path) {
                // Too short to be told from chance.
                if v.chars().count() >= 6 {
                    out.insert(v.to_owned());
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn an_anonymised_subset_keeps_no_original_value_and_is_keyed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = source(dir.path());
    let src = path.display().to_string();
    let full = docs(&path);
    let plain = dir.path().join("plain.jsonl");
    ok(subset(
        &src,
        dir.path(),
        &["--presentations", "6", "--out", plain.to_str().unwrap()],
        None,
    ));
    let anon = dir.path().join("anon.jsonl");
    let args = [
        "--presentations",
        "6",
        "--anonymize",
        "--shift-days",
        "-3",
        "--out",
    ];
    let run = |out: &Path, key: &str| {
        let mut a: Vec<&str> = args.to_vec();
        a.push(out.to_str().unwrap());
        subset(&src, dir.path(), &a, Some(key))
    };
    let stdout = ok(run(&anon, KEY));
    assert!(
        stdout.contains("the five reports survive the cut"),
        "{stdout}"
    );
    assert!(stdout.contains("times moved by -3 days"), "{stdout}");
    assert!(!stdout.contains(KEY));

    let text = std::fs::read_to_string(&anon)?;
    let found: Vec<String> = originals(&full)
        .into_iter()
        .filter(|v| text.contains(v.as_str()))
        .collect();
    assert!(found.is_empty(), "original values in the copy: {found:?}");

    // The same documents in the same order, ids re-minted with their time
    // (moved by the shift) and order kept.
    let (plain, anon_docs) = (docs(&plain), docs(&anon));
    assert_eq!(plain.len(), anon_docs.len());
    let oid_secs = |hex: &str| i64::from_str_radix(&hex[..8], 16).unwrap();
    for (p, a) in plain.iter().zip(&anon_docs) {
        assert_eq!(ty(p), ty(a));
        assert_eq!(oid_secs(&a.id), oid_secs(&p.id) - 3 * 86_400);
        if let (Some(tp), Some(ta)) = (p.ts_ms(), a.ts_ms()) {
            assert_eq!(ta, tp - 3 * 86_400_000);
        }
        assert_eq!(p.get("payload.device"), a.get("payload.device"));
        assert_eq!(p.get("payload.plan"), a.get("payload.plan"));
    }
    let order = |events: &[RawEvent]| {
        let mut idx: Vec<usize> = (0..events.len()).collect();
        idx.sort_by_key(|i| events[*i].id.clone());
        idx
    };
    assert_eq!(order(&plain), order(&anon_docs));

    // One user maps to one pseudonym everywhere.
    let mut pseudonym: HashMap<&str, &str> = HashMap::new();
    for (p, a) in plain.iter().zip(&anon_docs) {
        if let (Some(u), Some(v)) = (p.str("user_id"), a.str("user_id")) {
            assert_eq!(*pseudonym.entry(u).or_insert(v), v, "user {u}");
        }
    }
    assert!(!pseudonym.is_empty());

    // The same key gives the same copy; another key other pseudonyms.
    let same = dir.path().join("same.jsonl");
    ok(run(&same, KEY));
    assert_eq!(std::fs::read(&same)?, std::fs::read(&anon)?);
    let other = dir.path().join("other.jsonl");
    ok(run(&other, OTHER_KEY));
    let other_docs = docs(&other);
    assert_eq!(other_docs.len(), anon_docs.len());
    let users = |d: &[RawEvent]| -> BTreeSet<String> {
        d.iter()
            .filter_map(|e| e.str("user_id").map(str::to_owned))
            .collect()
    };
    assert!(users(&other_docs).is_disjoint(&users(&anon_docs)));

    // Without a key, or with a short one, it says what is missing.
    let out = subset(&src, dir.path(), &["--anonymize", "--out", "x.jsonl"], None);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--anonymize needs the key in CUTOVER_SUBSET_KEY"),
        "{err}"
    );
    let out = subset(
        &src,
        dir.path(),
        &["--anonymize", "--out", "x.jsonl"],
        Some("short"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs at least 16"), "{err}");
    assert!(!err.contains("short\""), "{err}");
    // Never over its own source.
    let out = subset(&src, dir.path(), &["--out", &src], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the source itself"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_subset_of_mongodb_into_mongodb_is_closed_and_its_reports_survive() -> Result<()> {
    let Some(url) = support::server("CUTOVER_TEST_MONGO_URL") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let path = support::seed(dir.path(), 3_000, 17);
    let full = docs(&path);
    let (client, db) = crate::mongo::load_events(&url, &path).await?;
    let copy_db = format!("{db}_copy");
    let args = [
        "--database",
        db.as_str(),
        "--presentations",
        "6",
        "--out",
        url.as_str(),
        "--out-database",
        copy_db.as_str(),
    ];
    let stdout = ok(subset(&url, dir.path(), &args, None));
    assert!(
        stdout.contains("the five reports survive the cut"),
        "{stdout}"
    );
    let copy: Vec<Document> = client
        .database(&copy_db)
        .collection::<Document>("events")
        .find(bson::doc! {})
        .await?
        .try_collect()
        .await?;
    let copy: Vec<RawEvent> = copy
        .into_iter()
        .map(|d| {
            let json = bson::Bson::Document(d).into_canonical_extjson();
            RawEvent {
                id: json["_id"]["$oid"].as_str().unwrap_or_default().to_owned(),
                json,
            }
        })
        .collect();
    assert!(!copy.is_empty() && copy.len() < full.len() / 3);
    assert_closed(&full, &copy, "presentations");

    // The collection is not empty any more: a second copy is refused.
    let out = subset(&url, dir.path(), &args, None);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds documents"), "{err}");

    // Anonymised into another collection: the reports survive through the
    // pseudonyms, computed there by the legacy aggregations.
    let mut anon: Vec<&str> = args.to_vec();
    anon.extend(["--out-collection", "anonymised", "--anonymize"]);
    let stdout = ok(subset(&url, dir.path(), &anon, Some(KEY)));
    assert!(
        stdout.contains("the five reports survive the cut"),
        "{stdout}"
    );
    let anonymised: Vec<Document> = client
        .database(&copy_db)
        .collection::<Document>("anonymised")
        .find(bson::doc! {})
        .await?
        .try_collect()
        .await?;
    let text: String = anonymised
        .into_iter()
        .map(|d| bson::Bson::Document(d).into_relaxed_extjson().to_string())
        .collect();
    let found: Vec<String> = originals(&full)
        .into_iter()
        .filter(|v| text.contains(v.as_str()))
        .collect();
    assert!(found.is_empty(), "original values in the copy: {found:?}");
    for c in ["events", "anonymised"] {
        let n = client
            .database(&copy_db)
            .collection::<Document>(c)
            .count_documents(bson::doc! {})
            .await?;
        assert_eq!(n as usize, copy.len(), "{c}");
    }
    client.database(&db).drop().await?;
    client.database(&copy_db).drop().await?;
    Ok(())
}
