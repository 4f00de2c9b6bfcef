//! `cutover demo`: seeds an events file, runs every DAG into a fresh SQLite
//! warehouse and reconciles the five reports with the legacy computation,
//! day by day.

use std::process::ExitCode;

use anyhow::Result;
use tasks::reconciliation::render::{render, Format};
use tasks::reconciliation::{self, record, Options, Status};
use tasks::reports::{self, legacy, Grain, Range, ReportName};
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
    let stats = write_events(
        &events_file,
        &tasks::seed::SeedOptions {
            events: args.events,
            seed: 7,
            ..tasks::seed::SeedOptions::default()
        },
    )?;
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
    let mut code = run_dags(
        &g,
        &dags,
        super::run::How {
            keep_work: false,
            skip_unchanged: true,
            parallel: 1,
        },
        workflows::Trigger::Demo,
    )
    .await?;
    let wh = warehouse(&g).await?;
    let src = Source::open(&g.source_url).await?;
    let events = legacy::Events {
        source: &src,
        database: "app",
        collection: "events",
    };
    println!();
    let options = Options {
        origin: "demo".into(),
        ..Options::default()
    };
    let result = reconciliation::reconcile(&events, &wh, &options, &|_| {}).await?;
    record::record(&wh, &result).await?;
    for r in &result.reports {
        let days = r.days.len();
        match r.status {
            Status::Equal => println!(
                "{:<17} {:>6} rows over {days} days, equal to the legacy report day by day",
                r.report.name(),
                r.warehouse_rows
            ),
            Status::Differs => {
                println!(
                    "{:<17} DIFFERS from the legacy report on {} of {days} days",
                    r.report.name(),
                    r.differing().count()
                );
                code = ExitCode::FAILURE;
            }
        }
    }
    if result.status == Status::Differs {
        print!("\n{}", render(&result, Format::Table));
    }
    let report =
        reports::from_warehouse(&wh, ReportName::ViewsDaily, Range::default(), Grain::Report)
            .await?;
    let shown = report.head(15);
    println!(
        "\nviews_daily (first {} of {} rows):",
        shown.rows.len(),
        report.rows.len()
    );
    print!("{}", shown.render(reports::Format::Table));
    let db = db.display();
    println!("\nThe warehouse is the SQLite file {db}. Explore it with:");
    println!("  CUTOVER_WAREHOUSE_URL=sqlite:{db} cutover report views_daily --format json");
    println!("  CUTOVER_WAREHOUSE_URL=sqlite:{db} cutover runs");
    println!(
        "  CUTOVER_WAREHOUSE_URL=sqlite:{db} CUTOVER_SOURCE_URL={} cutover reconcile",
        events_file.display()
    );
    println!("  CUTOVER_WAREHOUSE_URL=sqlite:{db} cutover reconcile --history");
    println!(
        "  CUTOVER_WAREHOUSE_URL=sqlite:{db} CUTOVER_SOURCE_URL={} cutover slice --format html --out slice.html",
        events_file.display()
    );
    println!("  sqlite3 {db} 'SELECT COUNT(*) FROM fact_views'");
    Ok(code)
}
