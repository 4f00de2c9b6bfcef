//! `cutover runs`: the recorded runs, newest first.

use std::process::ExitCode;

use anyhow::Result;
use workflows::redact::redact;

use super::warehouse;
use crate::cli::{Global, ListFormat, RunsArgs};

/// Lists recorded runs as a table or JSON, after recording dead runs as
/// interrupted with `--sweep`.
///
/// # Errors
/// The warehouse cannot be reached or read.
pub async fn command(g: &Global, args: RunsArgs) -> Result<ExitCode> {
    let wh = warehouse(g).await?;
    let dag = args.dag.as_deref();
    if args.sweep {
        let dead = wh.ledger().interrupt_dead(dag).await?;
        eprintln!("{} dead runs recorded as interrupted", dead.len());
    }
    let runs = wh.ledger().runs(dag, args.limit).await?;
    match args.format {
        ListFormat::Json => println!("{}", redact(&serde_json::to_string_pretty(&runs)?)),
        ListFormat::Table => {
            println!(
                "{:<36}  {:<14}  {:<11}  {:<24}  {:>8}  {:>8}  {:>5}",
                "RUN", "DAG", "STATE", "STARTED", "READ", "WRITTEN", "QUAR"
            );
            for r in runs {
                println!(
                    "{:<36}  {:<14}  {:<11}  {:<24}  {:>8}  {:>8}  {:>5}",
                    r.run_id,
                    r.dag,
                    r.state,
                    r.started_at,
                    r.rows_read,
                    r.rows_written,
                    r.rows_quarantined
                );
                if let Some(e) = r.error {
                    println!(
                        "    error: {}",
                        redact(e.lines().next().unwrap_or_default())
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
