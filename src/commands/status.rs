//! `cutover status`: where every DAG and every feed consumer stands.

use std::process::ExitCode;

use anyhow::Result;
use serde::{Serialize, Serializer};
use tasks::consume::ConsumerStatus;
use workflows::ledger::RunRecord;
use workflows::redact::redact;
use workflows::time::format_ms;
use workflows::{Role, TaskKinds};

use super::{load_dags, warehouse};
use crate::cli::{Global, ListFormat, StatusArgs};

/// Every DAG's and every consumer's standing: the JSON form as it is.
#[derive(Debug, Serialize)]
struct Status {
    /// One row per DAG, in the DAG directory's order.
    dags: Vec<StatusRow>,
    /// Every consumer that has run against the warehouse.
    consumers: Vec<ConsumerStatus>,
}

/// Where one DAG stands.
#[derive(Debug, Serialize)]
struct StatusRow {
    /// The DAG's name.
    dag: String,
    /// Its latest run, if it ever ran.
    last_run: Option<RunRecord>,
    /// Each extract task's committed watermark, in task order (a JSON
    /// object of task id to instant or null).
    #[serde(serialize_with = "watermarks_as_map")]
    watermarks: Vec<Watermark>,
}

/// An extract task's committed watermark.
#[derive(Debug)]
struct Watermark {
    /// The task's id.
    task: String,
    /// The instant, or `None` before its first commit.
    at: Option<String>,
}

fn watermarks_as_map<S: Serializer>(marks: &[Watermark], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(marks.iter().map(|w| (&w.task, &w.at)))
}

/// Prints every DAG's last run and watermarks and every consumer's
/// counters, as tables or JSON.
///
/// # Errors
/// The DAGs do not load, or the warehouse cannot be reached or read.
pub async fn command(g: &Global, args: StatusArgs) -> Result<ExitCode> {
    let dags = load_dags(&g.dags)?;
    let wh = warehouse(g).await?;
    let ledger = wh.ledger();
    let mut rows = Vec::new();
    for dag in &dags {
        let last_run = ledger.runs(Some(&dag.name), 1).await?.into_iter().next();
        let mut watermarks = Vec::new();
        for t in &dag.tasks {
            if t.kind.role() == Role::Extract {
                let at = wh.watermark(&dag.name, &t.id).await?.map(format_ms);
                watermarks.push(Watermark {
                    task: t.id.clone(),
                    at,
                });
            }
        }
        rows.push(StatusRow {
            dag: dag.name.clone(),
            last_run,
            watermarks,
        });
    }
    let status = Status {
        dags: rows,
        consumers: ConsumerStatus::all(&wh).await?,
    };
    match args.format {
        ListFormat::Json => println!("{}", redact(&serde_json::to_string_pretty(&status)?)),
        ListFormat::Table => status.print_table(),
    }
    Ok(ExitCode::SUCCESS)
}

impl Status {
    /// Prints the DAG table, then the consumer table.
    fn print_table(&self) {
        println!(
            "{:<14}  {:<9}  {:<8}  {:<24}  WATERMARKS",
            "DAG", "LAST RUN", "TRIGGER", "STARTED"
        );
        for r in &self.dags {
            r.print_line();
        }
        if self.consumers.is_empty() {
            println!("\nno feed consumer has run against this warehouse");
            return;
        }
        println!(
            "\n{:<36}  {:<8}  {:<24}  {:>8}  {:>11}  {:>8}  {:>6}  {:>8}  {:>6}  {:>9}",
            "CONSUMER",
            "STATE",
            "UPDATED",
            "MESSAGES",
            "REDELIVERED",
            "EVENTS",
            "POISON",
            "DELETED",
            "ERRORS",
            "LAG"
        );
        for c in &self.consumers {
            print_consumer(c);
        }
    }
}

impl StatusRow {
    /// Prints the row's line of the DAG table.
    fn print_line(&self) {
        let (state, trigger, started) = match &self.last_run {
            Some(run) => (
                run.state.to_string(),
                run.trigger.to_string(),
                run.started_at.to_string(),
            ),
            None => ("never".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        let marks: Vec<String> = self
            .watermarks
            .iter()
            .map(|w| format!("{}={}", w.task, w.at.as_deref().unwrap_or("none")))
            .collect();
        println!(
            "{:<14}  {:<9}  {:<8}  {:<24}  {}",
            self.dag,
            state,
            trigger,
            started,
            marks.join(" ")
        );
    }
}

/// Prints a consumer's line of the consumer table, and its last error.
fn print_consumer(c: &ConsumerStatus) {
    let t = &c.totals;
    let lag = c
        .lag_ms
        .map_or("-".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
    println!(
        "{:<36}  {:<8}  {:<24}  {:>8}  {:>11}  {:>8}  {:>6}  {:>8}  {:>6}  {:>9}",
        c.consumer_id,
        c.state,
        c.updated_at,
        t.messages,
        t.redelivered,
        t.events,
        t.poison,
        t.deleted,
        t.errors,
        lag
    );
    if let Some(e) = &c.last_error {
        println!(
            "    last error: {}",
            redact(e.lines().next().unwrap_or_default())
        );
    }
}
