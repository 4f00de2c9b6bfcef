//! `cutover quarantine`: list and show what was set aside, and replay it.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use tasks::quarantine::{self, Filter, Stored};
use tasks::Warehouse;
use workflows::redact::redact;
use workflows::Runner;

use super::{env, load_dags, run_options, warehouse};
use crate::cli::{Global, ListFormat, QuarantineCommand};

/// Runs one `cutover quarantine` subcommand.
///
/// # Errors
/// The warehouse cannot be reached or read, nothing matches `show`, or the
/// DAGs or source needed by `replay` cannot be used.
pub async fn command(g: &Global, cmd: QuarantineCommand) -> Result<ExitCode> {
    let wh = warehouse(g).await?;
    match cmd {
        QuarantineCommand::List {
            dag,
            task,
            limit,
            format,
        } => {
            let filter = Filter {
                dag,
                task,
                doc_ids: Vec::new(),
                limit: Some(limit),
            };
            list(&wh, &filter, format).await
        }
        QuarantineCommand::Show { doc_ids, dag } => show(&wh, doc_ids, dag).await,
        QuarantineCommand::Replay { dag, task, doc_ids } => {
            let filter = Filter {
                dag,
                task,
                doc_ids,
                limit: None,
            };
            replay(g, &filter).await
        }
    }
}

/// The quarantine rows matching `filter`.
async fn read(wh: &Warehouse, filter: &Filter) -> Result<Vec<Stored>> {
    quarantine::list(wh, filter)
        .await
        .context("reading the quarantine")
}

/// Prints the rows matching `filter` as a table or JSON.
async fn list(wh: &Warehouse, filter: &Filter, format: ListFormat) -> Result<ExitCode> {
    let rows = read(wh, filter).await?;
    match format {
        ListFormat::Json => println!("{}", redact(&serde_json::to_string_pretty(&rows)?)),
        ListFormat::Table => {
            if rows.is_empty() {
                println!("the quarantine is empty");
            }
            println!(
                "{:<14}  {:<18}  {:<24}  {:<30}  REASON",
                "DAG", "TASK", "DOCUMENT", "WHERE"
            );
            for r in rows {
                let reason: String = r.reason.chars().take(160).collect();
                println!(
                    "{:<14}  {:<18}  {:<24}  {:<30}  {}",
                    r.dag,
                    r.task,
                    r.doc_id,
                    r.location.as_deref().unwrap_or("-"),
                    redact(&reason)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the documents `doc_ids` whole, raw form included.
async fn show(wh: &Warehouse, doc_ids: Vec<String>, dag: Option<String>) -> Result<ExitCode> {
    let filter = Filter {
        dag,
        task: None,
        doc_ids,
        limit: None,
    };
    let rows = read(wh, &filter).await?;
    if rows.is_empty() {
        bail!(
            "nothing in the quarantine has the id {}",
            filter.doc_ids.join(", ")
        );
    }
    for r in rows {
        println!("document:    {}", r.doc_id);
        println!("dag, task:   {} {}", r.dag, r.task);
        println!(
            "event:       {} {}",
            r.event_type.as_deref().unwrap_or("-"),
            r.event_id.as_deref().unwrap_or("-")
        );
        println!("where:       {}", r.location.as_deref().unwrap_or("-"));
        println!("run, when:   {} {}", r.run_id, r.quarantined_at);
        println!("reason:      {}", redact(&r.reason));
        println!("raw ({}):", r.raw_encoding);
        println!("{}\n", redact(&r.raw().display()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the documents matching `filter` through their DAGs again and prints
/// what left the quarantine; fails when a replay run failed.
async fn replay(g: &Global, filter: &Filter) -> Result<ExitCode> {
    let dags = load_dags(&g.dags)?;
    let env = env(g).await?;
    let runner = Runner::new(env.warehouse.ledger());
    let opts = run_options(g);
    let done = tasks::replay::replay(&dags, &env, &runner, &opts, filter).await?;
    if done.is_empty() {
        println!("nothing in the quarantine matches");
    }
    let mut code = ExitCode::SUCCESS;
    for r in done {
        println!(
            "{}: {} rows, {} documents replayed{}: {} left the quarantine, {} stay",
            r.dag,
            r.rows,
            r.documents,
            r.run_id
                .as_deref()
                .map_or(String::new(), |id| format!(" (run {id})")),
            r.released,
            r.rows as u64 - r.released.min(r.rows as u64)
        );
        for (doc, why) in &r.skipped {
            println!("  {doc}: not replayed: {why}");
        }
        if let Some(e) = &r.error {
            println!("  the run failed: {}", redact(e));
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}
