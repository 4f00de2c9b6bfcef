//! `verify.reports`: the nightly load proves its own reports. It reconciles
//! the named legacy reports with the warehouse, day by day, over the days
//! the run read (or every day), up to the extract's watermark; stores the
//! reconciliation like `cutover reconcile` does; and fails the run on a
//! difference, naming the days, rows and events behind it.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use workflows::{KindInfo, Role, SettingProblem, Task, TaskContext, TaskError, TaskReport};

use super::Scope;
use crate::error::from_sqlx;
use crate::reconciliation::drill::Kind;
use crate::reconciliation::render::{render, Format};
use crate::reconciliation::{self, record, Options, Status};
use crate::reports::legacy::Events;
use crate::reports::{Range, ReportName};
use crate::segment::read_from;
use crate::source::{Selection, Source};
use crate::warehouse::Warehouse;

/// The kind.
pub const KIND: KindInfo = KindInfo {
    name: "verify.reports",
    summary: "reconcile legacy reports with the warehouse day by day, drilled down to events",
    role: Role::Verify,
    fields: || serde_aux::serde_introspection::serde_introspect::<Config>(),
};

/// The settings of a `verify.reports` task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `extract.mongo` task whose source, watermark and run bound the
    /// days compared.
    pub source: String,
    /// The reports compared (views_daily, slide_engagement, shares_daily,
    /// sessions_daily, views_by_plan).
    pub reports: Vec<String>,
    /// `run`: the days this run's extract read (from the start of the day
    /// it began reading); `all`: every day up to the watermark.
    #[serde(default = "default_scope")]
    pub scope: Scope,
    /// Differing rows and events kept per day.
    #[serde(default = "default_sample")]
    pub sample: usize,
    /// Events read at most per window of a drill-down.
    #[serde(default = "default_drill_limit")]
    pub drill_limit: usize,
    /// Whether a day that differs only by events the loader quarantined
    /// (and the legacy analytics count) passes, with a warning: the
    /// quarantine already holds them with their reason.
    #[serde(default = "default_allow_quarantined")]
    pub allow_quarantined: bool,
}

fn default_allow_quarantined() -> bool {
    true
}

fn default_scope() -> Scope {
    Scope::Run
}
fn default_sample() -> usize {
    20
}
fn default_drill_limit() -> usize {
    20_000
}

impl Config {
    /// Checks without I/O; `source_is_extract` says whether `source` names
    /// an extract task of the DAG.
    pub fn check(&self, source_is_extract: bool) -> Vec<SettingProblem> {
        let mut out = Vec::new();
        if !source_is_extract {
            out.push(SettingProblem::field(
                "source",
                format!("`{}` is not an extract task of this DAG", self.source),
            ));
        }
        if self.reports.is_empty() {
            out.push(SettingProblem::field("reports", "names no report"));
        }
        for (i, name) in self.reports.iter().enumerate() {
            if ReportName::from_name(name).is_none() {
                let names: Vec<&str> = ReportName::ALL.iter().map(|(n, _)| *n).collect();
                out.push(SettingProblem::field(
                    format!("reports[{i}]"),
                    format!(
                        "unknown report `{name}`; the reports are {}",
                        names.join(", ")
                    ),
                ));
            }
        }
        if self.drill_limit == 0 {
            out.push(SettingProblem::field("drill_limit", "must be at least 1"));
        }
        out
    }

    fn report_names(&self) -> Vec<ReportName> {
        self.reports
            .iter()
            .filter_map(|n| ReportName::from_name(n))
            .collect()
    }
}

/// The task.
struct Reports {
    config: Config,
    extract: Selection,
    source: Source,
    warehouse: Warehouse,
}

