//! The views data point read from a MongoDB server (any server speaking the
//! wire protocol: `CUTOVER_TEST_MONGO_URL`, which `tests/run.sh` starts).

use anyhow::Result;
use bson::{Bson, Document};
use serde_json::Value;

use crate::support::{self, cutover_with, ok, read_events};
use crate::views::expected_views_daily;

/// Loads an events file into a new database and returns its name.
async fn load_events(url: &str, path: &std::path::Path) -> Result<(mongodb::Client, String)> {
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
    let Ok(url) = std::env::var("CUTOVER_TEST_MONGO_URL") else {
        eprintln!("CUTOVER_TEST_MONGO_URL is not set: skipped");
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
    assert!(again.contains("0 rows changed"), "{again}");
    client.database(&db).drop().await?;
    Ok(())
}
