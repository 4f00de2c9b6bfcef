//! The SQS side of the feed benchmark (`tests/bench/sqs.sh`), with the same
//! client and requests `cutover consume` uses:
//!
//! - `publish QUEUE_URL EVENTS_FILE [BACKLOG]`: sends every line of an
//!   events file as one message, ten per request, several requests at once;
//!   with BACKLOG, waits before each request while the queue holds that many
//!   messages (visible or in flight), as a live feed that a consumer keeps
//!   up with.
//! - `drain QUEUE_URL RECEIVERS IDLE_SECS`: the ceiling for consuming: long
//!   polls with RECEIVERS receivers and deletes every batch at once, doing
//!   nothing else, until nothing arrives for IDLE_SECS; prints messages/s.
//!
//! AWS settings come from the environment (AWS_ENDPOINT_URL, AWS_REGION...).
//!
//! cargo run --release --example sqs_feed -- drain URL 2 3

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use tasks::consume::Queue;

const USAGE: &str =
    "usage: sqs_feed publish QUEUE_URL EVENTS_FILE [BACKLOG] | drain QUEUE_URL RECEIVERS IDLE_SECS";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["publish", url, file] => publish(url, file, None).await,
        ["publish", url, file, backlog] => publish(url, file, Some(backlog.parse()?)).await,
        ["drain", url, receivers, idle] => drain(url, receivers.parse()?, idle.parse()?).await,
        _ => Err(USAGE.into()),
    }
}

async fn publish(
    url: &str,
    file: &str,
    backlog: Option<u64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let queue = Queue::from_env(url).await;
    let text = std::fs::read_to_string(file)?;
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let started = Instant::now();
    let chunks: Vec<Vec<String>> = lines.chunks(10).map(<[String]>::to_vec).collect();
    let next = Arc::new(AtomicU64::new(0));
    let chunks = Arc::new(chunks);
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (queue, next, chunks) = (queue.clone(), Arc::clone(&next), Arc::clone(&chunks));
        senders.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(chunk) = chunks.get(i) else {
                    return Ok::<_, String>(());
                };
                while let Some(limit) = backlog {
                    let depth = queue.depth().await.map_err(|e| e.to_string())?;
                    if depth.visible + depth.in_flight < limit {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(j, b)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(j.to_string())
                            .message_body(b)
                            .build()
                            .expect("id and body are set")
                    })
                    .collect();
                queue
                    .client()
                    .send_message_batch()
                    .queue_url(queue.url())
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
            }
        });
    }
    while let Some(r) = senders.join_next().await {
        r??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {} messages in {secs:.1} s ({:.0}/s)",
        lines.len(),
        lines.len() as f64 / secs
    );
    Ok(())
}

async fn drain(url: &str, receivers: usize, idle: u64) -> Result<(), Box<dyn std::error::Error>> {
    let queue = Queue::from_env(url).await;
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..receivers {
        let (queue, count, last) = (queue.clone(), Arc::clone(&count), Arc::clone(&last));
        workers.spawn(async move {
            loop {
                let messages = queue
                    .receive(Duration::from_secs(1), None)
                    .await
                    .map_err(|e| e.to_string())?;
                if messages.is_empty() {
                    if last.lock().expect("last").elapsed() >= Duration::from_secs(idle) {
                        return Ok::<_, String>(());
                    }
                    continue;
                }
                *last.lock().expect("last") = Instant::now();
                let receipts: Vec<&str> = messages.iter().map(|m| m.receipt.as_str()).collect();
                let failed = queue
                    .delete_batch(&receipts)
                    .await
                    .map_err(|e| e.to_string())?;
                count.fetch_add((receipts.len() - failed.len()) as u64, Ordering::SeqCst);
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    let n = count.load(Ordering::SeqCst);
    let busy = last
        .lock()
        .expect("last")
        .duration_since(started)
        .as_secs_f64();
    println!(
        "drained {n} messages in {busy:.1} s ({:.0}/s, idle tail excluded)",
        n as f64 / busy
    );
    Ok(())
}
