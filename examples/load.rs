//! Reads report URLs of `cutover serve` at a fixed rate and prints the
//! latency percentiles: the load of `tests/bench/serve.sh`.
//!
//!     cargo run --release --example load -- RATE SECONDS URL...
//!
//! Open loop: a request is sent every 1/RATE s whether or not the earlier
//! ones have answered, and its latency is measured from when it was due,
//! so a slow answer delays no measurement. URLs are taken in turn, each
//! request with its own targeting key. Prints one JSON line.

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [rate, seconds, urls @ ..] = args.as_slice() else {
        anyhow::bail!("usage: load RATE SECONDS URL...");
    };
    anyhow::ensure!(!urls.is_empty(), "usage: load RATE SECONDS URL...");
    let rate: f64 = rate.parse()?;
    let total = (rate * seconds.parse::<f64>()?).round() as usize;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let every = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + every * u32::try_from(i)?;
        tokio::time::sleep_until(due.into()).await;
        let req = client
            .get(&urls[i % urls.len()])
            .header("cutover-targeting-key", format!("bench-{i}"));
        tasks.push(tokio::spawn(async move {
            let ok = match req.send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (due.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        let (took, ok) = t.await?;
        if ok {
            latencies.push(took);
        } else {
            errors += 1;
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": total,
            "errors": errors,
            "rate": rate,
            "p50_ms": pct(0.50),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "max_ms": pct(1.0),
        })
    );
    Ok(())
}
