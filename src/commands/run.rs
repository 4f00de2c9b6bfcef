//! `cutover run`: runs DAGs now, or shows what a run would read.

use std::collections::HashSet;
use std::process::ExitCode;

use anyhow::Result;
use tasks::kinds::TaskKind;
use tasks::Warehouse;
use workflows::dag::Dag;
use workflows::redact::redact;
use workflows::time::format_ms;
use workflows::{Backend, RunOptions, RunState, Runner, TaskKinds, TaskState, Trigger};

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
        let how = How {
            keep_work: args.keep_work,
            skip_unchanged: !args.no_skip,
            parallel: args.parallel.get(),
        };
        run_dags(g, &selected, how, Trigger::Manual).await
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
    how: How,
    trigger: Trigger,
) -> Result<ExitCode> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let env = env(g).await?;
    start_metrics(g, &env.warehouse).await?;
    let runner = Runner::new(env.warehouse.ledger());
    let opts = RunOptions {
        work_root: g.work_dir.clone(),
        trigger,
        keep_work: how.keep_work,
        skip_unchanged: how.skip_unchanged,
        ..RunOptions::default()
    };
    // SQLite takes one writer at a time: its DAGs run one after another.
    let parallel = if env.warehouse.backend == Backend::Sqlite {
        1
    } else {
        how.parallel.max(1)
    };
    let selected: HashSet<&str> = dags.iter().map(|d| d.name.as_str()).collect();
    let mut waiting: Vec<&Dag<TaskKind>> = dags.iter().collect();
    let mut ended: HashSet<&str> = HashSet::new();
    let mut running = FuturesUnordered::new();
    let mut failed = 0;
    loop {
        // Start, in order, the DAGs whose `after` DAGs have ended.
        let mut i = 0;
        while running.len() < parallel && i < waiting.len() {
            let ready = waiting[i]
                .after
                .iter()
                .all(|a| ended.contains(a.as_str()) || !selected.contains(a.as_str()));
            if ready {
                let dag = waiting.remove(i);
                let (runner, env, opts) = (&runner, &env, &opts);
                running.push(async move { (dag, runner.run(dag, env.tasks(dag), opts).await) });
            } else {
                i += 1;
            }
        }
        let Some((dag, summary)) = running.next().await else {
            break;
        };
        ended.insert(dag.name.as_str());
        let summary = summary?;
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

/// How `run_dags` runs the DAGs.
#[derive(Debug, Clone, Copy)]
pub struct How {
    /// Keep each run's segment files after success.
    pub keep_work: bool,
    /// Do not run the tasks after extracts that find nothing new.
    pub skip_unchanged: bool,
    /// How many DAGs run at once (SQLite: one).
    pub parallel: usize,
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
