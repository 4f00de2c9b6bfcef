//! `cutover demo`: seeds an events file, runs every DAG into a fresh SQLite
//! warehouse and checks the reports against the legacy computation.

use std::process::ExitCode;

use anyhow::Result;
use tasks::reports::{self, legacy, Format, Range, Report, ReportName};
use tasks::source::Source;

use super::run::run_dags;
use super::seed::write_events;
use super::{load_dags, warehouse};
use crate::cli::{DemoArgs, Global};

/// Runs the demo in `--dir`; fails when a run failed or a report differs
/// from the legacy one.
///
/// # Errors
/// The events file or warehouse cannot be written, or the DAGs do not load.
pub async fn command(g: &Global, args: DemoArgs) -> Result<ExitCode> {
    let dir = &args.dir;
    let events_file = dir.join("events.jsonl");
    let db = dir.join("warehouse.db");
    for stale in [
        db.clone(),
        db.with_extension("db-wal"),
        db.with_extension("db-shm"),
    ] {
        let _ = std::fs::remove_file(stale);
    }
    let stats = write_events(&events_file, args.events, 7, 14)?;
    println!(
        "seeded {} events into {} ({} duplicates, {} invalid, {} unknown types, {} late)\n",
        stats.written,
        events_file.display(),
        stats.duplicates,
        stats.invalid,
        stats.unknown_types,
        stats.late
    );
    let g = Global {
        source_url: events_file.display().to_string(),
        warehouse_url: format!("sqlite:{}", db.display()),
        work_dir: dir.join("work"),
        ..g.clone()
    };
    let dags = load_dags(&g.dags)?;
    let mut code = run_dags(&g, &dags, false, workflows::Trigger::Demo).await?;
    let wh = warehouse(&g).await?;
    let src = Source::open(&g.source_url).await?;
    let events = legacy::Events {
        source: &src,
        database: "app",
        collection: "events",
    };
    println!();
    for (name, r) in ReportName::ALL {
        let ours = reports::from_warehouse(&wh, *r, Range::default()).await?;
        let theirs = reports::from_legacy(&events, *r, Range::default()).await?;
        match reports::first_difference(&ours, &theirs, 1e-9) {
            None => println!(
                "{name:<17} {:>6} rows, equal to the legacy report",
                ours.rows.len()
            ),
            Some(d) => {
                println!("{name:<17} DIFFERS from the legacy report: {d}");
                code = ExitCode::FAILURE;
            }
        }
    }
    let report = reports::from_warehouse(&wh, ReportName::ViewsDaily, Range::default()).await?;
    let shown = Report {
        columns: report.columns.clone(),
        rows: report.rows.iter().take(15).cloned().collect(),
    };
    println!(
        "\nviews_daily (first {} of {} rows):",
        shown.rows.len(),
        report.rows.len()
    );
    print!("{}", shown.render(Format::Table));
    let db = db.display();
    println!("\nThe warehouse is the SQLite file {db}. Explore it with:");
    println!("  CUTOVER_WAREHOUSE_URL=sqlite:{db} cutover report views_daily --format json");
    println!("  CUTOVER_WAREHOUSE_URL=sqlite:{db} cutover runs");
    println!("  sqlite3 {db} 'SELECT COUNT(*) FROM fact_views'");
    Ok(code)
}
