//! `cutover report`: one of the five analytics reports, from the warehouse
//! or as the legacy analytics compute it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use tasks::reports::{self, legacy, Format, Grain, Range, ReportName};
use tasks::source::Source;

use super::{parse_instant, warehouse};
use crate::cli::{Global, ReportArgs, ReportFormat, ReportSource};

/// Computes the report over the range and prints it as a table, JSON or
/// CSV.
///
/// # Errors
/// The report is unknown, an instant does not parse, or the warehouse or
/// source cannot be read.
pub async fn command(g: &Global, args: ReportArgs) -> Result<ExitCode> {
    let name = &args.name;
    let report = ReportName::from_name(name).with_context(|| {
        let names: Vec<&str> = ReportName::ALL.iter().map(|(n, _)| *n).collect();
        format!(
            "unknown report `{name}`; the reports are {}",
            names.join(", ")
        )
    })?;
    let range = Range {
        from_ms: args.from.as_deref().map(parse_instant).transpose()?,
        to_ms: args.to.as_deref().map(parse_instant).transpose()?,
    };
    let rows = match args.source {
        ReportSource::Warehouse => {
            let wh = warehouse(g).await?;
            reports::from_warehouse(&wh, report, range, Grain::Report).await?
        }
        ReportSource::Legacy => {
            let src = Source::open(&g.source_url).await?;
            let events = legacy::Events {
                source: &src,
                database: &args.database,
                collection: &args.collection,
            };
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_message(format!(
                "computing {name} from the events as the legacy analytics do"
            ));
            spinner.enable_steady_tick(Duration::from_millis(200));
            let rows = reports::from_legacy(&events, report, range, Grain::Report).await;
            spinner.finish_and_clear();
            rows?
        }
    };
    let format = match args.format {
        ReportFormat::Table => Format::Table,
        ReportFormat::Json => Format::Json,
        ReportFormat::Csv => Format::Csv,
    };
    print!("{}", rows.render(format));
    Ok(ExitCode::SUCCESS)
}
