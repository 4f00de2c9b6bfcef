//! `transform.polars`: runs the DAG's Polars SQL queries over each segment
//! of its input, producing one output per query (a fact or a dimension).
//!
//! The input segment is registered as a table named like the input task
//! (`-` read as `_`), with timestamps as `Datetime[ms, UTC]`. Queries run
//! segment by segment, so they map rows (select, filter, compute, `DISTINCT`);
//! totals across segments belong in the warehouse, where the merge
//! deduplicates.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use polars::prelude::*;
use polars::sql::SQLContext;
use serde::{Deserialize, Serialize};
use workflows::{
    KindInfo, Role, SettingProblem, SqlIdent, Task, TaskContext, TaskError, TaskReport,
};

use crate::error::{from_io, from_sqlx};
use crate::quarantine::Rejected;
use crate::schema::{ColumnType, Value};
use crate::segment::{self, output_dir, Meta, Planned, Unplannable};
use crate::warehouse::Warehouse;

/// The kind.
pub const KIND: KindInfo = KindInfo {
    name: "transform.polars",
    summary: "run Polars SQL over each extracted segment, one query per output table",
    role: Role::Transform,
    fields: || serde_aux::serde_introspection::serde_introspect::<Config>(),
};

/// The settings of a `transform.polars` task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The task whose segments are the input; one of `depends_on`.
    pub input: String,
    /// The outputs by name, each a Polars SQL query over the input.
    pub outputs: BTreeMap<SqlIdent, Output>,
}

/// One output of a transform.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// A Polars SQL `SELECT` over the input table.
    pub sql: String,
}

impl Config {
    /// Checks without I/O.
    pub fn check(&self, depends_on: &[String]) -> Vec<SettingProblem> {
        let mut out = Vec::new();
        if !depends_on.contains(&self.input) {
            out.push(SettingProblem::field(
                "input",
                format!("`{}` is not one of this task's depends_on", self.input),
            ));
        }
        if self.outputs.is_empty() {
            out.push(SettingProblem::field("outputs", "declares no output"));
        }
        for (name, o) in &self.outputs {
            if o.sql.trim().is_empty() {
                out.push(SettingProblem::field(
                    format!("outputs.{name}.sql"),
                    "is empty",
                ));
            }
        }
        out
    }

    /// The table name the queries use for the input.
    pub fn table_name(&self) -> String {
        self.input.replace('-', "_")
    }

    /// Plans every query over an input of `columns`, without data: the
    /// columns and types of each output, or, per output, why its query
    /// cannot run (it does not parse, names a column the input lacks, or
    /// makes a column the warehouse cannot take).
    pub fn plan(&self, columns: &[(String, ColumnType)]) -> Planned {
        let mut out = BTreeMap::new();
        let empty = match to_frame(columns, &[]) {
            Ok(df) => df,
            Err(e) => {
                for name in self.outputs.keys() {
                    out.insert(
                        name.clone(),
                        Err(Unplannable(format!("the input cannot be framed: {e}"))),
                    );
                }
                return out;
            }
        };
        for (name, o) in &self.outputs {
            let mut ctx = SQLContext::new();
            ctx.register(&self.table_name(), empty.clone().lazy());
            // On a thread of its own: Polars plans with tokio's
            // `block_in_place` when it finds a runtime, which a
            // single-threaded one refuses.
            let planned = std::thread::scope(|scope| {
                scope
                    .spawn(|| ctx.execute(&o.sql).and_then(|mut lf| lf.collect_schema()))
                    .join()
            });
            let result = match planned {
                Err(_) => Err(Unplannable("planning the query panicked".to_owned())),
                Ok(Err(e)) => Err(Unplannable(first_line(&e.to_string()))),
                Ok(Ok(schema)) => schema
                    .iter()
                    .map(|(col, dtype)| {
                        SqlIdent::new(col).map_err(|e| Unplannable(format!("column {e}")))?;
                        loadable(dtype)
                            .map(|ty| (col.to_string(), ty))
                            .ok_or_else(|| {
                                Unplannable(format!(
                                    "column {col} has type {dtype}, which cannot be loaded; cast it in the query"
                                ))
                            })
                    })
                    .collect(),
            };
            out.insert(name.clone(), result);
        }
        out
    }
}

/// The first line of a message (Polars adds context lines).
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_owned()
}

