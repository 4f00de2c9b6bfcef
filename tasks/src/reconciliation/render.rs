//! A reconciliation for people (a table, or Markdown for a review) and for
//! programs (JSON).

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::record::Past;
use super::{Reconciliation, Status, Tolerance, RULES};

/// How a reconciliation is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned text.
    Table,
    /// Markdown, for a review or a ticket.
    Markdown,
    /// The whole result.
    Json,
}

fn cell(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => "–".into(),
        other => other.to_string(),
    }
}

fn cells(vs: &[Json]) -> String {
    vs.iter().map(cell).collect::<Vec<_>>().join(" / ")
}

fn rule_lines() -> Vec<String> {
    RULES
        .iter()
        .map(|r| {
            let how = match r.tolerance {
                Tolerance::Exact => "exact".to_owned(),
                Tolerance::Relative { within } => format!("within a relative {within:e}"),
            };
            let sum = if r.in_checksum {
                ""
            } else {
                ", not in the checksum"
            };
            format!("{}: {how}{sum}; {}", r.field, r.normalisation)
        })
        .collect()
}

fn range(r: &Reconciliation) -> String {
    match (&r.from, &r.to) {
        (None, None) => "every day".into(),
        (Some(f), None) => format!("from {f}"),
        (None, Some(t)) => format!("before {t}"),
        (Some(f), Some(t)) => format!("{f} up to {t} (exclusive)"),
    }
}

/// Renders a reconciliation.
pub fn render(r: &Reconciliation, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(r).unwrap_or_default() + "\n",
        Format::Table => table(r),
        Format::Markdown => markdown(r),
    }
}

fn verdict(s: Status) -> &'static str {
    match s {
        Status::Equal => "equal",
        Status::Differs => "DIFFERS",
    }
}

