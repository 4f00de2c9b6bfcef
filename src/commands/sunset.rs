//! `cutover sunset`: where every data point's cutover stands, and what a
//! release manager can do next.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use tasks::flags::overview::{overview, Overview, Verdict};

use super::warehouse;
use crate::cli::{Global, SunsetFormat};

/// Prints the sunset report.
///
/// # Errors
/// The DAGs or the warehouse cannot be read.
pub async fn command(g: &Global, format: SunsetFormat) -> Result<ExitCode> {
    let all = super::flags::cutovers(g)?;
    let wh = warehouse(g).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut out = Vec::new();
    for (point, cutover) in &all {
        out.push(overview(&wh, point, cutover, now).await?);
    }
    match format {
        SunsetFormat::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        SunsetFormat::Table => print!("{}", table(&out)),
        SunsetFormat::Markdown => print!("{}", markdown(&out)),
    }
    Ok(ExitCode::SUCCESS)
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::NotStarted => "not started",
        Verdict::ReadyToPromote => "ready to promote",
        Verdict::PromotionBlocked => "promotion blocked",
        Verdict::ReadyToRetire => "ready to retire",
        Verdict::RetirementBlocked => "retirement blocked",
        Verdict::Retired => "retired",
    }
}

fn rate(o: &Overview) -> String {
    if o.comparisons == 0 {
        "-".into()
    } else {
        format!("{:.4}%", o.mismatches as f64 * 100.0 / o.comparisons as f64)
    }
}

/// Per report: how many of its latest reconciliations passed.
fn reconciled(o: &Overview) -> String {
    o.reports
        .iter()
        .map(|r| {
            let mine: Vec<_> = o
                .reconciliations
                .iter()
                .filter(|x| &x.report == r)
                .collect();
            let passed = mine.iter().take_while(|x| x.equal).count();
            match mine.first() {
                None => format!("{r}: none"),
                Some(newest) => format!(
                    "{r}: {passed} of the latest {} passed (newest {})",
                    mine.len(),
                    &newest.started_at[..newest.started_at.len().min(16)]
                ),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn table(all: &[Overview]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<12}  {:<14}  {:<20}  {:>19}  {:>11}  {:>9}  VERDICT",
        "DATA POINT", "STATE", "SINCE", "LEGACY READS 1/7/30D", "COMPARISONS", "MISMATCH"
    );
    for o in all {
        let _ = writeln!(
            s,
            "{:<12}  {:<14}  {:<20}  {:>19}  {:>11}  {:>9}  {}",
            o.flag.data_point,
            o.flag.describe(),
            &o.flag.since[..o.flag.since.len().min(19)],
            format!(
                "{}/{}/{}",
                o.legacy_reads.day, o.legacy_reads.week, o.legacy_reads.month
            ),
            o.comparisons,
            rate(o),
            verdict(o.verdict)
        );
    }
    for o in all {
        let _ = writeln!(s, "\n{}: {}", o.flag.data_point, verdict(o.verdict));
        let _ = writeln!(s, "  reconciliations: {}", reconciled(o));
        for a in &o.advice {
            let _ = writeln!(s, "  - {a}");
        }
    }
    s
}

fn markdown(all: &[Overview]) -> String {
    let mut s = String::from("# Sunset report\n\n");
    s.push_str("| data point | state | since | legacy reads 1 / 7 / 30 days | shadow comparisons | mismatch rate | verdict |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    for o in all {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} / {} / {} | {} | {} | {} |",
            o.flag.data_point,
            o.flag.describe(),
            o.flag.since,
            o.legacy_reads.day,
            o.legacy_reads.week,
            o.legacy_reads.month,
            o.comparisons,
            rate(o),
            verdict(o.verdict)
        );
    }
    for o in all {
        let _ = writeln!(s, "\n## {}: {}\n", o.flag.data_point, verdict(o.verdict));
        let _ = writeln!(s, "Reports: {}.\n", o.reports.join(", "));
        let _ = writeln!(s, "Reconciliations: {}.\n", reconciled(o));
        for a in &o.advice {
            let _ = writeln!(s, "- {}", a.replace('|', "\\|"));
        }
    }
    s
}