/// The segment type a Polars column of `dtype` is loaded as, if any.
fn loadable(dtype: &DataType) -> Option<ColumnType> {
    Some(match dtype {
        DataType::String | DataType::Null | DataType::Date => ColumnType::String,
        DataType::Boolean => ColumnType::Bool,
        DataType::Float32 | DataType::Float64 => ColumnType::Float,
        DataType::Datetime(_, _) => ColumnType::Timestamp,
        dt if dt.is_integer() => ColumnType::Int,
        _ => return None,
    })
}

/// Builds a frame from segment rows.
///
/// # Errors
/// Polars refused a column.
pub fn to_frame(columns: &[(String, ColumnType)], rows: &[Vec<Value>]) -> PolarsResult<DataFrame> {
    let mut cols = Vec::with_capacity(columns.len());
    for (i, (name, ty)) in columns.iter().enumerate() {
        let name = PlSmallStr::from(name.as_str());
        let col = match ty {
            ColumnType::String | ColumnType::ObjectId => {
                let v: Vec<Option<&str>> = rows
                    .iter()
                    .map(|r| match &r[i] {
                        Value::Str(s) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect();
                Column::new(name, v)
            }
            ColumnType::Int | ColumnType::Timestamp => {
                let v: Vec<Option<i64>> = rows
                    .iter()
                    .map(|r| match &r[i] {
                        Value::Int(x) => Some(*x),
                        _ => None,
                    })
                    .collect();
                let c = Column::new(name, v);
                if *ty == ColumnType::Timestamp {
                    c.cast(&DataType::Datetime(
                        TimeUnit::Milliseconds,
                        Some(TimeZone::UTC),
                    ))?
                } else {
                    c
                }
            }
            ColumnType::Float => {
                let v: Vec<Option<f64>> = rows
                    .iter()
                    .map(|r| match &r[i] {
                        Value::Float(x) => Some(*x),
                        Value::Int(x) => Some(*x as f64),
                        _ => None,
                    })
                    .collect();
                Column::new(name, v)
            }
            ColumnType::Bool => {
                let v: Vec<Option<bool>> = rows
                    .iter()
                    .map(|r| match &r[i] {
                        Value::Bool(x) => Some(*x),
                        _ => None,
                    })
                    .collect();
                Column::new(name, v)
            }
        };
        cols.push(col);
    }
    DataFrame::new(rows.len(), cols)
}

/// Turns a frame into segment columns and rows. Timestamps become epoch ms,
/// dates `YYYY-MM-DD` strings.
///
/// # Errors
/// A column has a type the warehouse cannot take, named in the message.
fn from_frame(df: &DataFrame) -> Result<Frame, String> {
    let height = df.height();
    let mut columns = Vec::new();
    let mut rows: Vec<Vec<Value>> = (0..height)
        .map(|_| Vec::with_capacity(df.width()))
        .collect();
    let err = |name: &str, e: PolarsError| format!("column {name}: {e}");
    for col in df.columns() {
        let name = col.name().to_string();
        let dtype = col.dtype().clone();
        let ty = match dtype {
            DataType::String | DataType::Null => {
                let c = col.cast(&DataType::String).map_err(|e| err(&name, e))?;
                for (row, v) in rows
                    .iter_mut()
                    .zip(c.str().map_err(|e| err(&name, e))?.iter())
                {
                    row.push(v.map_or(Value::Null, |s| Value::Str(s.to_owned())));
                }
                ColumnType::String
            }
            DataType::Boolean => {
                for (row, v) in rows
                    .iter_mut()
                    .zip(col.bool().map_err(|e| err(&name, e))?.iter())
                {
                    row.push(v.map_or(Value::Null, Value::Bool));
                }
                ColumnType::Bool
            }
            DataType::Float32 | DataType::Float64 => {
                let c = col.cast(&DataType::Float64).map_err(|e| err(&name, e))?;
                for (row, v) in rows
                    .iter_mut()
                    .zip(c.f64().map_err(|e| err(&name, e))?.iter())
                {
                    row.push(v.map_or(Value::Null, Value::Float));
                }
                ColumnType::Float
            }
            DataType::Datetime(_, tz) => {
                let c = col
                    .cast(&DataType::Datetime(TimeUnit::Milliseconds, tz))
                    .and_then(|c| c.cast(&DataType::Int64))
                    .map_err(|e| err(&name, e))?;
                for (row, v) in rows
                    .iter_mut()
                    .zip(c.i64().map_err(|e| err(&name, e))?.iter())
                {
                    row.push(v.map_or(Value::Null, Value::Int));
                }
                ColumnType::Timestamp
            }
            DataType::Date => {
                let c = col.cast(&DataType::String).map_err(|e| err(&name, e))?;
                for (row, v) in rows
                    .iter_mut()
                    .zip(c.str().map_err(|e| err(&name, e))?.iter())
                {
                    row.push(v.map_or(Value::Null, |s| Value::Str(s.to_owned())));
                }
                ColumnType::String
            }
            dt if dt.is_integer() => {
                let c = col.cast(&DataType::Int64).map_err(|e| err(&name, e))?;
                for (row, v) in rows
                    .iter_mut()
                    .zip(c.i64().map_err(|e| err(&name, e))?.iter())
                {
                    row.push(v.map_or(Value::Null, Value::Int));
                }
                ColumnType::Int
            }
            other => {
                return Err(format!(
                    "column {name} has type {other}, which cannot be loaded; cast it in the query"
                ))
            }
        };
        columns.push((name, ty));
    }
    Ok((columns, rows))
}

/// Runs the queries over one input segment.
///
/// # Errors
/// A query failed or produced a column that cannot be loaded; the message
/// names the output.
pub fn transform_segment(
    cfg: &Config,
    meta: &Meta,
    rows: &[Vec<Value>],
) -> Result<Outputs, QueryFailed> {
    transform(cfg, meta, rows).map_err(QueryFailed)
}

/// Why the queries failed over a segment, naming the output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryFailed(pub String);

fn transform(cfg: &Config, meta: &Meta, rows: &[Vec<Value>]) -> Result<Outputs, String> {
    let df = to_frame(&meta.columns, rows).map_err(|e| format!("building the input frame: {e}"))?;
    let mut ctx = SQLContext::new();
    ctx.register(&cfg.table_name(), df.lazy());
    let mut out = Vec::new();
    for (name, o) in &cfg.outputs {
        let frame = ctx
            .execute(&o.sql)
            .and_then(LazyFrame::collect)
            .map_err(|e| format!("output {name}: {e}"))?;
        let (columns, rows) = from_frame(&frame).map_err(|e| format!("output {name}: {e}"))?;
        for (c, _) in &columns {
            SqlIdent::new(c).map_err(|e| format!("output {name}: column {e}"))?;
        }
        out.push((name.clone(), columns, rows));
    }
    Ok(out)
}

/// The task.
pub struct TransformPolars {
    /// Its settings.
    pub config: Config,
    /// Where rows that make a query fail are quarantined.
    pub warehouse: Warehouse,
}

/// Columns with their types, and rows.
type Frame = (Vec<(String, ColumnType)>, Vec<Vec<Value>>);

/// The outputs of one segment, by output: its columns and rows.
pub type Outputs = Vec<(SqlIdent, Vec<(String, ColumnType)>, Vec<Vec<Value>>)>;

/// [`transform_segment`], with a panic turned into an error.
fn transform_caught(cfg: &Config, meta: &Meta, rows: &[Vec<Value>]) -> Result<Outputs, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| transform(cfg, meta, rows)))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            Err(format!("the query panicked: {}", first_line(&what)))
        })
}

