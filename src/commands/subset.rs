//! `cutover subset`: a development copy of the events, closed under the
//! event model's relations, anonymised when asked, with the five reports
//! checked on it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use tasks::source::Source;
use tasks::subset::{self, Anonymizer, By, Options, Out};
use workflows::redact::redact_url;

use super::reconcile::days;
use super::source;
use crate::cli::{Global, SubsetArgs};

/// The environment variable holding the anonymisation key.
const KEY_VAR: &str = "CUTOVER_SUBSET_KEY";

/// Makes the copy and prints what it holds; exit status 1 when a report
/// on the copy differs from the source restricted to the sample.
///
/// # Errors
/// An argument is wrong, the source cannot be read or the copy not written.
pub async fn command(g: &Global, args: SubsetArgs) -> Result<ExitCode> {
    let range = days(args.from.as_deref(), args.to.as_deref(), "copied")?;
    let (by, size) = match (args.presentations, args.users) {
        (_, Some(n)) => (By::Users, n),
        (Some(n), None) => (By::Presentations, n),
        (None, None) => (By::Presentations, 20),
    };
    if size == 0 {
        bail!("--{} must be at least 1", by.name());
    }
    let anonymize = if args.anonymize {
        let key = std::env::var(KEY_VAR).with_context(|| {
            format!("--anonymize needs the key in {KEY_VAR} (at least 16 bytes, e.g. `export {KEY_VAR}=$(openssl rand -hex 32)`)")
        })?;
        Some(Anonymizer::new(key.as_bytes(), args.shift_days).context(KEY_VAR)?)
    } else {
        None
    };
    let out = if args.out.starts_with("mongodb://") || args.out.starts_with("mongodb+srv://") {
        let Source::Mongo(client) = Source::open(&args.out).await? else {
            unreachable!("a mongodb URL opens MongoDB")
        };
        Out::Mongo {
            client,
            database: args.out_database.clone(),
            collection: args.out_collection.clone(),
        }
    } else {
        let path = PathBuf::from(&args.out);
        let same = Source::open(&g.source_url)
            .await
            .ok()
            .and_then(|s| match s {
                Source::File(src) => Some(src),
                _ => None,
            });
        if let Some(src) = same {
            let canon = |p: &std::path::Path| std::fs::canonicalize(p).ok();
            if canon(&src).is_some() && canon(&src) == canon(&path) {
                bail!(
                    "--out {} is the source itself: write the copy to another file",
                    path.display()
                );
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Out::File(path)
    };
    let source = source(g).await?;
    let opts = Options {
        by,
        size,
        seed: args.seed,
        range,
        anonymize,
        shift_days: args.shift_days,
    };
    let spinner = super::spinner();
    let step = |s: String| spinner.set_message(s);
    let result = subset::subset(
        &source,
        &args.database,
        &args.collection,
        &out,
        &opts,
        &step,
    )
    .await;
    spinner.finish_and_clear();
    let summary = result.with_context(|| {
        format!(
            "subset of {} into {}",
            redact_url(&g.source_url),
            match &out {
                Out::File(_) => out.describe(),
                Out::Mongo { .. } => format!("{} ({})", out.describe(), redact_url(&args.out)),
            }
        )
    })?;

    let uncovered = summary.choice.uncovered();
    println!(
        "sampled {} {} (seed {}) from {} documents, standing for {} of the {} strata the data holds{}",
        summary.choice.chosen.len(),
        by.name(),
        args.seed,
        summary.read,
        summary.choice.strata.len() - uncovered.len(),
        summary.choice.strata.len(),
        if uncovered.is_empty() {
            String::new()
        } else {
            format!(
                " (not {}: ask for more {})",
                uncovered.join(", "),
                by.name()
            )
        }
    );
    println!(
        "wrote {} documents to {}: {} presentations, {} sessions (both ends), {} users (registrations and plan changes); kept as they are: {} invalid documents, {} further copies of an event",
        summary.written,
        out.describe(),
        summary.presentations,
        summary.sessions,
        summary.users,
        summary.invalid,
        summary.copies
    );
    if summary.later > 0 {
        println!(
            "left out {} documents stored in the last minute before it started or since (by their ObjectId's time), so that every pass read the same documents",
            summary.later
        );
    }
    if summary.unreadable > 0 {
        println!(
            "skipped {} lines of the source that are not documents: {}{}",
            summary.unreadable,
            summary.unreadable_sample.join("; "),
            if summary.unreadable as usize > summary.unreadable_sample.len() {
                "; ..."
            } else {
                ""
            }
        );
    }
    if opts.anonymize.is_some() {
        println!(
            "anonymised with the key in {KEY_VAR}: user, session, presentation and event ids, titles, referrers and other text replaced; _ids minted again in order{}",
            if args.shift_days != 0 {
                format!("; times moved by {} days", args.shift_days)
            } else {
                String::new()
            }
        );
    } else if args.shift_days != 0 {
        println!("times moved by {} days", args.shift_days);
    }
    for (name, rows, difference) in &summary.reports {
        match difference {
            None => println!(
                "  {:<16} {rows} rows, equal to the source restricted to the sample",
                name.name()
            ),
            Some(d) => println!("  {:<16} DIFFERS: {d}", name.name()),
        }
    }
    if summary.reports_equal() {
        println!("the five reports survive the cut");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("a report on the copy differs from the source restricted to the sample");
        Ok(ExitCode::FAILURE)
    }
}
