//! `cutover dags`: validate, list and show DAG files, and list the task
//! kinds they can use.

use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::Utc;
use tasks::kinds::TaskKind;
use workflows::dag;
use workflows::TaskKinds;

use super::{load_dags, select};
use crate::cli::{DagsCommand, Global};

/// Runs one `cutover dags` subcommand.
///
/// # Errors
/// The DAGs do not load (for list and show), the DAG is unknown, or a task
/// cannot be rendered.
pub fn command(g: &Global, cmd: DagsCommand) -> Result<ExitCode> {
    match cmd {
        DagsCommand::Validate { paths } => Ok(validate(g, &paths)),
        DagsCommand::List => list(g),
        DagsCommand::Show { name } => show(g, name),
        DagsCommand::Kinds => {
            kinds();
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Checks the files given, or every file in the DAG directory, and prints
/// every problem.
fn validate(g: &Global, paths: &[std::path::PathBuf]) -> ExitCode {
    let result = if paths.is_empty() {
        dag::load_dir::<TaskKind>(&g.dags)
    } else {
        dag::load_files::<TaskKind>(paths)
    };
    match result {
        Ok(dags) => {
            for d in &dags {
                println!(
                    "ok  {} ({}): {} tasks",
                    d.file.display(),
                    d.name,
                    d.tasks.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                println!("{e}");
            }
            eprintln!("{} problem(s)", errors.len());
            ExitCode::FAILURE
        }
    }
}

/// Prints each DAG's name, data point, schedule and next run.
fn list(g: &Global) -> Result<ExitCode> {
    let dags = load_dags(&g.dags)?;
    println!(
        "{:<16}  {:<12}  {:<32}  NEXT RUN",
        "NAME", "DATA POINT", "SCHEDULE"
    );
    for d in dags {
        let (schedule, next) = match &d.schedule {
            Some(s) => (
                format!("{} ({})", s.cron, s.timezone),
                s.next_after(Utc::now()).map_or_else(
                    || "never".into(),
                    |t| workflows::time::format_ms(t.timestamp_millis()),
                ),
            ),
            None => ("ad hoc".into(), "-".into()),
        };
        println!(
            "{:<16}  {:<12}  {:<32}  {}",
            d.name, d.data_point, schedule, next
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a DAG's settings, its task graph and every task as TOML.
fn show(g: &Global, name: String) -> Result<ExitCode> {
    let dag = select(g, &[name], false)?.remove(0);
    println!("{} ({})", dag.name, dag.file.display());
    if !dag.description.is_empty() {
        println!("  {}", dag.description.trim());
    }
    println!("  data point: {}", dag.data_point);
    match &dag.schedule {
        Some(s) => println!(
            "  schedule: {} in {}, catch up: {}",
            s.cron,
            s.timezone,
            s.catch_up.name()
        ),
        None => println!("  schedule: none (ad hoc)"),
    }
    println!("\ntask graph:");
    for (i, wave) in dag.waves().iter().enumerate() {
        let ids: Vec<&str> = wave.iter().map(|t| t.id.as_str()).collect();
        println!("  step {}: {}", i + 1, ids.join(", "));
    }
    for t in &dag.tasks {
        let mut table = toml::Table::try_from(t).context("rendering the task")?;
        if let Some(toml::Value::Table(kind)) = table.remove("kind") {
            table.extend(kind);
        }
        let mut wrapper = toml::Table::new();
        wrapper.insert(t.id.clone(), toml::Value::Table(table));
        print!(
            "\n{}",
            toml::to_string_pretty(&wrapper).context("rendering the task")?
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints every task kind with its summary and settings.
fn kinds() {
    for k in TaskKind::catalog() {
        println!("{:<18} {}", k.name, k.summary);
        println!("{:<18} settings: {}", "", (k.fields)().join(", "));
    }
}
