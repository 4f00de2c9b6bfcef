//! The five legacy reports of the event model, computed two ways: from
//! the warehouse's star schema ([`warehouse`]) and as the application
//! computes them today, with MongoDB aggregations over the events
//! ([`legacy`]); and how a report is printed (table, JSON or CSV).
//!
//! A report is an array of objects with fixed field names, `day` as
//! `YYYY-MM-DD`, one object per group, groups with no events absent, sorted
//! by the group fields. The optional `from`/`to` bounds are instants, `from`
//! inclusive and `to` exclusive, applied to the event time (for
//! `sessions_daily`, the session's start).

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value as Json;

pub mod legacy;
pub mod warehouse;

pub use legacy::from_legacy;
pub use warehouse::from_warehouse;

mod days;
pub use days::Days;

/// A report of the event model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportName {
    /// Views and unique viewers per day and presentation.
    ViewsDaily,
    /// Views and dwell time per presentation and slide.
    SlideEngagement,
    /// Shares per day and channel.
    SharesDaily,
    /// Sessions started and completed, and their duration, per day and device.
    SessionsDaily,
    /// Views per day and the viewer's plan at the time of the view.
    ViewsByPlan,
}

impl ReportName {
    /// Every report, by name.
    pub const ALL: &'static [(&'static str, ReportName)] = &[
        ("views_daily", ReportName::ViewsDaily),
        ("slide_engagement", ReportName::SlideEngagement),
        ("shares_daily", ReportName::SharesDaily),
        ("sessions_daily", ReportName::SessionsDaily),
        ("views_by_plan", ReportName::ViewsByPlan),
    ];

    /// Every report's name, in the order of [`ReportName::ALL`].
    pub const NAMES: &'static [&'static str] = &[
        "views_daily",
        "slide_engagement",
        "shares_daily",
        "sessions_daily",
        "views_by_plan",
    ];

    /// The report named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, r)| *r == self)
            .map(|(n, _)| *n)
            .expect("listed")
    }

    /// Its field names, the group fields first.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Self::ViewsDaily => &["day", "presentation_id", "views", "unique_viewers"],
            Self::SlideEngagement => &[
                "presentation_id",
                "slide",
                "views",
                "total_dwell_ms",
                "avg_dwell_ms",
            ],
            Self::SharesDaily => &["day", "channel", "shares"],
            Self::SessionsDaily => &[
                "day",
                "device",
                "sessions_started",
                "sessions_completed",
                "total_duration_ms",
            ],
            Self::ViewsByPlan => &["day", "plan", "views"],
        }
    }

    /// The data point whose DAG feeds the report in the warehouse.
    pub fn data_point(self) -> &'static str {
        match self {
            Self::ViewsDaily | Self::ViewsByPlan => "views",
            Self::SlideEngagement => "engagement",
            Self::SharesDaily => "shares",
            Self::SessionsDaily => "sessions",
        }
    }
}

/// How finely a report is grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Grain {
    /// As the application shows it.
    #[default]
    Report,
    /// Split by UTC day of the event time: a report without a day
    /// (`slide_engagement`) gains one as its first field, so that every
    /// report can be compared day by day.
    Daily,
}

impl ReportName {
    /// Its field names at `grain`, the group fields first.
    pub fn columns_at(self, grain: Grain) -> &'static [&'static str] {
        match (self, grain) {
            (Self::SlideEngagement, Grain::Daily) => &[
                "day",
                "presentation_id",
                "slide",
                "views",
                "total_dwell_ms",
                "avg_dwell_ms",
            ],
            _ => self.columns(),
        }
    }

    /// How many of its first fields are the group key at `grain`.
    pub fn group_fields(self, grain: Grain) -> usize {
        match (self, grain) {
            (Self::SlideEngagement, Grain::Daily) => 3,
            _ => 2,
        }
    }
}

/// A report's rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The field names, in order.
    pub columns: Vec<&'static str>,
    /// How many of the first fields are the group key.
    #[serde(skip)]
    pub groups: usize,
    /// One row per group, values in column order.
    pub rows: Vec<Vec<Json>>,
}

