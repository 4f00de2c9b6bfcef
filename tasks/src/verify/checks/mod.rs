//! `verify.checks`: data-quality checks declared in DAG files, in the
//! spirit of dbt tests and Dagster asset checks: `not_null`, `unique`,
//! `relationships` (to a type 2 dimension too, valid at the row's time),
//! `accepted_values`, `freshness` (against the source's committed
//! watermark) and `row_count` (against the distinct valid source events of
//! the run's range). Each failed check reports how many rows fail and a few
//! of them; a check of severity `error` fails the task, one of severity
//! `warn` is logged and shown in the task's summary.
//!
//! `config.rs` holds the settings and their checks without I/O; this module
//! runs them with one SQL statement per question, written for SQLite,
//! MySQL/MariaDB and PostgreSQL alike.

mod config;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use workflows::time::format_ms;
use workflows::{Backend, SqlIdent, Task, TaskContext, TaskError, TaskReport};

pub use config::{
    Check, CheckSpec, CheckType, Config, Rule, Scope, Severity, ValidAt, Within, KIND, SAMPLE,
};

use crate::error::from_sqlx;
use crate::expected::{exact_days, is_quarantined, quarantined, split, Seen, TableRange};
use crate::segment::read_from;
use crate::source::{Selection, Source};
use crate::warehouse::Warehouse;

/// What one check found wrong: nothing when `failing` is zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finding {
    /// Failing rows (or values, or 1 for a stale table).
    pub failing: u64,
    /// What fails, after the count: `rows with a NULL`.
    pub what: String,
    /// A few failing rows or values.
    pub sample: Vec<String>,
    /// Said of a passing check too, e.g. what was compared.
    pub note: String,
}

impl Finding {
    fn passed(note: impl Into<String>) -> Self {
        Self {
            note: note.into(),
            ..Self::default()
        }
    }
}

/// The task.
pub struct Checks {
    /// The checks, checked when the DAG was loaded.
    pub checks: Vec<Check>,
    /// The extract task whose watermark ends the run's data, with what it
    /// reads (for `freshness` and `row_count`).
    pub source_task: Option<(String, Selection)>,
    /// The source.
    pub source: Source,
    /// The warehouse.
    pub warehouse: Warehouse,
}

