//! The ceiling for reading events out of MongoDB: the same query the
//! extract sends (types, sorted by time then `_id`, the same batch size),
//! drained with the same driver and nothing else done per document.
//!
//! cargo run --release --example mongo_drain -- URL DATABASE [BATCH_SIZE]

use std::time::Instant;

use bson::{doc, Document};
use futures::TryStreamExt;

const TYPES: &[&str] = &[
    "user.registered",
    "user.plan_changed",
    "presentation.created",
    "presentation.renamed",
    "session.started",
    "session.ended",
    "presentation.viewed",
    "slide.viewed",
    "presentation.shared",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: mongo_drain URL DATABASE [BATCH_SIZE]")?;
    let database = args
        .next()
        .ok_or("usage: mongo_drain URL DATABASE [BATCH_SIZE]")?;
    let batch: u32 = args.next().map_or(Ok(20_000), |b| b.parse())?;
    let client = mongodb::Client::with_uri_str(&url).await?;
    let coll = client.database(&database).collection::<Document>("events");
    let started = Instant::now();
    let mut cursor = coll
        .find(doc! { "type": { "$in": TYPES } })
        .sort(doc! { "ts": 1, "_id": 1 })
        .batch_size(batch)
        .await?;
    let mut n = 0u64;
    while cursor.try_next().await?.is_some() {
        n += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "drained {n} documents in {secs:.2} s: {:.0} documents/s",
        n as f64 / secs
    );
    Ok(())
}
