//! Reads report URLs of `cutover serve` at a fixed rate and prints the
//! latency percentiles: the load of `tests/bench/serve.sh`.
//!
//!     cargo run --release --example load -- RATE SECONDS URL...
//!
//! Open loop: a request is sent every 1/RATE s whether or not the earlier
//! ones have answered, and its latency is measured from when it was due,
//! so a slow answer delays no measurement. URLs are taken in turn, each
//! request with its own targeting key. Prints one JSON line; with
//! `LOAD_RAW=FILE` it also appends every latency to FILE.

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
            let outcome = match req.send().await {
                Ok(r) if r.status().is_success() => {
                    r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                }
                Ok(r) => Err(format!("HTTP {}", r.status())),
                Err(e) => Err(format!("{e:?}")),
            };
            (due.elapsed(), outcome)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = Vec::new();
    for t in tasks {
        match t.await? {
            (took, Ok(())) => latencies.push(took),
            (_, Err(e)) => errors.push(e),
        }
    }
    // `LOAD_RAW=FILE` appends every latency (ms), one per line.
    if let Some(path) = std::env::var_os("LOAD_RAW") {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        for l in &latencies {
            writeln!(f, "{:.3}", l.as_secs_f64() * 1000.0)?;
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
            "errors": errors.len(),
            "first_error": errors.first(),
            "rate": rate,
            "p50_ms": pct(0.50),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "max_ms": pct(1.0),
        })
    );
    Ok(())
}
