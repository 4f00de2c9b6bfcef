//! `cutover reconcile`: the legacy analytics against the warehouse, per
//! report and day, drilled down to events; stored, and listed again.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use tasks::reconciliation::render::{render, render_history, Format};
use tasks::reconciliation::{self, record, Options, Status};
use tasks::reports::legacy::Events;
use tasks::reports::{Range, ReportName};

use super::warehouse;
use crate::cli::{Global, ReconcileArgs, ReconcileFormat};

/// The reports `names` stand for: report names, or data points (all their
/// reports); every report when none.
///
/// # Errors
/// A name is neither.
pub fn reports_named(names: &[String]) -> Result<Vec<ReportName>> {
    let all: Vec<ReportName> = ReportName::ALL.iter().map(|(_, r)| *r).collect();
    if names.is_empty() {
        return Ok(all);
    }
    let mut out = Vec::new();
    for name in names {
        let found: Vec<ReportName> = match ReportName::from_name(name) {
            Some(r) => vec![r],
            None => all
                .iter()
                .copied()
                .filter(|r| r.data_point() == name)
                .collect(),
        };
        if found.is_empty() {
            let mut points: Vec<&str> = all.iter().map(|r| r.data_point()).collect();
            points.dedup();
            bail!(
                "`{name}` is neither a report ({}) nor a data point ({})",
                ReportName::ALL
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
                points.join(", ")
            );
        }
        for r in found {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// The midnight of a `--from`/`--to` day argument, in epoch ms.
///
/// # Errors
/// The value is not a day.
pub fn day(flag: &str, value: Option<&str>) -> Result<Option<i64>> {
    value
        .map(|v| {
            reconciliation::drill::day_bounds(v)
                .map(|(from, _)| from)
                .with_context(|| format!("{flag} `{v}` is not a day (YYYY-MM-DD)"))
        })
        .transpose()
}

/// The range of whole days `--from` (the first) to `--to` (the first
/// not `done`).
///
/// # Errors
/// A value is not a day, or `--to` is not after `--from`.
pub fn days(from: Option<&str>, to: Option<&str>, done: &str) -> Result<Range> {
    let range = Range {
        from_ms: day("--from", from)?,
        to_ms: day("--to", to)?,
    };
    if let (Some(f), Some(t)) = (range.from_ms, range.to_ms) {
        if f >= t {
            bail!("--to must be a later day than --from (--to is the first day not {done})");
        }
    }
    Ok(range)
}

/// Exit status 1 when the sides differ.
pub fn exit_code(status: Status) -> ExitCode {
    match status {
        Status::Equal => ExitCode::SUCCESS,
        Status::Differs => ExitCode::FAILURE,
    }
}

/// Reconciles, records and prints; exit status 1 on a difference.
///
/// # Errors
/// An argument is wrong, or a side cannot be read.
pub async fn command(g: &Global, args: ReconcileArgs) -> Result<ExitCode> {
    let wh = warehouse(g).await?;
    let json = matches!(args.format, ReconcileFormat::Json);
    if args.history {
        let reports = reports_named(&args.names)?;
        let only = (!args.names.is_empty() && reports.len() == 1).then(|| reports[0].name());
        let past = record::history(&wh, only, args.limit)
            .await
            .context("reading the stored reconciliations")?;
        print!("{}", render_history(&past, json));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(id) = &args.show {
        let Some(result) = record::load(&wh, id)
            .await
            .context("reading the stored reconciliation")?
        else {
            bail!("no reconciliation `{id}` is stored; `cutover reconcile --history` lists them");
        };
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(ExitCode::SUCCESS);
    }
    let range = days(args.from.as_deref(), args.to.as_deref(), "compared")?;
    let options = Options {
        reports: reports_named(&args.names)?,
        range,
        sample: args.sample,
        drill_limit: args.drill_limit,
        origin: "cli".into(),
    };
    let source = super::source(g).await?;
    let events = Events {
        source: &source,
        database: &args.database,
        collection: &args.collection,
    };
    let spinner = super::spinner();
    let step = |s: String| spinner.set_message(s);
    let result = reconciliation::reconcile(&events, &wh, &options, &step).await;
    spinner.finish_and_clear();
    let result = result?;
    record::record(&wh, &result)
        .await
        .context("storing the reconciliation in cutover_reconciliations")?;
    let format = match args.format {
        ReconcileFormat::Table => Format::Table,
        ReconcileFormat::Json => Format::Json,
        ReconcileFormat::Markdown => Format::Markdown,
    };
    print!("{}", render(&result, format));
    Ok(exit_code(result.status))
}