#[async_trait]
impl Task for Reports {
    async fn run(&self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        let Some(watermark) = self
            .warehouse
            .watermark(&ctx.dag, &self.config.source)
            .await
            .map_err(|e| from_sqlx("reading the watermark", e))?
        else {
            return Ok(TaskReport {
                summary: "nothing loaded yet; nothing to compare".into(),
                ..TaskReport::default()
            });
        };
        let from_ms = self
            .config
            .scope
            .first_day(read_from(&ctx.output_dir(&self.config.source)).as_ref());
        let options = Options {
            reports: self.config.report_names(),
            range: Range {
                from_ms,
                to_ms: Some(watermark + 1),
            },
            sample: self.config.sample,
            drill_limit: self.config.drill_limit,
            origin: format!("dag {} task {}", ctx.dag, ctx.task),
        };
        let events = Events {
            source: &self.source,
            database: &self.extract.query.database,
            collection: &self.extract.query.collection,
        };
        let result = reconciliation::reconcile(&events, &self.warehouse, &options, &|_| {})
            .await
            .map_err(|e| TaskError::Fatal(Box::new(e)))?;
        record::record(&self.warehouse, &result)
            .await
            .map_err(|e| from_sqlx("storing the reconciliation", e))?;
        let (days, differing) = result.totals();
        // Days explained, every event behind them found in the quarantine.
        let quarantined_only = |d: &reconciliation::DayResult| {
            d.events.as_ref().is_some_and(|e| {
                e.note.is_none() && e.total > 0 && e.kinds.keys().all(|k| *k == Kind::Quarantined)
            })
        };
        let explained: Vec<(&str, &str, usize)> = result
            .reports
            .iter()
            .flat_map(|r| r.differing().map(move |d| (r, d)))
            .filter(|(_, d)| quarantined_only(d))
            .map(|(r, d)| {
                (
                    r.report.name(),
                    d.day.as_str(),
                    d.events.as_ref().map_or(0, |e| e.total),
                )
            })
            .collect();
        let status = if self.config.allow_quarantined && explained.len() == differing {
            Status::Equal
        } else {
            result.status
        };
        let quarantine_note = if differing > 0 && status == Status::Equal {
            let events: usize = explained.iter().map(|(_, _, n)| n).sum();
            let days: Vec<String> = explained
                .iter()
                .map(|(r, d, _)| format!("{r} {d}"))
                .collect();
            format!(
                "; {} differ only by {events} events the loader quarantined and the legacy analytics count (`cutover quarantine list --dag {}`)",
                days.join(", "),
                ctx.dag
            )
        } else {
            String::new()
        };
        match status {
            Status::Equal => Ok(TaskReport {
                rows_read: result
                    .reports
                    .iter()
                    .map(|r| (r.legacy_rows + r.warehouse_rows) as u64)
                    .sum(),
                summary: format!(
                    "{} equal to the legacy reports on {} of {days} report days{quarantine_note} (reconciliation {})",
                    self.config.reports.join(", "),
                    days - differing,
                    result.id
                ),
                ..TaskReport::default()
            }),
            Status::Differs => Err(TaskError::fatal(format!(
                "the warehouse differs from the legacy reports on {differing} of {days} report days\n{}",
                render(&result, Format::Table)
            ))),
        }
    }
}

/// Builds the task.
pub fn build(
    config: Config,
    extract: Selection,
    source: Source,
    warehouse: Warehouse,
) -> Arc<dyn Task> {
    Arc::new(Reports {
        config,
        extract,
        source,
        warehouse,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(toml)
    }

    #[test]
    fn unknown_reports_and_sources_are_named() {
        let c =
            config("source = \"extract\"\nreports = [\"views_daily\", \"views_weekly\"]").unwrap();
        assert_eq!(c.scope, Scope::Run);
        let problems = c.check(false);
        let text: Vec<String> = problems.iter().map(|p| format!("{p:?}")).collect();
        assert_eq!(problems.len(), 2, "{text:?}");
        assert!(text.iter().any(|p| p.contains("source")), "{text:?}");
        assert!(
            text.iter()
                .any(|p| p.contains("reports[1]") && p.contains("views_weekly")),
            "{text:?}"
        );
        assert!(config("source = \"e\"\nreports = []\ncolour = 1").is_err());
    }
}
