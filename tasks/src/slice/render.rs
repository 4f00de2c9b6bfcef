//! A slice as a document a reviewer reads and signs (aligned text,
//! Markdown or a standalone HTML page) or as JSON for programs. The three
//! document forms are rendered from one outline, so they say the same.

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::{Slice, SliceRow, Verdict};
use crate::html::escape as esc;
use crate::reconciliation::{Status, Tolerance};

/// How a slice is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned text for a terminal.
    Table,
    /// Markdown, for a review or a ticket.
    Markdown,
    /// A standalone HTML page.
    Html,
    /// The whole slice.
    Json,
}

/// A cell, highlighted when it shows a difference.
struct Cell {
    text: String,
    marked: bool,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            marked: false,
        }
    }
}

/// A table of the outline.
struct Grid {
    headers: Vec<String>,
    rows: Vec<(Vec<Cell>, bool)>,
}

/// A section: a heading, lines of prose, and perhaps a table.
struct Section {
    heading: String,
    lines: Vec<String>,
    grid: Option<Grid>,
}

/// The document, whatever its form.
struct Outline {
    title: String,
    lines: Vec<String>,
    sections: Vec<Section>,
}

fn value(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => "–".into(),
        other => other.to_string(),
    }
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Equal => "equal",
        Verdict::Differs => "DIFFERS",
        Verdict::LegacyOnly => "LEGACY ONLY",
        Verdict::WarehouseOnly => "WAREHOUSE ONLY",
        Verdict::Absent => "ABSENT FROM BOTH",
    }
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Equal => "equal",
        Status::Differs => "DIFFERS",
    }
}

