//! `cutover run`: runs DAGs now, or shows what a run would read.

use std::process::ExitCode;

use anyhow::Result;
use tasks::kinds::TaskKind;
use tasks::Warehouse;
use workflows::dag::Dag;
use workflows::redact::redact;
use workflows::time::format_ms;
use workflows::{RunOptions, RunState, Runner, TaskKinds, TaskState, Trigger};

use super::{env, select, start_metrics};
use crate::cli::{Global, RunArgs};

/// Runs the DAGs selected, or shows the plan with `--dry-run`.
///
/// # Errors
/// The DAGs do not load or are unknown, or the source or warehouse cannot
/// be reached.
pub async fn command(g: &Global, args: RunArgs) -> Result<ExitCode> {
    let selected = select(g, &args.names, args.all)?;
    if args.dry_run {
        dry_run_plan(g, &selected).await
    } else {
        run_dags(g, &selected, args.keep_work, Trigger::Manual).await
    }
}

/// Runs `dags` one after the other with `trigger`, printing each task's
/// outcome; fails when a run failed.
///
/// # Errors
/// The source or warehouse cannot be reached, or the ledger fails.
pub async fn run_dags(
    g: &Global,
    dags: &[Dag<TaskKind>],
    keep_work: bool,
    trigger: Trigger,
) -> Result<ExitCode> {
    let env = env(g).await?;
    start_metrics(g, &env.warehouse).await?;
    let runner = Runner::new(env.warehouse.ledger());
    let opts = RunOptions {
        work_root: g.work_dir.clone(),
        trigger,
        keep_work,
        ..RunOptions::default()
    };
    let mut failed = 0;
    for dag in dags {
        let summary = runner.run(dag, env.tasks(dag), &opts).await?;
        println!(
            "{} run {}: {}",
            dag.name,
            summary.run_id,
            summary.state.status()
        );
        for (id, state) in &summary.tasks {
            print_task(id, state);
        }
        let t = summary.totals;
        println!(
            "  {} documents read, {} rows changed, {} quarantined{}",
            t.read,
            t.written,
            t.quarantined,
            if t.quarantined > 0 {
                " (`cutover quarantine list` shows them)"
            } else {
                ""
            }
        );
        if matches!(summary.state, RunState::Failed { .. }) {
            failed += 1;
            println!("  work files kept in {}", summary.work_dir.display());
        }
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints one task's line of a run's outcome.
fn print_task(id: &str, state: &TaskState) {
    match state {
        TaskState::Succeeded { attempt, report } => {
            let retried = if *attempt > 1 {
                format!(" (attempt {attempt})")
            } else {
                String::new()
            };
            println!("  {id:<22} ok{retried}: {}", report.summary);
        }
        TaskState::Failed { attempt, error, .. } => {
            println!(
                "  {id:<22} FAILED after {attempt} attempt(s): {}",
                redact(error)
            )
        }
        TaskState::Skipped { because } => {
            println!("  {id:<22} skipped ({because} did not succeed)")
        }
        other => println!("  {id:<22} {}", other.status()),
    }
}

/// Prints each DAG's steps and where each extract would read from, reading
/// and writing nothing.
async fn dry_run_plan(g: &Global, dags: &[Dag<TaskKind>]) -> Result<ExitCode> {
    let wh = Warehouse::connect(&g.warehouse_url).await?;
    for dag in dags {
        println!("{} (dry run: nothing is read or written)", dag.name);
        for (i, wave) in dag.waves().iter().enumerate() {
            for t in wave {
                let mut line = format!("  step {}: {} [{}]", i + 1, t.id, t.kind.kind_name());
                if let Some(c) = t.kind.extract() {
                    // Without migrations there is no watermark table yet.
                    let w = wh.watermark(&dag.name, &t.id).await.ok().flatten();
                    let from = c
                        .since(w)
                        .map_or_else(|| "the beginning".to_owned(), format_ms);
                    line.push_str(&format!(" would read {} from {from}", c.types.join(", ")));
                }
                if !t.depends_on.is_empty() {
                    line.push_str(&format!(" after {}", t.depends_on.join(", ")));
                }
                println!("{line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