/// Splits `rows` into those the queries run on and those that make them
/// fail (each with why), by halving.
fn isolate(
    cfg: &Config,
    meta: &Meta,
    rows: Vec<Vec<Value>>,
    good: &mut Vec<Vec<Value>>,
    bad: &mut Vec<(Vec<Value>, String)>,
) {
    match transform_caught(cfg, meta, &rows) {
        Ok(_) => good.extend(rows),
        Err(reason) if rows.len() == 1 => bad.extend(rows.into_iter().map(|r| (r, reason.clone()))),
        Err(_) if rows.is_empty() => {}
        Err(_) => {
            let mut left = rows;
            let right = left.split_off(left.len() / 2);
            isolate(cfg, meta, left, good, bad);
            isolate(cfg, meta, right, good, bad);
        }
    }
}

#[async_trait]
impl Task for TransformPolars {
    async fn run(&self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        let cfg = self.config.clone();
        let in_dir = ctx.output_dir(&cfg.input);
        let out_dir = ctx.output_dir(&ctx.task);
        let task = ctx.task.clone();
        let (report, rejected) =
            tokio::task::spawn_blocking(move || -> Result<(TaskReport, Vec<Rejected>), TaskError> {
                let _ = std::fs::remove_dir_all(&out_dir);
                let segments =
                    segment::list(&in_dir).map_err(|e| from_io("listing input segments", e))?;
                let (mut read, mut written) = (0u64, 0u64);
                let mut rejected = Vec::new();
                for (seq, meta) in &segments {
                    let rows = segment::read(&in_dir, *seq)
                        .map_err(|e| from_io("reading an input segment", e))?;
                    read += rows.len() as u64;
                    let outputs = match transform_caught(&cfg, meta, &rows) {
                        Ok(out) => out,
                        Err(reason) => {
                            // A query that fails without any row is wrong
                            // whatever the data: fail the task.
                            if let Err(e) = transform_caught(&cfg, meta, &[]) {
                                return Err(TaskError::fatal(e));
                            }
                            tracing::warn!(segment = seq, error = %reason, "a query failed on this segment; isolating the rows that make it fail");
                            let (mut good, mut bad) = (Vec::new(), Vec::new());
                            isolate(&cfg, meta, rows, &mut good, &mut bad);
                            let names: Vec<String> =
                                meta.columns.iter().map(|(n, _)| n.clone()).collect();
                            rejected.extend(bad.into_iter().map(|(row, why)| {
                                Rejected::from_row(&names, &row, &[], None, format!("task {task}: {why}"))
                            }));
                            // The queries once over every row they run on.
                            transform_caught(&cfg, meta, &good).map_err(TaskError::fatal)?
                        }
                    };
                    for (name, columns, rows) in outputs {
                        written += rows.len() as u64;
                        let out_meta = Meta {
                            columns,
                            rows: rows.len() as u64,
                            source_task: meta.source_task.clone(),
                            watermark: meta.watermark,
                        };
                        segment::write(&output_dir(&out_dir, name.as_str()), *seq, &out_meta, &rows)
                            .map_err(|e| from_io("writing an output segment", e))?;
                    }
                }
                let quarantined = rejected.len() as u64;
                Ok((
                    TaskReport {
            unchanged: false,
                        rows_read: read,
                        rows_written: written,
                        rows_quarantined: quarantined,
                        summary: format!(
                            "{read} rows in {} segments to {written} rows in {} outputs{}",
                            segments.len(),
                            cfg.outputs.len(),
                            if quarantined > 0 {
                                format!(", {quarantined} rows quarantined (a query failed on them)")
                            } else {
                                String::new()
                            }
                        ),
                    },
                    rejected,
                ))
            })
            .await
            .map_err(|e| TaskError::fatal(format!("the transform panicked: {e}")))??;
        crate::quarantine::write(&self.warehouse, &ctx.dag, &ctx.task, &ctx.run_id, &rejected)
            .await
            .map_err(|e| from_sqlx("writing the quarantine", e))?;
        Ok(report)
    }
}

