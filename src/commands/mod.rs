//! One module per subcommand, and what several of them share: opening the
//! warehouse and the source, loading and selecting DAGs, reading instants,
//! writing files atomically, and stopping on a signal.

pub mod backfill;
pub mod consume;
pub mod dags;
pub mod demo;
pub mod flags;
pub mod migrate;
pub mod quarantine;
pub mod reconcile;
pub mod report;
pub mod run;
pub mod runs;
pub mod schedule;
pub mod seed;
pub mod slice;
pub mod status;
pub mod subset;
pub mod sunset;

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use tasks::consume::status::hostname;
use tasks::kinds::{Env, TaskKind};
use tasks::source::Source;
use tasks::Warehouse;
use tokio::sync::watch;
use workflows::dag::{self, Dag};
use workflows::RunOptions;

use crate::cli::Global;

/// The log target of the binary's own lines, whichever module writes them.
pub const LOG_TARGET: &str = "cutover";

/// Connects to the warehouse and creates or upgrades its schema.
///
/// # Errors
/// The warehouse cannot be reached or migrated.
pub async fn warehouse(g: &Global) -> Result<Warehouse> {
    let wh = Warehouse::connect(&g.warehouse_url).await?;
    wh.migrate().await?;
    Ok(wh)
}

/// Opens and checks the event source, and opens the warehouse.
///
/// # Errors
/// The events file is missing, or the source or warehouse cannot be
/// reached.
pub async fn env(g: &Global) -> Result<Env> {
    let source = source(g).await?;
    Ok(Env::new(source, warehouse(g).await?))
}

/// Opens and checks the event source.
///
/// # Errors
/// The events file is missing, or MongoDB cannot be reached.
pub async fn source(g: &Global) -> Result<Source> {
    let source = Source::open(&g.source_url).await?;
    if let Source::File(path) = &source {
        if !path.exists() {
            bail!(
                "the events file {} does not exist; set CUTOVER_SOURCE_URL (a file or mongodb:// URL), or create one with `cutover seed --out {}`",
                path.display(),
                path.display()
            );
        }
    }
    source.check().await?;
    Ok(source)
}

/// A spinner on standard error for long work; its message says the step.
pub fn spinner() -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    spinner
}

/// Run options with the work directory from the command line.
pub fn run_options(g: &Global) -> RunOptions {
    RunOptions {
        work_root: g.work_dir.clone(),
        ..RunOptions::default()
    }
}

/// Serves the metrics endpoint when --metrics-addr is given.
///
/// # Errors
/// The address cannot be bound.
pub async fn start_metrics(g: &Global, wh: &Warehouse) -> Result<()> {
    if let Some(addr) = g.metrics_addr {
        crate::metrics::serve(addr, wh.clone())
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    Ok(())
}

/// This process's name in leases and claims: host, pid and start time.
pub fn holder() -> String {
    format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        Utc::now().timestamp_millis()
    )
}

/// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 instant into epoch ms.
///
/// # Errors
/// `s` is neither.
pub fn parse_instant(s: &str) -> Result<i64> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_millis());
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .with_context(|| format!("`{s}` is not a date (YYYY-MM-DD) or an RFC 3339 instant"))
}

/// Every DAG in `dir`, or every problem printed to standard error.
///
/// # Errors
/// A DAG file does not validate.
pub fn load_dags(dir: &Path) -> Result<Vec<Dag<TaskKind>>> {
    dag::load_dir::<TaskKind>(dir).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!(
            "{} problem(s) in the DAG files in {}",
            errors.len(),
            dir.display()
        )
    })
}

/// The DAGs named, in that order, or every DAG with `all`.
///
/// # Errors
/// The DAGs do not load, none is named without `all`, or a name is unknown
/// (with a "did you mean" hint).
pub fn select(g: &Global, names: &[String], all: bool) -> Result<Vec<Dag<TaskKind>>> {
    let dags = load_dags(&g.dags)?;
    if all {
        return Ok(dags);
    }
    if names.is_empty() {
        bail!("name the DAGs to run, or pass --all");
    }
    names
        .iter()
        .map(|n| {
            dags.iter()
                .find(|d| &d.name == n)
                .cloned()
                .with_context(|| {
                    let known: Vec<&str> = dags.iter().map(|d| d.name.as_str()).collect();
                    match dag::did_you_mean(n, known.iter().copied()) {
                        Some(h) => format!(
                            "no DAG named `{n}` in {} (did you mean `{h}`?)",
                            g.dags.display()
                        ),
                        None => format!(
                            "no DAG named `{n}` in {}; there are: {}",
                            g.dags.display(),
                            known.join(", ")
                        ),
                    }
                })
        })
        .collect()
}

/// Writes `path` through a `.tmp` file beside it, renamed over `path` once
/// `write` has succeeded, so that `path` is never seen half written.
///
/// # Errors
/// The directory or the file cannot be created, `write` fails, or the
/// rename fails.
pub fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(BufWriter<File>) -> Result<T>,
) -> Result<T> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let value = write(BufWriter::new(file))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(value)
}

/// A stop flag that turns true on SIGINT or SIGTERM, logging
/// `signal received: {then}` when it does.
///
/// The sender lets the caller raise the flag as well; the flag stays
/// raisable after the caller drops it.
pub fn stop_on_signal(then: &'static str) -> (watch::Sender<bool>, watch::Receiver<bool>) {
    let (stop_tx, stop) = watch::channel(false);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(target: LOG_TARGET, "signal received: {then}");
        let _ = on_signal.send(true);
    });
    (stop_tx, stop)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
