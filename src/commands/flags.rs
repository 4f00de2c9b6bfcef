//! `cutover flags`: the per-data-point cutover flags, listed, shown with
//! their evidence, moved under their guards, and their history.

use std::process::ExitCode;

use anyhow::{bail, Result};
use serde_json::json;
use tasks::flags::store::{self, Outcome};
use tasks::flags::{decide, Decision, Request, State};
use tasks::Warehouse;
use workflows::dag::{did_you_mean, Cutover};

use super::{load_dags, warehouse};
use crate::cli::{FlagsCommand, Global, ListFormat};

/// The data points that have a `[cutover]`, in DAG order.
pub fn cutovers(g: &Global) -> Result<Vec<(String, Cutover)>> {
    Ok(load_dags(&g.dags)?
        .into_iter()
        .filter_map(|d| d.cutover.map(|c| (d.data_point, c)))
        .collect())
}

/// The `[cutover]` of `point`, or which data points there are.
fn cutover_of<'a>(all: &'a [(String, Cutover)], point: &str) -> Result<&'a Cutover> {
    if let Some((_, c)) = all.iter().find(|(p, _)| p == point) {
        return Ok(c);
    }
    let names: Vec<&str> = all.iter().map(|(p, _)| p.as_str()).collect();
    let hint = did_you_mean(point, names.iter().copied())
        .map(|h| format!(" (did you mean `{h}`?)"))
        .unwrap_or_default();
    if names.is_empty() {
        bail!("no DAG file declares a `[cutover]` table, so there are no flags; add one to the DAG of `{point}`");
    }
    bail!(
        "`{point}` is not a data point with a `[cutover]` in its DAG file{hint}; the flags are {}",
        names.join(", ")
    )
}