fn table(r: &Reconciliation) -> String {
    let mut out = String::new();
    let (days, differing) = r.totals();
    let _ = writeln!(
        out,
        "reconciliation {} ({}), {}: {} of {days} report days differ",
        r.id,
        r.origin,
        range(r),
        differing
    );
    let _ = writeln!(out, "rules:");
    for l in rule_lines() {
        let _ = writeln!(out, "  {l}");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<17} {:<8} {:>5} {:>7} {:>12} {:>15} {:>8}",
        "report", "status", "days", "differ", "legacy rows", "warehouse rows", "seconds"
    );
    for rep in &r.reports {
        let _ = writeln!(
            out,
            "{:<17} {:<8} {:>5} {:>7} {:>12} {:>15} {:>8.2}",
            rep.report.name(),
            verdict(rep.status),
            rep.days.len(),
            rep.differing().count(),
            rep.legacy_rows,
            rep.warehouse_rows,
            rep.seconds
        );
    }
    for rep in &r.reports {
        for day in rep.differing() {
            let _ = writeln!(out, "\n{} on {}: DIFFERS", rep.report.name(), day.day);
            let side = |s: &Option<super::Summary>| match s {
                None => "no rows".to_owned(),
                Some(s) => format!(
                    "{} rows, {}, checksum {}",
                    s.rows,
                    s.sums
                        .iter()
                        .map(|(k, v)| format!("{k} {}", cell(v)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    s.checksum
                ),
            };
            let _ = writeln!(out, "  legacy:    {}", side(&day.legacy));
            let _ = writeln!(out, "  warehouse: {}", side(&day.warehouse));
            let key_columns = rep.columns[..rep.groups].join(" / ");
            let measures = rep.columns[rep.groups..].join(" / ");
            let _ = writeln!(
                out,
                "  {} differing rows ({key_columns}: legacy {measures} | warehouse):",
                day.rows_differing
            );
            for row in &day.rows {
                let _ = writeln!(
                    out,
                    "    {}: {} | {}   [{}]",
                    cells(&row.key),
                    row.legacy.as_deref().map_or("no row".into(), cells),
                    row.warehouse.as_deref().map_or("no row".into(), cells),
                    row.fields.join(", ")
                );
            }
            if day.rows_differing > day.rows.len() {
                let _ = writeln!(out, "    ... {} more", day.rows_differing - day.rows.len());
            }
            if let Some(drill) = &day.events {
                let kinds: Vec<String> = drill
                    .kinds
                    .iter()
                    .map(|(k, n)| format!("{n} {}", k.name()))
                    .collect();
                let _ = writeln!(
                    out,
                    "  events behind them: {} ({}; read {} source events and {} fact rows in {} windows)",
                    drill.total,
                    if kinds.is_empty() { "none".into() } else { kinds.join(", ") },
                    drill.read.0,
                    drill.read.1,
                    drill.windows.len()
                );
                for f in &drill.findings {
                    let _ = writeln!(
                        out,
                        "    {:<18} {}  {}  {}",
                        f.kind.name(),
                        f.id,
                        f.ts,
                        f.detail
                    );
                }
                if drill.total > drill.findings.len() {
                    let _ = writeln!(out, "    ... {} more", drill.total - drill.findings.len());
                }
                if let Some(note) = &drill.note {
                    let _ = writeln!(out, "  note: {note}");
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{}",
        match r.status {
            Status::Equal => "every report agrees with the legacy analytics".to_owned(),
            Status::Differs => format!(
                "the warehouse DIFFERS from the legacy analytics; details: cutover reconcile --show {}",
                r.id
            ),
        }
    );
    out
}

/// Markdown cell text: pipes escaped.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn markdown(r: &Reconciliation) -> String {
    let mut out = String::new();
    let (days, differing) = r.totals();
    let _ = writeln!(out, "# Reconciliation {}\n", r.id);
    let _ = writeln!(
        out,
        "Started {} by {}, {}: **{}** ({differing} of {days} report days differ).\n",
        r.started_at,
        md(&r.origin),
        range(r),
        verdict(r.status)
    );
    let _ = writeln!(out, "## Rules\n");
    for l in rule_lines() {
        let _ = writeln!(out, "- {}", md(&l));
    }
    let _ = writeln!(out, "\n## Reports\n");
    let _ = writeln!(
        out,
        "| report | status | days | differ | legacy rows | warehouse rows |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    for rep in &r.reports {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            rep.report.name(),
            verdict(rep.status),
            rep.days.len(),
            rep.differing().count(),
            rep.legacy_rows,
            rep.warehouse_rows
        );
    }
    for rep in &r.reports {
        for day in rep.differing() {
            let _ = writeln!(out, "\n## {} on {}\n", rep.report.name(), day.day);
            let measures = &rep.columns[rep.groups..];
            let _ = writeln!(
                out,
                "| {} | side | {} |",
                rep.columns[..rep.groups].join(" | "),
                measures.join(" | ")
            );
            let _ = writeln!(out, "|{}", "---|".repeat(rep.columns.len() + 1));
            for row in &day.rows {
                for (side, values) in [("legacy", &row.legacy), ("warehouse", &row.warehouse)] {
                    let values = values.as_ref().map_or_else(
                        || vec!["no row".to_owned(); measures.len()],
                        |v| {
                            v.iter()
                                .zip(measures)
                                .map(|(v, m)| {
                                    if row.fields.contains(m) {
                                        format!("**{}**", md(&cell(v)))
                                    } else {
                                        md(&cell(v))
                                    }
                                })
                                .collect()
                        },
                    );
                    let key: Vec<String> = row.key.iter().map(|v| md(&cell(v))).collect();
                    let _ = writeln!(
                        out,
                        "| {} | {side} | {} |",
                        key.join(" | "),
                        values.join(" | ")
                    );
                }
            }
            if day.rows_differing > day.rows.len() {
                let _ = writeln!(
                    out,
                    "\n{} more differing rows.",
                    day.rows_differing - day.rows.len()
                );
            }
            if let Some(drill) = &day.events {
                let _ = writeln!(out, "\nEvents behind them ({} in all):\n", drill.total);
                if !drill.findings.is_empty() {
                    let _ = writeln!(
                        out,
                        "| finding | event | time | detail |\n|---|---|---|---|"
                    );
                    for f in &drill.findings {
                        let _ = writeln!(
                            out,
                            "| {} | `{}` | {} | {} |",
                            f.kind.name(),
                            md(&f.id),
                            f.ts,
                            md(&f.detail)
                        );
                    }
                }
                if let Some(note) = &drill.note {
                    let _ = writeln!(out, "\n_{}_", md(note));
                }
            }
        }
    }
    out
}

/// Renders the list of past reconciliations.
pub fn render_history(past: &[Past], json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(past).unwrap_or_default() + "\n";
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<36} {:<20} {:<8} {:>5} {:>7}  {:<23} {:<24} reports",
        "id", "started", "status", "days", "differ", "range", "origin"
    );
    for p in past {
        let range = format!(
            "{}..{}",
            p.from.as_deref().unwrap_or(""),
            p.to.as_deref().unwrap_or("")
        );
        let _ = writeln!(
            out,
            "{:<36} {:<20} {:<8} {:>5} {:>7}  {:<23} {:<24} {}",
            p.id,
            p.started_at.get(..19).unwrap_or(&p.started_at),
            p.status,
            p.days,
            p.days_differing,
            range,
            p.origin,
            p.reports.join(" ")
        );
    }
    let _ = writeln!(out, "({} reconciliations)", past.len());
    out
}
