//! `cutover backfill`: loads a range of event time again, in chunks.

use std::process::ExitCode;

use anyhow::{Context, Result};
use std::sync::Arc;

use workflows::backfill::{self, Settings};
use workflows::chunks::Chunk;
use workflows::time::format_ms;
use workflows::Runner;

use super::{env, holder, parse_instant, run_options, select, start_metrics, stop_on_signal};
use crate::cli::{BackfillArgs, Global};

/// Backfills the range through the DAG's chunks until done or a signal, or
/// lists the chunks with `--dry-run`; fails when a chunk failed or chunks
/// are left.
///
/// # Errors
/// The DAG is unknown, the range or chunking is invalid, or the source,
/// warehouse or metrics address cannot be used.
pub async fn command(g: &Global, args: BackfillArgs) -> Result<ExitCode> {
    let dag = select(g, std::slice::from_ref(&args.name), false)?
        .pop()
        .context("no DAG selected")?;
    let settings = Settings {
        from_ms: parse_instant(&args.from).context("--from")?,
        until_ms: parse_instant(&args.to).context("--to")?,
        chunk: args.chunk,
        parallel: args.parallel,
        max_rate: args.max_rate,
        claim_ttl: args.claim_ttl,
        holder: holder(),
        run: run_options(g),
    };
    settings.check()?;
    let env = env(g).await?.quiet();
    let runner = Runner::new(env.warehouse.ledger());
    if args.dry_run {
        let chunks = backfill::dry_run(&dag, &runner, &settings).await?;
        println!(
            "backfill {}: {} chunks",
            settings.key(&dag.name),
            chunks.len()
        );
        print_chunks(chunks);
        return Ok(ExitCode::SUCCESS);
    }
    start_metrics(g, &env.warehouse).await?;
    let (_, stop) = stop_on_signal("finishing the chunks under way, claiming no more");
    let report = backfill::run(&dag, Arc::new(env), runner, settings, stop).await?;
    let secs = report.elapsed.as_secs_f64();
    println!(
        "backfill {}: {} chunks; {} done by this process, {} done before or by other workers, {} failed; {} events in {:.1} s ({:.0} events/s)",
        report.key,
        report.chunks,
        report.done_here,
        report.done_elsewhere,
        report.failed.len(),
        report.events,
        secs,
        report.events as f64 / secs.max(1e-3)
    );
    for c in &report.failed {
        println!(
            "  failed: {} to {}: {}",
            format_ms(c.from_ms),
            format_ms(c.until_ms),
            c.error.as_deref().unwrap_or("?")
        );
    }
    if report.left > 0 {
        println!(
            "stopped with {} chunks left: run the same command again to go on",
            report.left
        );
    }
    Ok(if report.failed.is_empty() && report.left == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints the chunks as a table: range, state, events and run.
fn print_chunks(chunks: Vec<Chunk>) {
    println!(
        "{:<24}  {:<24}  {:<8}  {:>8}  RUN",
        "FROM", "UNTIL", "STATE", "EVENTS"
    );
    for c in chunks {
        println!(
            "{:<24}  {:<24}  {:<8}  {:>8}  {}",
            format_ms(c.from_ms),
            format_ms(c.until_ms),
            c.state,
            c.events,
            c.run_id.unwrap_or_else(|| "-".into())
        );
    }
}