/// Builds the task.
pub fn build(config: Config, warehouse: Warehouse) -> Arc<dyn Task> {
    Arc::new(TransformPolars { config, warehouse })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_over_a_segment() {
        let cfg: Config = toml::from_str(
            r#"
            input = "extract-views"
            [outputs.fact]
            sql = "SELECT id, CAST(STRFTIME(ts, '%Y%m%d') AS INTEGER) AS date_key, ts, n * 2 AS n2 FROM extract_views WHERE n > 1"
            [outputs.days]
            sql = "SELECT DISTINCT STRFTIME(ts, '%Y-%m-%d') AS date FROM extract_views"
            "#,
        )
        .unwrap();
        let meta = Meta {
            columns: vec![
                ("id".into(), ColumnType::String),
                ("ts".into(), ColumnType::Timestamp),
                ("n".into(), ColumnType::Int),
            ],
            rows: 2,
            source_task: "extract-views".into(),
            watermark: None,
        };
        let rows = vec![
            vec![
                Value::Str("a".into()),
                Value::Int(1_704_164_645_678),
                Value::Int(1),
            ],
            vec![
                Value::Str("b".into()),
                Value::Int(1_704_240_000_000),
                Value::Int(5),
            ],
        ];
        let out = transform_segment(&cfg, &meta, &rows).unwrap();
        let (name, cols, rows) = &out[1];
        assert_eq!(name.as_str(), "fact");
        assert_eq!(cols[1], ("date_key".into(), ColumnType::Int));
        assert_eq!(cols[2], ("ts".into(), ColumnType::Timestamp));
        assert_eq!(
            rows,
            &vec![vec![
                Value::Str("b".into()),
                Value::Int(20_240_103),
                Value::Int(1_704_240_000_000),
                Value::Int(10)
            ]]
        );
        let (_, _, days) = &out[0];
        assert_eq!(days.len(), 2);
    }
}