impl Report {
    /// A report of `name` at `grain` from unsorted rows.
    pub fn new(name: ReportName, grain: Grain, mut rows: Vec<Vec<Json>>) -> Self {
        let groups = name.group_fields(grain);
        rows.sort_by(|a, b| compare_keys(&a[..groups], &b[..groups]));
        Self {
            columns: name.columns_at(grain).to_vec(),
            groups,
            rows,
        }
    }

    /// Its first `n` rows.
    pub fn head(&self, n: usize) -> Self {
        Self {
            rows: self.rows.iter().take(n).cloned().collect(),
            ..self.clone()
        }
    }
}

/// Orders two group keys as reports sort them.
pub fn compare_keys(a: &[Json], b: &[Json]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| compare_json(x, y))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

fn compare_json(a: &Json, b: &Json) -> Ordering {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Json::String(x), Json::String(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// The average of a total over a count, as a double.
pub fn average(total: i64, count: i64) -> Json {
    if count == 0 {
        Json::Null
    } else {
        Json::from(total as f64 / count as f64)
    }
}

/// Time bounds in epoch ms: `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    /// Inclusive lower bound.
    pub from_ms: Option<i64>,
    /// Exclusive upper bound.
    pub to_ms: Option<i64>,
}

impl Range {
    /// The bounds, open ends as far-away instants.
    pub fn bounds(self) -> (i64, i64) {
        (
            self.from_ms.unwrap_or(i64::MIN / 2),
            self.to_ms.unwrap_or(i64::MAX / 2),
        )
    }

    /// Whether an instant is inside.
    pub fn contains(self, ms: i64) -> bool {
        let (from, to) = self.bounds();
        ms >= from && ms < to
    }
}

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// An array of objects.
    Json,
    /// Comma-separated values with a header.
    Csv,
}

impl Report {
    /// The rows as JSON objects with the report's field names.
    pub fn to_json(&self) -> Json {
        Json::Array(
            self.rows
                .iter()
                .map(|r| {
                    Json::Object(
                        self.columns
                            .iter()
                            .map(|c| (*c).to_owned())
                            .zip(r.iter().cloned())
                            .collect(),
                    )
                })
                .collect(),
        )
    }

    /// Renders the report.
    pub fn render(&self, format: Format) -> String {
        let cell = |v: &Json| match v {
            Json::String(s) => s.clone(),
            Json::Null => String::new(),
            other => other.to_string(),
        };
        match format {
            Format::Json => {
                serde_json::to_string_pretty(&self.to_json()).unwrap_or_default() + "\n"
            }
            Format::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                let _ = w.write_record(&self.columns);
                for r in &self.rows {
                    let _ = w.write_record(r.iter().map(cell));
                }
                String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
            }
            Format::Table => {
                let cells: Vec<Vec<String>> = self
                    .rows
                    .iter()
                    .map(|r| r.iter().map(cell).collect())
                    .collect();
                let widths: Vec<usize> = self
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        cells
                            .iter()
                            .map(|r| r[i].chars().count())
                            .chain([c.len()])
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                let mut out = String::new();
                let line = |out: &mut String, vals: Vec<&str>| {
                    let parts: Vec<String> = vals
                        .iter()
                        .zip(&widths)
                        .map(|(v, w)| format!("{v:<w$}"))
                        .collect();
                    let _ = writeln!(out, "{}", parts.join("  ").trim_end());
                };
                line(&mut out, self.columns.clone());
                line(
                    &mut out,
                    widths
                        .iter()
                        .map(|w| "-".repeat(*w))
                        .collect::<Vec<_>>()
                        .iter()
                        .map(String::as_str)
                        .collect(),
                );
                for r in &cells {
                    line(&mut out, r.iter().map(String::as_str).collect());
                }
                let _ = writeln!(out, "({} rows)", self.rows.len());
                out
            }
        }
    }
}