/// Runs a `cutover flags` subcommand.
///
/// # Errors
/// An argument is wrong, or the DAGs or the warehouse cannot be read.
pub async fn command(g: &Global, cmd: FlagsCommand) -> Result<ExitCode> {
    let all = cutovers(g)?;
    let wh = warehouse(g).await?;
    match cmd {
        FlagsCommand::List { format } => list(&wh, &all, format).await,
        FlagsCommand::Show { data_point, format } => show(&wh, &all, &data_point, format).await,
        FlagsCommand::Set {
            data_point,
            state,
            rollout,
            reason,
            force,
            actor,
        } => {
            let cutover = cutover_of(&all, &data_point)?;
            let Some(to) = State::from_name(&state) else {
                bail!("`{state}` is not a state; expected legacy, shadow, warehouse or retired");
            };
            if rollout.is_some() && to != State::Warehouse {
                bail!("--rollout is the warehouse's share in `warehouse`; `{state}` has none");
            }
            let reason = reason.filter(|r| !r.trim().is_empty());
            if force && reason.is_none() {
                bail!("--force needs a --reason, recorded with the change");
            }
            let request = Request {
                to,
                rollout: rollout.unwrap_or(100),
                force,
                reason,
            };
            let actor = actor.unwrap_or_else(|| {
                format!(
                    "{}@{}",
                    std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
                    tasks::consume::status::hostname()
                )
            });
            let outcome = store::set(&wh, &data_point, cutover, &request, &actor).await?;
            Ok(print_outcome(&outcome))
        }
        FlagsCommand::History {
            data_point,
            limit,
            format,
        } => {
            if let Some(p) = &data_point {
                cutover_of(&all, p)?;
            }
            let changes = store::history(&wh, data_point.as_deref(), limit).await?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&changes)?),
                ListFormat::Table => {
                    println!(
                        "{:<24}  {:<12}  {:<14}  {:<14}  {:<20}  REASON",
                        "CHANGED", "DATA POINT", "FROM", "TO", "BY"
                    );
                    for c in changes {
                        let forced = if c.forced { " (forced)" } else { "" };
                        println!(
                            "{:<24}  {:<12}  {:<14}  {:<14}  {:<20}  {}{forced}",
                            c.changed_at,
                            c.data_point,
                            c.from,
                            c.to,
                            c.actor,
                            c.reason.unwrap_or_default()
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(wh: &Warehouse, all: &[(String, Cutover)], format: ListFormat) -> Result<ExitCode> {
    let points: Vec<&str> = all.iter().map(|(p, _)| p.as_str()).collect();
    let flags = store::flags(wh, &points).await?;
    match format {
        ListFormat::Json => {
            let out: Vec<_> = flags
                .iter()
                .zip(all)
                .map(|(f, (_, c))| json!({ "flag": f, "reports": c.reports }))
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ListFormat::Table => {
            println!(
                "{:<12}  {:<14}  {:<24}  REPORTS",
                "DATA POINT", "STATE", "SINCE"
            );
            for (f, (_, c)) in flags.iter().zip(all) {
                println!(
                    "{:<12}  {:<14}  {:<24}  {}",
                    f.data_point,
                    f.describe(),
                    f.since,
                    c.reports.join(", ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(
    wh: &Warehouse,
    all: &[(String, Cutover)],
    point: &str,
    format: ListFormat,
) -> Result<ExitCode> {
    let cutover = cutover_of(all, point)?;
    let flag = store::flags(wh, &[point]).await?.remove(0);
    let now = chrono::Utc::now().timestamp_millis();
    let seen = store::seen(wh, &flag, cutover, now).await?;
    let next = flag.next_step().map(|r| {
        let d = decide(&flag, &r, &cutover.evidence, &seen, now);
        (r, d)
    });
    let changes = store::history(wh, Some(point), 10).await?;
    if matches!(format, ListFormat::Json) {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "flag": flag,
                "reports": cutover.reports,
                "evidence_required": cutover.evidence,
                "seen": seen,
                "next": next.as_ref().map(|(r, d)| json!({
                    "state": r.to.name(), "rollout": r.rollout, "decision": d,
                })),
                "changes": changes,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{point}: {} since {}", flag.describe(), flag.since);
    println!("  reports: {}", cutover.reports.join(", "));
    let e = &cutover.evidence;
    println!(
        "  promotion needs: the latest {} reconciliations of each report passed, within {}; {} shadow comparisons in that time, at most a share of {} mismatched",
        e.reconciliations,
        workflows::duration::format(e.within),
        e.comparisons,
        e.mismatch_rate
    );
    println!(
        "  retiring needs: the warehouse at 100% for {}, with no legacy read",
        workflows::duration::format(e.retire_after)
    );
    println!(
        "  seen: {} shadow comparisons within {}, {} mismatched; {} reconciliations on record",
        seen.comparisons,
        workflows::duration::format(e.within),
        seen.mismatches,
        seen.reconciliations.len()
    );
    match &next {
        Some((r, Decision::Allowed { evidence })) => {
            println!("  next: {} is allowed:", describe(r));
            for line in evidence {
                println!("    - {line}");
            }
        }
        Some((r, Decision::Refused { missing })) => {
            println!("  next: {} needs:", describe(r));
            for line in missing {
                println!("    - {line}");
            }
        }
        _ => println!("  retired: the legacy computation of its reports is no longer called"),
    }
    if !changes.is_empty() {
        println!("  changes:");
        for c in changes {
            let forced = if c.forced { ", forced" } else { "" };
            println!(
                "    {}  {} -> {}  by {}{forced}{}",
                c.changed_at,
                c.from,
                c.to,
                c.actor,
                c.reason.map(|r| format!(": {r}")).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(r: &Request) -> String {
    match r.to {
        State::Warehouse => format!("warehouse {}%", r.rollout),
        other => other.name().to_owned(),
    }
}

/// Prints what a `set` did; exit status 1 when refused.
fn print_outcome(o: &Outcome) -> ExitCode {
    let point = &o.before.data_point;
    match &o.decision {
        Decision::Unchanged => {
            println!("{point} is already {}", o.before.describe());
            ExitCode::SUCCESS
        }
        Decision::Allowed { evidence } => {
            println!("{point}: {} -> {}", o.before.describe(), o.after.describe());
            for line in evidence {
                println!("  - {line}");
            }
            ExitCode::SUCCESS
        }
        Decision::Refused { missing } => {
            eprintln!(
                "refused: {point} stays {}; the change needs evidence that is missing:",
                o.before.describe()
            );
            for line in missing {
                eprintln!("  - {line}");
            }
            eprintln!("(--force with a --reason makes it anyway, recorded as forced)");
            ExitCode::FAILURE
        }
    }
}