/// A statement's bound values: text, in order.
type Binds<'a> = &'a [&'a str];

impl Checks {
    fn q(&self, ident: &SqlIdent) -> String {
        self.warehouse.q(ident)
    }

    /// `expr` as text, to show or compare any column type.
    fn text(&self, expr: &str) -> String {
        match self.warehouse.backend {
            Backend::MySql => format!("CAST({expr} AS CHAR)"),
            Backend::Sqlite | Backend::Postgres => format!("CAST({expr} AS TEXT)"),
        }
    }

    fn query<'a>(
        &self,
        sql: &'a str,
        binds: Binds<'a>,
    ) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments<'a>> {
        binds
            .iter()
            .fold(sqlx::query(sql), |q, b| q.bind(b.to_string()))
    }

    /// The one number a `SELECT COUNT(*) ...` written with `?` returns.
    async fn count(
        &self,
        template: &str,
        binds: Binds<'_>,
        table: &SqlIdent,
    ) -> Result<u64, TaskError> {
        let sql = self.warehouse.backend.sql(template);
        let n: i64 = self
            .query(&sql, binds)
            .fetch_one(&self.warehouse.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| from_sqlx(format!("checking {table}"), e))?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    /// Rows of text columns `v0`, `v1`, ... and, when `counted`, an integer
    /// `n`, from a statement written with `?`.
    async fn rows(
        &self,
        template: &str,
        binds: Binds<'_>,
        columns: usize,
        counted: bool,
        table: &SqlIdent,
    ) -> Result<Vec<(Vec<String>, Option<i64>)>, TaskError> {
        let sql = self.warehouse.backend.sql(template);
        let what = || format!("checking {table}");
        let rows = self
            .query(&sql, binds)
            .fetch_all(&self.warehouse.pool)
            .await
            .map_err(|e| from_sqlx(what(), e))?;
        rows.iter()
            .map(|r| {
                let values = (0..columns)
                    .map(|i| {
                        workflows::sql::text(r, &format!("v{i}"))
                            .map(|v| v.unwrap_or_else(|| "NULL".into()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let n = if counted {
                    Some(r.try_get::<i64, _>("n")?)
                } else {
                    None
                };
                Ok((values, n))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| from_sqlx(what(), e))
    }

    /// Failing rows named by `key`, or the distinct failing values of
    /// `column` with how many rows hold each, under condition `cond` over
    /// `from` (a table and its alias).
    async fn sample(
        &self,
        from: &str,
        cond: &str,
        binds: Binds<'_>,
        key: Option<&str>,
        column: Option<(&SqlIdent, &str)>,
        table: &SqlIdent,
    ) -> Result<Vec<String>, TaskError> {
        let limit = SAMPLE;
        Ok(match (key, column) {
            (Some(key), Some((name, col))) => self
                .rows(
                    &format!(
                        "SELECT {k} AS v0, {c} AS v1 FROM {from} WHERE {cond} ORDER BY {key} LIMIT {limit}",
                        k = self.text(key),
                        c = self.text(col),
                    ),
                    binds,
                    2,
                    false,
                    table,
                )
                .await?
                .into_iter()
                .map(|(v, _)| format!("{} ({name} = {})", v[0], v[1]))
                .collect(),
            (Some(key), None) => self
                .rows(
                    &format!(
                        "SELECT {k} AS v0 FROM {from} WHERE {cond} ORDER BY {key} LIMIT {limit}",
                        k = self.text(key),
                    ),
                    binds,
                    1,
                    false,
                    table,
                )
                .await?
                .into_iter()
                .map(|(v, _)| v[0].clone())
                .collect(),
            (None, Some((_, col))) => self
                .rows(
                    &format!(
                        "SELECT {c} AS v0, COUNT(*) AS n FROM {from} WHERE {cond} GROUP BY {col} ORDER BY {col} LIMIT {limit}",
                        c = self.text(col),
                    ),
                    binds,
                    1,
                    true,
                    table,
                )
                .await?
                .into_iter()
                .map(|(v, n)| rows_of(&v[0], n.unwrap_or_default()))
                .collect(),
            (None, None) => Vec::new(),
        })
    }

    async fn not_null(
        &self,
        table: &SqlIdent,
        columns: &[SqlIdent],
        key: Option<&SqlIdent>,
    ) -> Result<Finding, TaskError> {
        let t = self.q(table);
        let any = columns
            .iter()
            .map(|c| format!("{} IS NULL", self.q(c)))
            .collect::<Vec<_>>()
            .join(" OR ");
        let failing = self
            .count(&format!("SELECT COUNT(*) FROM {t} WHERE {any}"), &[], table)
            .await?;
        if failing == 0 {
            return Ok(Finding::passed(""));
        }
        let mut by_column = Vec::new();
        for c in columns {
            let n = self
                .count(
                    &format!("SELECT COUNT(*) FROM {t} WHERE {} IS NULL", self.q(c)),
                    &[],
                    table,
                )
                .await?;
            if n > 0 {
                by_column.push(format!("{c}: {n}"));
            }
        }
        let mut sample = Vec::new();
        if let Some(k) = key {
            sample = self
                .sample(&t, &format!("({any})"), &[], Some(&self.q(k)), None, table)
                .await?
                .into_iter()
                .map(|s| format!("{k} = {s}"))
                .collect();
        }
        Ok(Finding {
            failing,
            what: format!("rows with a NULL ({})", by_column.join(", ")),
            sample,
            note: String::new(),
        })
    }

    async fn unique(&self, table: &SqlIdent, columns: &[SqlIdent]) -> Result<Finding, TaskError> {
        let t = self.q(table);
        let cols: Vec<String> = columns.iter().map(|c| self.q(c)).collect();
        let list = cols.join(", ");
        let not_null = cols
            .iter()
            .map(|c| format!("{c} IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let groups = format!("FROM {t} WHERE {not_null} GROUP BY {list} HAVING COUNT(*) > 1");
        let failing = self
            .count(
                &format!("SELECT COUNT(*) FROM (SELECT {list} {groups}) d"),
                &[],
                table,
            )
            .await?;
        if failing == 0 {
            return Ok(Finding::passed(""));
        }
        let shown = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} AS v{i}", self.text(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let sample = self
            .rows(
                &format!("SELECT {shown}, COUNT(*) AS n {groups} ORDER BY {list} LIMIT {SAMPLE}"),
                &[],
                cols.len(),
                true,
                table,
            )
            .await?
            .into_iter()
            .map(|(v, n)| {
                let value = if v.len() == 1 {
                    v[0].clone()
                } else {
                    format!("({})", v.join(", "))
                };
                rows_of(&value, n.unwrap_or_default())
            })
            .collect();
        Ok(Finding {
            failing,
            what: "values held by more than one row".into(),
            sample,
            note: String::new(),
        })
    }

    async fn relationships(
        &self,
        table: &SqlIdent,
        column: &SqlIdent,
        to: &SqlIdent,
        field: &SqlIdent,
        valid_at: Option<&ValidAt>,
        key: Option<&SqlIdent>,
    ) -> Result<Finding, TaskError> {
        let from = format!("{} f", self.q(table));
        let c = format!("f.{}", self.q(column));
        let mut found = format!(
            "SELECT 1 FROM {} d WHERE d.{} = {c}",
            self.q(to),
            self.q(field)
        );
        if let Some(v) = valid_at {
            let at = format!("f.{}", self.q(&v.at));
            found.push_str(&format!(
                " AND d.{vf} <= {at} AND (d.{vt} IS NULL OR d.{vt} > {at})",
                vf = self.q(&v.from),
                vt = self.q(&v.to),
            ));
        }
        let cond = format!("{c} IS NOT NULL AND NOT EXISTS ({found})");
        let failing = self
            .count(
                &format!("SELECT COUNT(*) FROM {from} WHERE {cond}"),
                &[],
                table,
            )
            .await?;
        if failing == 0 {
            return Ok(Finding::passed(""));
        }
        let key_sql = key.map(|k| format!("f.{}", self.q(k)));
        let sample = self
            .sample(
                &from,
                &cond,
                &[],
                key_sql.as_deref(),
                Some((column, c.as_str())),
                table,
            )
            .await?;
        Ok(Finding {
            failing,
            what: format!(
                "rows whose {column} is not in {to}.{field}{}",
                if valid_at.is_some() {
                    " at their time"
                } else {
                    ""
                }
            ),
            sample,
            note: String::new(),
        })
    }

    async fn accepted_values(
        &self,
        table: &SqlIdent,
        column: &SqlIdent,
        values: &[String],
        key: Option<&SqlIdent>,
    ) -> Result<Finding, TaskError> {
        let t = self.q(table);
        let c = self.q(column);
        // Compared as text; MySQL compares a number with text by value, and
        // a cast there would take the connection's collation.
        let compared = match self.warehouse.backend {
            Backend::MySql => c.clone(),
            Backend::Sqlite | Backend::Postgres => self.text(&c),
        };
        let markers = vec!["?"; values.len()].join(", ");
        let cond = format!("{c} IS NOT NULL AND {compared} NOT IN ({markers})");
        let binds: Vec<&str> = values.iter().map(String::as_str).collect();
        let failing = self
            .count(
                &format!("SELECT COUNT(*) FROM {t} WHERE {cond}"),
                &binds,
                table,
            )
            .await?;
        if failing == 0 {
            return Ok(Finding::passed(""));
        }
        let key_sql = key.map(|k| self.q(k));
        let sample = self
            .sample(
                &t,
                &cond,
                &binds,
                key_sql.as_deref(),
                Some((column, c.as_str())),
                table,
            )
            .await?;
        Ok(Finding {
            failing,
            what: format!("rows whose {column} is not one of {}", values.join(", ")),
            sample,
            note: String::new(),
        })
    }

    async fn freshness(
        &self,
        ctx: &TaskContext,
        table: &SqlIdent,
        column: &SqlIdent,
        within: Duration,
    ) -> Result<Finding, TaskError> {
        let Some(watermark) = self.watermark(ctx).await? else {
            return Ok(Finding::passed("no watermark yet"));
        };
        let sql = format!("SELECT MAX({}) AS v FROM {}", self.q(column), self.q(table));
        let newest: Option<i64> = sqlx::query(&sql)
            .fetch_one(&self.warehouse.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| from_sqlx(format!("checking {table}"), e))?;
        let mark = format_ms(watermark);
        let Some(newest) = newest else {
            return Ok(Finding {
                failing: 1,
                what: format!("empty table, with the watermark at {mark}"),
                ..Finding::default()
            });
        };
        let behind = watermark.saturating_sub(newest);
        let limit = i64::try_from(within.as_millis()).unwrap_or(i64::MAX);
        let lag = workflows::duration::format(Duration::from_secs(
            u64::try_from(behind.max(0) / 1000).unwrap_or_default(),
        ));
        if behind <= limit {
            return Ok(Finding::passed(format!(
                "newest {column} {} is {lag} behind the watermark {mark}",
                format_ms(newest)
            )));
        }
        Ok(Finding {
            failing: 1,
            what: format!(
                "stale table: the newest {column} {} is {lag} behind the watermark {mark}, more than {}",
                format_ms(newest),
                workflows::duration::format(within)
            ),
            ..Finding::default()
        })
    }

    async fn watermark(&self, ctx: &TaskContext) -> Result<Option<i64>, TaskError> {
        let (task, _) = self
            .source_task
            .as_ref()
            .ok_or_else(|| TaskError::fatal("no source task"))?;
        self.warehouse
            .watermark(&ctx.dag, task)
            .await
            .map_err(|e| from_sqlx("reading the watermark", e))
    }

    async fn row_count(
        &self,
        ctx: &TaskContext,
        table: &SqlIdent,
        key: &SqlIdent,
        ts: &SqlIdent,
        scope: Scope,
        read: &mut u64,
    ) -> Result<Finding, TaskError> {
        let (task, selection) = self
            .source_task
            .as_ref()
            .ok_or_else(|| TaskError::fatal("no source task"))?;
        let Some(watermark) = self.watermark(ctx).await? else {
            return Ok(Finding::passed("nothing loaded yet"));
        };
        let until = watermark + 1;
        // The run's range: from where its extract began reading.
        let extract_dir = ctx.output_dir(task);
        let began = read_from(&extract_dir);
        let from = scope.first_day(began.as_ref());
        let (key_sql, table_sql, ts_sql) = (self.text(&self.q(key)), self.q(table), self.q(ts));
        let range = TableRange {
            table: &table_sql,
            key_sql: &key_sql,
            ts: &ts_sql,
            from_ms: from,
            until_ms: until,
        };
        // Days the extract read whole are compared with its digests; the
        // rest, and a day that differs, event by event.
        let (split, _) = split(
            began.and_then(|_| Seen::read(&extract_dir)),
            &self.warehouse,
            range,
        )
        .await?;
        let arrived = began.map(|r| r.started_ms - 1_000);
        let found = exact_days(
            &self.source,
            selection,
            &self.warehouse,
            range,
            &split,
            arrived,
        )
        .await?;
        let mut held: HashMap<String, u64> = HashMap::new();
        for (k, _) in found.table {
            *held.entry(k).or_default() += 1;
        }
        *read += found.read;
        let expected: HashSet<&String> = found.source.values().flatten().collect();
        let rows_held: u64 = held.values().sum::<u64>() + split.agreed_events;
        let set_aside = quarantined(&self.warehouse, &ctx.dag).await?;
        let mut explained = 0u64;
        let mut missing: Vec<&String> = expected
            .iter()
            .copied()
            .filter(|k| !held.contains_key(*k))
            .filter(|k| {
                let q = is_quarantined(&set_aside, k);
                explained += u64::from(q);
                !q
            })
            .collect();
        missing.sort();
        let mut extra: Vec<&String> = held.keys().filter(|k| !expected.contains(k)).collect();
        extra.sort();
        let mut doubled: Vec<&String> = held
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| k)
            .collect();
        doubled.sort();
        let range = format!(
            "{}up to {}",
            from.map_or_else(String::new, |f| format!("from {} ", format_ms(f))),
            format_ms(watermark)
        );
        let counts = format!(
            "{rows_held} rows, {} distinct valid source events {range}{}",
            expected.len() as u64 + split.agreed_events,
            if explained > 0 {
                format!(" ({explained} of them quarantined by the DAG)")
            } else {
                String::new()
            }
        );
        let failing = (missing.len() + extra.len() + doubled.len()) as u64;
        if failing == 0 {
            return Ok(Finding::passed(counts));
        }
        let mut parts = Vec::new();
        let mut sample = Vec::new();
        for (list, what) in [
            (&missing, "missing"),
            (&extra, "not valid source events"),
            (&doubled, "held twice or more"),
        ] {
            if !list.is_empty() {
                parts.push(format!("{} {what}", list.len()));
                sample.extend(list.iter().map(|k| format!("{k} ({what})")));
            }
        }
        sample.truncate(SAMPLE);
        Ok(Finding {
            failing,
            what: format!("events that differ ({}): {counts}", parts.join(", ")),
            sample,
            note: String::new(),
        })
    }

    async fn run_one(
        &self,
        ctx: &TaskContext,
        check: &Check,
        read: &mut u64,
    ) -> Result<Finding, TaskError> {
        let t = &check.table;
        match &check.rule {
            Rule::NotNull { columns, key } => self.not_null(t, columns, key.as_ref()).await,
            Rule::Unique { columns } => self.unique(t, columns).await,
            Rule::Relationships {
                column,
                to,
                field,
                valid_at,
                key,
            } => {
                self.relationships(t, column, to, field, valid_at.as_ref(), key.as_ref())
                    .await
            }
            Rule::AcceptedValues {
                column,
                values,
                key,
            } => self.accepted_values(t, column, values, key.as_ref()).await,
            Rule::Freshness { column, within } => self.freshness(ctx, t, column, *within).await,
            Rule::RowCount { key, ts, scope } => {
                self.row_count(ctx, t, key, ts, *scope, read).await
            }
        }
    }
}

/// `value (n rows)`.
fn rows_of(value: &str, n: i64) -> String {
    format!("{value} ({n} {})", if n == 1 { "row" } else { "rows" })
}

/// One failed check as messages show it: the check, its table, the
/// failing count and a sample.
pub fn failure_line(i: usize, check: &Check, f: &Finding) -> String {
    let mut line = format!("checks[{i}] {}: {} {}", check.describe(), f.failing, f.what);
    if !f.sample.is_empty() {
        line.push_str(&format!("; e.g. {}", f.sample.join(", ")));
    }
    line
}

#[async_trait]
impl Task for Checks {
    async fn run(&self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut read = 0;
        for (i, check) in self.checks.iter().enumerate() {
            let found = self.run_one(ctx, check, &mut read).await?;
            let label = format!("checks[{i}] {}", check.describe());
            if found.failing == 0 {
                tracing::info!(dag = %ctx.dag, run_id = %ctx.run_id, task = %ctx.task, check = %label, note = %found.note, "check passed");
                continue;
            }
            let line = failure_line(i, check, &found);
            tracing::warn!(dag = %ctx.dag, run_id = %ctx.run_id, task = %ctx.task, check = %label, severity = ?check.severity, failing = found.failing, sample = ?found.sample, "check failed");
            match check.severity {
                Severity::Error => errors.push(line),
                Severity::Warn => warnings.push(line),
            }
        }
        let total = self.checks.len();
        let warned = if warnings.is_empty() {
            String::new()
        } else {
            format!(
                "; {} warned:\n    (warn) {}",
                warnings.len(),
                warnings.join("\n    (warn) ")
            )
        };
        if errors.is_empty() {
            Ok(TaskReport {
                rows_read: read,
                summary: format!(
                    "{} of {total} checks passed{warned}",
                    total - warnings.len()
                ),
                ..TaskReport::default()
            })
        } else {
            Err(TaskError::fatal(format!(
                "{} of {total} checks failed:\n    {}{}",
                errors.len(),
                errors.join("\n    "),
                if warnings.is_empty() {
                    String::new()
                } else {
                    format!("\n    (warn) {}", warnings.join("\n    (warn) "))
                }
            )))
        }
    }
}

/// Builds the task; `source_task` is the config's `source` with what that
/// extract reads.
pub fn build(
    config: &Config,
    source_task: Option<(String, Selection)>,
    source: Source,
    warehouse: Warehouse,
) -> Arc<dyn Task> {
    Arc::new(Checks {
        checks: config.checks(),
        source_task,
        source,
        warehouse,
    })
}