fn numbers(ns: &[usize]) -> String {
    ns.iter()
        .map(|n| format!("#{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One measure of a row: its value when both sides agree, else both.
fn measure(row: &SliceRow, i: usize, column: &'static str) -> Cell {
    let side = |s: &Option<Vec<Json>>| s.as_ref().and_then(|v| v.get(i)).map(value);
    let (a, b) = (side(&row.legacy), side(&row.warehouse));
    if row.verdict == Verdict::Equal || (a == b && !row.differing.contains(&column)) {
        return Cell::plain(a.or(b).unwrap_or_else(|| "–".into()));
    }
    Cell {
        text: format!(
            "{} ≠ {}",
            a.unwrap_or_else(|| "none".into()),
            b.unwrap_or_else(|| "none".into())
        ),
        marked: row.differing.contains(&column),
    }
}

fn outline(s: &Slice) -> Outline {
    let (rows, differing) = s.totals();
    let title = match s.status {
        Status::Equal => "Diagonal slice: every sampled row agrees".to_owned(),
        Status::Differs => format!("Diagonal slice: {differing} of {rows} sampled rows DIFFER"),
    };
    let range = match (&s.from, &s.to) {
        (None, None) => "every day".to_owned(),
        (Some(f), None) => format!("from {f}"),
        (None, Some(t)) => format!("before {t}"),
        (Some(f), Some(t)) => format!("{f} up to {t} (exclusive)"),
    };
    let lines = vec![
        format!("Reproduce: `{}`", s.command),
        format!(
            "Seed {}, {} samples asked for, {} taken; the same command on the same data gives the same slice.",
            s.seed,
            s.size,
            s.samples.len()
        ),
        format!(
            "Made {}; days {range}; {} documents read ({} invalid, counted nowhere); daylight-saving strata in {}.",
            s.generated_at, s.documents, s.invalid, s.time_zone
        ),
        format!(
            "Legacy (the application's analytics over the events) and warehouse side by side: {rows} report rows touched by the samples, {differing} differing."
        ),
    ];
    let mut sections = Vec::new();
    sections.push(Section {
        heading: "Strata".into(),
        lines: vec![
            "Every stratum the data holds is covered by at least one sample; an empty one is listed as empty.".into(),
        ],
        grid: Some(Grid {
            headers: ["group", "stratum", "meaning", "candidates", "samples"]
                .map(str::to_owned)
                .to_vec(),
            rows: s
                .strata
                .iter()
                .map(|st| {
                    let empty = st.candidates == 0;
                    (
                        vec![
                            Cell::plain(st.spec.group),
                            Cell::plain(st.spec.name.clone()),
                            Cell::plain(st.spec.about.clone()),
                            Cell::plain(st.candidates.to_string()),
                            Cell::plain(if empty {
                                "empty".to_owned()
                            } else {
                                numbers(&st.samples)
                            }),
                        ],
                        false,
                    )
                })
                .collect(),
        }),
    });
    sections.push(Section {
        heading: "Samples".into(),
        lines: vec![
            "Each sample is an entity on a UTC day; every report row its events touch on that day is compared below.".into(),
        ],
        grid: Some(Grid {
            headers: ["#", "entity", "id", "day", "strata", "why", "rows"]
                .map(str::to_owned)
                .to_vec(),
            rows: s
                .samples
                .iter()
                .map(|x| {
                    let touched_differing = s.reports.iter().flat_map(|r| &r.rows).any(|r| {
                        r.samples.contains(&x.n) && !r.verdict.agrees()
                    });
                    (
                        vec![
                            Cell::plain(format!("#{}", x.n)),
                            Cell::plain(x.entity.kind.name()),
                            Cell::plain(x.entity.id.clone()),
                            Cell::plain(x.day.clone()),
                            Cell::plain(x.strata.join(", ")),
                            Cell::plain(x.why.clone()),
                            Cell::plain(x.rows.to_string()),
                        ],
                        touched_differing,
                    )
                })
                .collect(),
        }),
    });
    for r in &s.reports {
        let mut headers: Vec<String> = vec!["verdict".into()];
        headers.extend(r.columns.iter().map(|c| (*c).to_owned()));
        headers.push("samples".into());
        let rows = r
            .rows
            .iter()
            .map(|row| {
                let mut cells = vec![Cell {
                    text: verdict(row.verdict).into(),
                    marked: !row.verdict.agrees(),
                }];
                cells.extend(row.key.iter().map(|k| Cell::plain(value(k))));
                cells.extend(
                    r.columns[r.groups..]
                        .iter()
                        .enumerate()
                        .map(|(i, c)| measure(row, i, c)),
                );
                cells.push(Cell::plain(numbers(&row.samples)));
                (cells, !row.verdict.agrees())
            })
            .collect();
        sections.push(Section {
            heading: format!("{}: {}", r.report.name(), status(r.status)),
            lines: vec![format!(
                "{} rows; a measure that differs shows legacy ≠ warehouse.",
                r.rows.len()
            )],
            grid: Some(Grid { headers, rows }),
        });
    }
    if s.reports.is_empty() {
        sections.push(Section {
            heading: "Reports".into(),
            lines: vec!["The samples touch no report row.".into()],
            grid: None,
        });
    }
    sections.push(Section {
        heading: "Comparison rules".into(),
        lines: s
            .rules
            .iter()
            .map(|r| {
                let how = match r.tolerance {
                    Tolerance::Exact => "exact".to_owned(),
                    Tolerance::Relative { within } => format!("within a relative {within:e}"),
                };
                format!("{}: {how}; {}", r.field, r.normalisation)
            })
            .collect(),
        grid: None,
    });
    sections.push(Section {
        heading: "Sign-off".into(),
        lines: vec![
            "Reviewed by: ____________________".into(),
            "Date: ____________________".into(),
            "Decision: accept / reject, and why: ____________________".into(),
        ],
        grid: None,
    });
    Outline {
        title,
        lines,
        sections,
    }
}

/// Renders a slice.
pub fn render(s: &Slice, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(s).unwrap_or_default() + "\n",
        Format::Table => table(&outline(s)),
        Format::Markdown => markdown(&outline(s)),
        Format::Html => html(&outline(s)),
    }
}

fn table(o: &Outline) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", o.title);
    for l in &o.lines {
        let _ = writeln!(out, "{}", l.replace('`', ""));
    }
    for s in &o.sections {
        let _ = writeln!(out, "\n{}", s.heading);
        let _ = writeln!(out, "{}", "-".repeat(s.heading.chars().count()));
        for l in &s.lines {
            let _ = writeln!(out, "{l}");
        }
        let Some(g) = &s.grid else { continue };
        let widths: Vec<usize> = (0..g.headers.len())
            .map(|i| {
                g.rows
                    .iter()
                    .map(|(r, _)| r[i].text.chars().count())
                    .chain([g.headers[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |out: &mut String, cells: Vec<&str>, mark: bool| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| {
                    let pad = w.saturating_sub(c.chars().count());
                    format!("{c}{}", " ".repeat(pad))
                })
                .collect();
            let _ = writeln!(
                out,
                "{} {}",
                if mark { "!" } else { " " },
                parts.join("  ").trim_end()
            );
        };
        line(
            &mut out,
            g.headers.iter().map(String::as_str).collect(),
            false,
        );
        for (r, mark) in &g.rows {
            line(&mut out, r.iter().map(|c| c.text.as_str()).collect(), *mark);
        }
    }
    out
}

fn md_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('*', "\\*")
        .replace('<', "&lt;")
        .replace(['\n', '\r'], " ")
}

fn markdown(o: &Outline) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", md_escape(&o.title));
    for l in &o.lines {
        let _ = writeln!(out, "{l}  ");
    }
    for s in &o.sections {
        let _ = writeln!(out, "\n## {}\n", md_escape(&s.heading));
        for l in &s.lines {
            let _ = writeln!(out, "{l}  ");
        }
        let Some(g) = &s.grid else { continue };
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| {} |",
            g.headers
                .iter()
                .map(|h| md_escape(h))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(out, "|{}|", vec!["---"; g.headers.len()].join("|"));
        for (r, _) in &g.rows {
            let cells: Vec<String> = r
                .iter()
                .map(|c| {
                    let t = md_escape(&c.text);
                    if c.marked {
                        format!("**{t}**")
                    } else {
                        t
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
    }
    out
}

/// `code` spans of a line of prose, as HTML.
fn prose(line: &str) -> String {
    line.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{}</code>", esc(part))
            } else {
                esc(part)
            }
        })
        .collect()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#1a1a1a}\
table{border-collapse:collapse;margin:.5rem 0 1.5rem}\
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}\
th{background:#f2f2f2}tr.differs{background:#fde8e8}\
td.differs{background:#f8b4b4;font-weight:bold}\
code{background:#f2f2f2;padding:0 .2rem}";

fn html(o: &Outline) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&o.title),
        esc(&o.title)
    );
    for l in &o.lines {
        let _ = writeln!(out, "<p>{}</p>", prose(l));
    }
    for (n, s) in o.sections.iter().enumerate() {
        let _ = writeln!(out, "<section id=\"s{n}\">\n<h2>{}</h2>", esc(&s.heading));
        for l in &s.lines {
            let _ = writeln!(out, "<p>{}</p>", prose(l));
        }
        if let Some(g) = &s.grid {
            out.push_str("<table>\n<thead><tr>");
            for h in &g.headers {
                let _ = write!(out, "<th>{}</th>", esc(h));
            }
            out.push_str("</tr></thead>\n<tbody>\n");
            for (r, mark) in &g.rows {
                out.push_str(if *mark {
                    "<tr class=\"differs\">"
                } else {
                    "<tr>"
                });
                for c in r {
                    if c.marked {
                        let _ = write!(out, "<td class=\"differs\">{}</td>", esc(&c.text));
                    } else {
                        let _ = write!(out, "<td>{}</td>", esc(&c.text));
                    }
                }
                out.push_str("</tr>\n");
            }
            out.push_str("</tbody>\n</table>\n");
        }
        out.push_str("</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}
