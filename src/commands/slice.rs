//! `cutover slice`: the diagonal slice, a deterministic sample across the
//! data's dimensions with every touched report row, legacy and warehouse
//! side by side, as a document a reviewer signs.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{bail, Result};
use tasks::reports::legacy::Events;
use tasks::slice::render::{render, Format};
use tasks::slice::{self, Options};
use workflows::redact::redact_url;

use super::reconcile::{days, exit_code};
use super::{source, warehouse, write_atomically};
use crate::cli::{Global, SliceArgs, SliceFormat};

/// The command line that makes the same slice, secrets hidden.
fn reproduce(g: &Global, args: &SliceArgs) -> String {
    let mut parts = vec![
        format!("CUTOVER_SOURCE_URL='{}'", redact_url(&g.source_url)),
        format!("CUTOVER_WAREHOUSE_URL='{}'", redact_url(&g.warehouse_url)),
        "cutover slice".to_owned(),
        format!("--size {}", args.size),
        format!("--seed {}", args.seed),
    ];
    parts.extend(args.from.as_ref().map(|d| format!("--from {d}")));
    parts.extend(args.to.as_ref().map(|d| format!("--to {d}")));
    parts.push(format!("--time-zone {}", args.time_zone));
    if args.database != "app" {
        parts.push(format!("--database {}", args.database));
    }
    if args.collection != "events" {
        parts.push(format!("--collection {}", args.collection));
    }
    parts.join(" ")
}

/// Makes the slice and prints or writes it; exit status 1 on a difference.
///
/// # Errors
/// An argument is wrong, a side cannot be read, or the file not written.
pub async fn command(g: &Global, args: SliceArgs) -> Result<ExitCode> {
    let time_zone: chrono_tz::Tz = args.time_zone.parse().map_err(|_| {
        anyhow::anyhow!(
            "--time-zone `{}` is not an IANA time zone (e.g. UTC, Europe/Berlin, America/New_York)",
            args.time_zone
        )
    })?;
    let range = days(args.from.as_deref(), args.to.as_deref(), "sampled")?;
    if args.size == 0 {
        bail!("--size must be at least 1");
    }
    let options = Options {
        size: args.size,
        seed: args.seed,
        range,
        time_zone,
        command: reproduce(g, &args),
    };
    let source = source(g).await?;
    let wh = warehouse(g).await?;
    let events = Events {
        source: &source,
        database: &args.database,
        collection: &args.collection,
    };
    let spinner = super::spinner();
    let step = |s: String| spinner.set_message(s);
    let result = slice::slice(&events, &wh, &options, &step).await;
    spinner.finish_and_clear();
    let result = result?;
    let format = match args.format {
        SliceFormat::Table => Format::Table,
        SliceFormat::Json => Format::Json,
        SliceFormat::Markdown => Format::Markdown,
        SliceFormat::Html => Format::Html,
    };
    let text = render(&result, format);
    let (rows, differing) = result.totals();
    match &args.out {
        Some(path) => {
            write_atomically(path, |mut f| {
                f.write_all(text.as_bytes())?;
                f.flush()?;
                Ok(())
            })?;
            println!(
                "{} samples, {rows} report rows, {differing} differing: written to {}",
                result.samples.len(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(exit_code(result.status))
}
