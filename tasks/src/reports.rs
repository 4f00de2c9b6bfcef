//! The legacy reports of the event model, read from the warehouse, and how
//! any report is printed (table, JSON or CSV).
//!
//! A report is an array of objects with fixed field names, `day` as
//! `YYYY-MM-DD`, one object per group, groups with no events absent. The
//! optional `from`/`to` bounds are instants, `from` inclusive and `to`
//! exclusive, applied to the event time.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value as Json;
use sqlx::Row;

use crate::warehouse::Warehouse;

/// A report the warehouse can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportName {
    /// Views and unique viewers per day and presentation.
    ViewsDaily,
}

impl ReportName {
    /// Every report, by name.
    pub const ALL: &'static [(&'static str, ReportName)] =
        &[("views_daily", ReportName::ViewsDaily)];

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
}

/// A report's rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The field names, in order.
    pub columns: Vec<&'static str>,
    /// One row per group, values in column order.
    pub rows: Vec<Vec<Json>>,
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
    fn bounds(self) -> (i64, i64) {
        (
            self.from_ms.unwrap_or(i64::MIN / 2),
            self.to_ms.unwrap_or(i64::MAX / 2),
        )
    }
}

/// Formats epoch ms as an RFC 3339 instant in UTC.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// Reads a report from the warehouse.
///
/// # Errors
/// The query failed.
pub async fn from_warehouse(
    wh: &Warehouse,
    name: ReportName,
    range: Range,
) -> Result<Report, sqlx::Error> {
    let b = wh.backend;
    let (from, to) = range.bounds();
    match name {
        ReportName::ViewsDaily => {
            let sql = format!(
                "SELECT d.date AS day, f.presentation_id, COUNT(*) AS views, COUNT(DISTINCT f.user_id) AS unique_viewers \
                 FROM fact_views f JOIN dim_date d ON d.date_key = f.date_key \
                 WHERE f.ts_ms >= {} AND f.ts_ms < {} \
                 GROUP BY d.date, f.presentation_id ORDER BY d.date, f.presentation_id",
                b.param(1),
                b.param(2)
            );
            let rows = sqlx::query(&sql)
                .bind(from)
                .bind(to)
                .fetch_all(&wh.pool)
                .await?;
            let rows = rows
                .iter()
                .map(|r| {
                    Ok(vec![
                        Json::from(r.try_get::<String, _>(0)?),
                        Json::from(r.try_get::<String, _>(1)?),
                        Json::from(r.try_get::<i64, _>(2)?),
                        Json::from(r.try_get::<i64, _>(3)?),
                    ])
                })
                .collect::<Result<_, sqlx::Error>>()?;
            Ok(Report {
                columns: vec!["day", "presentation_id", "views", "unique_viewers"],
                rows,
            })
        }
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
