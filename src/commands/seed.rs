//! `cutover seed`: deterministic synthetic events, to a file or MongoDB.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use tasks::seed::{self, SeedOptions, SeedStats};
use tasks::source::Source;

use super::write_atomically;
use crate::cli::SeedArgs;

/// Writes the events to the file or inserts them into the MongoDB
/// collection `--out` names, and prints what was written.
///
/// # Errors
/// The file cannot be written, or MongoDB cannot be reached or written.
pub async fn command(args: SeedArgs) -> Result<ExitCode> {
    let SeedArgs {
        events,
        seed,
        days,
        start,
        out,
        database,
        collection,
    } = args;
    let opts = SeedOptions {
        events,
        seed,
        days,
        start_ms: start,
    };
    let (stats, place) = if out.starts_with("mongodb://") || out.starts_with("mongodb+srv://") {
        let Source::Mongo(client) = Source::open(&out).await? else {
            unreachable!("a mongodb URL opens MongoDB")
        };
        let coll = client.database(&database).collection(&collection);
        let bar = indicatif::ProgressBar::new(events);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {human_pos}/{human_len} events inserted ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let stats = seed::insert_into(&opts, &coll, 10_000, &bar)
            .await
            .with_context(|| format!("inserting into {database}.{collection}"))?;
        bar.finish_and_clear();
        (stats, format!("{database}.{collection}"))
    } else {
        let path = PathBuf::from(&out);
        (write_events(&path, &opts)?, path.display().to_string())
    };
    println!(
        "wrote {} events to {} ({} duplicates, {} invalid, {} unknown types, {} late)",
        stats.written, place, stats.duplicates, stats.invalid, stats.unknown_types, stats.late
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the synthetic events `opts` describe to the events file `out`,
/// atomically.
///
/// # Errors
/// The file cannot be written.
pub fn write_events(out: &Path, opts: &SeedOptions) -> Result<SeedStats> {
    write_atomically(out, |file| {
        seed::generate(opts, file).context("writing events")
    })
}
