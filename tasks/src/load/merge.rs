//! `load.merge`: merges a transform's outputs into warehouse tables, segment
//! by segment. Each segment is one transaction holding the rows of every
//! target and the watermark the segment completes, so a crash leaves either
//! all of a segment or none of it, and a rerun merges the same rows again to
//! the same result. Rows go in multi-row statements, never one per round
//! trip.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::Any;
use workflows::{
    Backend, LeaseError, Leases, SettingProblem, SqlIdent, Task, TaskContext, TaskError, TaskReport,
};

use crate::error::{from_io, from_merge, from_sqlx};
use crate::schema::{ColumnType, Value};
use crate::segment;
use crate::transform::polars::output_dir;
use crate::warehouse::{advance_watermark, record_commit, Commit, Warehouse};

/// The settings of a `load.merge` task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The transform task whose outputs are loaded; one of `depends_on`.
    pub input: String,
    /// Where each output goes.
    pub targets: Vec<Target>,
}

/// One output merged into one table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The transform output.
    pub output: SqlIdent,
    /// The table; the output's name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<SqlIdent>,
    /// The columns of the table's primary or unique key.
    pub key: Vec<SqlIdent>,
    /// How a row whose key is already there is merged.
    #[serde(default)]
    pub strategy: Strategy,
    /// For `latest` and `history`: the column, or columns compared in
    /// order, whose greater value is the newer row.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub version: Vec<SqlIdent>,
    /// For `history`: the columns naming the entity whose versions the rows
    /// are (e.g. `["user_id"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entity: Vec<SqlIdent>,
    /// For `history`: the column set to the first `version` column of the
    /// entity's next version, null for the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<SqlIdent>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SqlIdent>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(SqlIdent),
        Many(Vec<SqlIdent>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(c) => vec![c],
        OneOrMany::Many(cs) => cs,
    })
}

impl Target {
    /// The table loaded.
    pub fn table(&self) -> &SqlIdent {
        self.table.as_ref().unwrap_or(&self.output)
    }
}

/// How rows merge with rows of the same key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Keep the row already there (facts at event grain, static dimensions).
    #[default]
    InsertNew,
    /// Each column takes the value of the row with the greatest `version`
    /// that has one: a newer row overwrites the columns it carries and an
    /// older one only fills columns still null (type 1 dimensions).
    Latest,
    /// Fill the columns still null from the new row (accumulating snapshots).
    Accumulate,
    /// One row per version of an `entity`, merged as `latest` by its key;
    /// then `valid_to` of every version of the entities touched is set to
    /// the start of the next version (type 2 dimensions).
    History,
}

impl Strategy {
    /// Its name in DAG files.
    pub fn name(self) -> &'static str {
        match self {
            Self::InsertNew => "insert_new",
            Self::Latest => "latest",
            Self::Accumulate => "accumulate",
            Self::History => "history",
        }
    }
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
        if self.targets.is_empty() {
            out.push(SettingProblem::field("targets", "declares no target"));
        }
        let mut tables = BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if t.key.is_empty() {
                out.push(SettingProblem::field(
                    format!("targets[{i}].key"),
                    "names no column",
                ));
            }
            if !tables.insert(t.table().clone()) {
                out.push(SettingProblem::field(
                    format!("targets[{i}].table"),
                    format!("`{}` is loaded twice", t.table()),
                ));
            }
            let versioned = matches!(t.strategy, Strategy::Latest | Strategy::History);
            let history = t.strategy == Strategy::History;
            let mut need = |field: &str, present: bool, wanted: bool, by: &str| {
                if present && !wanted {
                    out.push(SettingProblem::field(
                        format!("targets[{i}].{field}"),
                        format!("is used only by strategy {by}"),
                    ));
                } else if wanted && !present {
                    out.push(SettingProblem::field(
                        format!("targets[{i}].{field}"),
                        format!("is required by strategy `{}`", t.strategy.name()),
                    ));
                }
            };
            need(
                "version",
                !t.version.is_empty(),
                versioned,
                "`latest` or `history`",
            );
            need("entity", !t.entity.is_empty(), history, "`history`");
            need("valid_to", t.valid_to.is_some(), history, "`history`");
        }
        out
    }
}

/// The staging table of a target, a temporary table shaped like it.
fn staging(target: &Target) -> String {
    format!("stg_{}", target.table())
}

/// Statements that create an empty staging table for `target` in the
/// current transaction (dropping one a failed transaction left behind).
pub fn staging_sql(backend: Backend, target: &Target) -> Vec<String> {
    let q = |c: &str| backend.quote(c);
    let (table, stg) = (q(target.table().as_str()), q(&staging(target)));
    match backend {
        Backend::MySql => vec![
            format!("DROP TEMPORARY TABLE IF EXISTS {stg}"),
            format!("CREATE TEMPORARY TABLE {stg} LIKE {table}"),
        ],
        Backend::Postgres => vec![
            format!("DROP TABLE IF EXISTS pg_temp.{stg}"),
            format!("CREATE TEMP TABLE {stg} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"),
        ],
        Backend::Sqlite => vec![
            format!("DROP TABLE IF EXISTS temp.{stg}"),
            format!("CREATE TEMP TABLE {stg} AS SELECT * FROM main.{table} WHERE 0"),
        ],
    }
}

/// A multi-row insert of `rows` rows of `columns` into the staging table.
pub fn stage_sql(backend: Backend, target: &Target, columns: &[String], rows: usize) -> String {
    let q = |c: &str| backend.quote(c);
    let cols = columns.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
    let mut sql = format!("INSERT INTO {} ({cols}) VALUES ", q(&staging(target)));
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        sql.push_str(&backend.params(r * columns.len() + 1, columns.len()));
        sql.push(')');
    }
    sql
}

/// The statements that merge the staging table into the target, following
/// the target's strategy; their affected-row counts add up to the rows that
/// changed.
pub fn merge_sql(backend: Backend, target: &Target, columns: &[String]) -> Vec<String> {
    let q = |c: &str| backend.quote(c);
    let (table, stg) = (q(target.table().as_str()), q(&staging(target)));
    let keys: Vec<String> = target.key.iter().map(|k| q(k.as_str())).collect();
    let rest: Vec<String> = columns
        .iter()
        .filter(|c| !target.key.iter().any(|k| k.as_str() == c.as_str()))
        .map(|c| q(c))
        .collect();
    let cols = columns.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
    let s_cols = columns
        .iter()
        .map(|c| format!("s.{}", q(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let join = keys
        .iter()
        .map(|k| format!("t.{k} = s.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let insert = format!(
        "INSERT INTO {table} ({cols}) SELECT {s_cols} FROM {stg} s WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {join})"
    );
    // UPDATE ... FROM (SQLite, PostgreSQL) or UPDATE ... JOIN (MySQL).
    let update = |sets: Vec<String>, condition: String| -> String {
        match backend {
            Backend::MySql => {
                let sets: Vec<String> = sets.iter().map(|s| format!("t.{s}")).collect();
                format!(
                    "UPDATE {table} t JOIN {stg} s ON {join} SET {} WHERE {condition}",
                    sets.join(", ")
                )
            }
            Backend::Sqlite | Backend::Postgres => {
                format!(
                    "UPDATE {table} AS t SET {} FROM {stg} AS s WHERE {join} AND ({condition})",
                    sets.join(", ")
                )
            }
        }
    };
    let fill = |cols: &[String]| -> Option<String> {
        if cols.is_empty() {
            return None;
        }
        let sets = cols
            .iter()
            .map(|c| format!("{c} = COALESCE(t.{c}, s.{c})"))
            .collect();
        let fills = cols
            .iter()
            .map(|c| format!("(t.{c} IS NULL AND s.{c} IS NOT NULL)"))
            .collect::<Vec<_>>()
            .join(" OR ");
        Some(update(sets, fills))
    };
    match target.strategy {
        Strategy::InsertNew => vec![insert],
        Strategy::Accumulate => fill(&rest).into_iter().chain([insert]).collect(),
        Strategy::Latest | Strategy::History => {
            let version: Vec<String> = target.version.iter().map(|v| q(v.as_str())).collect();
            let newer = row_greater(&version, "s", "t");
            // Each assignment reads only its own column, so the order in
            // which MySQL applies them does not matter.
            let sets = rest
                .iter()
                .map(|c| {
                    if version.contains(c) {
                        format!("{c} = s.{c}")
                    } else {
                        format!("{c} = COALESCE(s.{c}, t.{c})")
                    }
                })
                .collect();
            let mut out = vec![update(sets, newer)];
            out.extend(fill(&rest));
            out.push(insert);
            if target.strategy == Strategy::History {
                out.push(valid_to_sql(backend, target));
            }
            out
        }
    }
}

/// `a > b` for rows of columns compared in order (a row-value comparison).
fn row_greater(cols: &[String], a: &str, b: &str) -> String {
    if let [c] = cols {
        return format!("{a}.{c} > {b}.{c}");
    }
    let side = |x: &str| {
        cols.iter()
            .map(|c| format!("{x}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) > ({})", side(a), side(b))
}

/// The statement that sets `valid_to` of every version of the entities in
/// the staging table to the first version column of the next version.
fn valid_to_sql(backend: Backend, target: &Target) -> String {
    let q = |c: &str| backend.quote(c);
    let (table, stg) = (q(target.table().as_str()), q(&staging(target)));
    let list = |cols: &[SqlIdent], prefix: &str| {
        cols.iter()
            .map(|c| format!("{prefix}{}", q(c.as_str())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let entity = list(&target.entity, "");
    let entity_in = if target.entity.len() == 1 {
        format!("{entity} IN (SELECT {entity} FROM {stg})")
    } else {
        format!("({entity}) IN (SELECT {entity} FROM {stg})")
    };
    let next = format!(
        "SELECT {}, LEAD({}) OVER (PARTITION BY {entity} ORDER BY {}) AS next_from FROM {table} WHERE {entity_in}",
        list(&target.key, ""),
        q(target.version[0].as_str()),
        list(&target.version, ""),
    );
    let join = target
        .key
        .iter()
        .map(|k| format!("t.{0} = n.{0}", q(k.as_str())))
        .collect::<Vec<_>>()
        .join(" AND ");
    let vt = q(target.valid_to.as_ref().expect("checked").as_str());
    match backend {
        Backend::MySql => format!(
            "UPDATE {table} t JOIN ({next}) n ON {join} SET t.{vt} = n.next_from WHERE NOT (t.{vt} <=> n.next_from)"
        ),
        Backend::Postgres => format!(
            "UPDATE {table} AS t SET {vt} = n.next_from FROM ({next}) AS n WHERE {join} AND t.{vt} IS DISTINCT FROM n.next_from"
        ),
        Backend::Sqlite => format!(
            "UPDATE {table} AS t SET {vt} = n.next_from FROM ({next}) AS n WHERE {join} AND t.{vt} IS NOT n.next_from"
        ),
    }
}

/// Drops the staging table (MySQL and SQLite keep temporary tables until
/// the connection closes; PostgreSQL's go at commit).
fn unstage_sql(backend: Backend, target: &Target) -> Option<String> {
    let stg = backend.quote(&staging(target));
    match backend {
        Backend::MySql => Some(format!("DROP TEMPORARY TABLE IF EXISTS {stg}")),
        Backend::Sqlite => Some(format!("DROP TABLE IF EXISTS temp.{stg}")),
        Backend::Postgres => None,
    }
}

/// Splits a batch into rounds merged one after another, each holding a key
/// at most once, so that the merge gives what merging the rows one at a
/// time in batch order gives: for `insert_new` one round with the first row
/// of each key; for `accumulate` one round with, per key, the first
/// non-null value of each column; for `latest` and `history` the n-th
/// distinct row of each key in round n.
///
/// # Errors
/// A key or version column is not among the output's columns.
pub fn rounds(
    target: &Target,
    columns: &[String],
    rows: Vec<Vec<Value>>,
) -> Result<Vec<Vec<Vec<Value>>>, String> {
    let index = |name: &str| {
        columns.iter().position(|c| c == name).ok_or_else(|| {
            format!(
                "the output has no column `{name}` for table {}",
                target.table()
            )
        })
    };
    let key_idx: Vec<usize> = target
        .key
        .iter()
        .map(|k| index(k.as_str()))
        .collect::<Result<_, _>>()?;
    for v in &target.version {
        index(v.as_str())?;
    }
    // Per key: the round it is next due in, and where it sits in round 0.
    let mut seen: HashMap<String, (usize, usize)> = HashMap::with_capacity(rows.len());
    let mut out: Vec<Vec<Vec<Value>>> = vec![Vec::with_capacity(rows.len())];
    for row in rows {
        let key = key_of(&row, &key_idx);
        match seen.get_mut(&key) {
            None => {
                seen.insert(key, (1, out[0].len()));
                out[0].push(row);
            }
            Some((next, at)) => match target.strategy {
                Strategy::InsertNew => {}
                Strategy::Accumulate => {
                    for (slot, new) in out[0][*at].iter_mut().zip(row) {
                        if *slot == Value::Null {
                            *slot = new;
                        }
                    }
                }
                Strategy::Latest | Strategy::History => {
                    if out[0][*at] == row {
                        continue;
                    }
                    if out.len() <= *next {
                        out.push(Vec::new());
                    }
                    out[*next].push(row);
                    *next += 1;
                }
            },
        }
    }
    Ok(out)
}

fn bind<'q>(
    q: Query<'q, Any, AnyArguments<'q>>,
    ty: ColumnType,
    v: &Value,
) -> Query<'q, Any, AnyArguments<'q>> {
    match ty {
        ColumnType::String | ColumnType::ObjectId => q.bind(match v {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        }),
        ColumnType::Int | ColumnType::Timestamp => q.bind(match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }),
        ColumnType::Float => q.bind(match v {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }),
        ColumnType::Bool => q.bind(match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        }),
    }
}

/// A row's key as one string that tells values of different types apart.
fn key_of(row: &[Value], key_idx: &[usize]) -> String {
    let mut key = String::new();
    for &i in key_idx {
        match &row[i] {
            Value::Null => key.push('n'),
            Value::Bool(b) => key.push(if *b { 't' } else { 'f' }),
            Value::Int(n) => {
                key.push('i');
                key.push_str(&n.to_string());
            }
            Value::Float(f) => {
                key.push('d');
                key.push_str(&f.to_bits().to_string());
            }
            Value::Str(s) => {
                key.push('s');
                key.push_str(&s.len().to_string());
                key.push(':');
                key.push_str(s);
            }
        }
        key.push('\u{1f}');
    }
    key
}

/// Stages one round of rows in a temporary table, merges it into the
/// target and returns the rows changed.
async fn merge_round(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    t: &Target,
    columns: &[(String, ColumnType)],
    rows: &[Vec<Value>],
    per_stmt: usize,
) -> Result<u64, TaskError> {
    let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    for sql in staging_sql(backend, t) {
        sqlx::query(&sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| from_sqlx(format!("staging {}", t.table()), e))?;
    }
    // Every chunk but the last has the same statement: build it once.
    let full = stage_sql(backend, t, &names, per_stmt.min(rows.len()));
    for chunk in rows.chunks(per_stmt) {
        let last;
        let sql = if chunk.len() == per_stmt.min(rows.len()) {
            &full
        } else {
            last = stage_sql(backend, t, &names, chunk.len());
            &last
        };
        let mut q = sqlx::query(sql);
        for row in chunk {
            for ((_, ty), v) in columns.iter().zip(row) {
                q = bind(q, *ty, v);
            }
        }
        q.execute(&mut *tx)
            .await
            .map_err(|e| from_sqlx(format!("staging rows for {}", t.table()), e))?;
    }
    let mut changed = 0;
    for sql in merge_sql(backend, t, &names) {
        let done = sqlx::query(&sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| from_merge(format!("merging into {}", t.table()), e))?;
        changed += if backend == Backend::Sqlite {
            // sqlx reports SQLite's change count of the last statement that
            // changed rows, not of this one.
            let n: i64 = sqlx::query_scalar("SELECT changes()")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| from_sqlx("counting changes", e))?;
            n as u64
        } else {
            done.rows_affected()
        };
    }
    if let Some(sql) = unstage_sql(backend, t) {
        sqlx::query(&sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| from_sqlx("dropping staging", e))?;
    }
    Ok(changed)
}

/// The task.
pub struct LoadMerge {
    /// Its settings.
    pub config: Config,
    /// The warehouse.
    pub warehouse: Warehouse,
}

#[async_trait]
impl Task for LoadMerge {
    async fn run(&self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        let wh = &self.warehouse;
        let in_dir = ctx.output_dir(&self.config.input);
        // Segment numbers present in any target's output, in order.
        let mut seqs = BTreeSet::new();
        let mut listed = Vec::new();
        for t in &self.config.targets {
            let dir = output_dir(&in_dir, t.output.as_str());
            let segs = segment::list(&dir).map_err(|e| from_io("listing segments", e))?;
            seqs.extend(segs.iter().map(|(s, _)| *s));
            listed.push((dir, segs.into_iter().collect::<HashMap<_, _>>()));
        }
        // A retried attempt skips the segments an earlier attempt of this
        // run committed.
        let done: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT segment FROM cutover_commits WHERE run_id = {} AND task = {}",
            wh.backend.param(1),
            wh.backend.param(2)
        ))
        .bind(&ctx.run_id)
        .bind(&ctx.task)
        .fetch_all(&wh.pool)
        .await
        .map_err(|e| from_sqlx("reading committed segments", e))?;
        seqs.retain(|s| !done.contains(&i64::from(*s)));
        let progress = crate::kinds::progress(&format!("{} {}", ctx.dag, ctx.task));
        let (mut offered, mut changed, mut committed) = (0u64, 0u64, 0u64);
        for seq in seqs {
            let mut tx = wh
                .pool
                .begin()
                .await
                .map_err(|e| from_sqlx("starting a transaction", e))?;
            let mut watermark = None;
            let (offered_before, changed_before) = (offered, changed);
            for (t, (dir, segs)) in self.config.targets.iter().zip(&listed) {
                let Some(meta) = segs.get(&seq) else { continue };
                watermark = watermark.or(meta.watermark.map(|w| (meta.source_task.clone(), w)));
                let rows = segment::read(dir, seq).map_err(|e| from_io("reading a segment", e))?;
                offered += rows.len() as u64;
                let names: Vec<String> = meta.columns.iter().map(|(n, _)| n.clone()).collect();
                let per_stmt = (wh.backend.max_params() / names.len().max(1)).clamp(1, 2000);
                for round in rounds(t, &names, rows).map_err(TaskError::fatal)? {
                    changed += merge_round(&mut tx, wh.backend, t, &meta.columns, &round, per_stmt)
                        .await?;
                    progress.inc(round.len() as u64);
                }
            }
            if let Some((task, w)) = &watermark {
                advance_watermark(&mut tx, wh.backend, &ctx.dag, task, w.ts_ms, &ctx.run_id)
                    .await
                    .map_err(|e| from_sqlx("advancing the watermark", e))?;
            }
            let commit = Commit {
                run_id: &ctx.run_id,
                dag: &ctx.dag,
                task: &ctx.task,
                segment: seq,
                rows_offered: offered - offered_before,
                rows_changed: changed - changed_before,
                watermark_ms: watermark.as_ref().map(|(_, w)| w.ts_ms),
            };
            record_commit(&mut tx, wh.backend, commit)
                .await
                .map_err(|e| from_sqlx("recording the commit", e))?;
            if let Some(lease) = &ctx.lease {
                let now_ms = chrono::Utc::now().timestamp_millis();
                Leases::check(&mut tx, wh.backend, lease, now_ms)
                    .await
                    .map_err(|e| match e {
                        LeaseError::Database { source, .. } => {
                            from_sqlx("checking the DAG's lease", source)
                        }
                        lost @ LeaseError::Lost { .. } => TaskError::fatal(lost.to_string()),
                    })?;
            }
            tx.commit()
                .await
                .map_err(|e| from_sqlx("committing a segment", e))?;
            committed += 1;
        }
        progress.finish_and_clear();
        Ok(TaskReport {
            rows_read: offered,
            rows_written: changed,
            rows_quarantined: 0,
            summary: format!(
                "{offered} rows merged in {committed} transactions, {changed} rows changed"
            ),
        })
    }
}

/// Builds the task.
pub fn build(config: Config, warehouse: Warehouse) -> Arc<dyn Task> {
    Arc::new(LoadMerge { config, warehouse })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(strategy: Strategy, version: Option<&str>) -> Target {
        Target {
            output: SqlIdent::new("dim").unwrap(),
            table: None,
            key: vec![SqlIdent::new("id").unwrap()],
            strategy,
            version: version
                .map(|v| SqlIdent::new(v).unwrap())
                .into_iter()
                .collect(),
            entity: Vec::new(),
            valid_to: None,
        }
    }

    #[test]
    fn statements_per_dialect() {
        let cols = vec!["id".to_owned(), "title".to_owned(), "ver".to_owned()];
        let t = target(Strategy::Latest, Some("ver"));
        assert_eq!(
            merge_sql(Backend::Postgres, &t, &cols),
            [
                "UPDATE \"dim\" AS t SET \"title\" = COALESCE(s.\"title\", t.\"title\"), \"ver\" = s.\"ver\" FROM \"stg_dim\" AS s WHERE t.\"id\" = s.\"id\" AND (s.\"ver\" > t.\"ver\")",
                "UPDATE \"dim\" AS t SET \"title\" = COALESCE(t.\"title\", s.\"title\"), \"ver\" = COALESCE(t.\"ver\", s.\"ver\") FROM \"stg_dim\" AS s WHERE t.\"id\" = s.\"id\" AND ((t.\"title\" IS NULL AND s.\"title\" IS NOT NULL) OR (t.\"ver\" IS NULL AND s.\"ver\" IS NOT NULL))",
                "INSERT INTO \"dim\" (\"id\", \"title\", \"ver\") SELECT s.\"id\", s.\"title\", s.\"ver\" FROM \"stg_dim\" s WHERE NOT EXISTS (SELECT 1 FROM \"dim\" t WHERE t.\"id\" = s.\"id\")",
            ]
        );
        assert_eq!(
            merge_sql(Backend::MySql, &t, &cols)[0],
            "UPDATE `dim` t JOIN `stg_dim` s ON t.`id` = s.`id` SET t.`title` = COALESCE(s.`title`, t.`title`), t.`ver` = s.`ver` WHERE s.`ver` > t.`ver`"
        );
        let mut h = target(Strategy::History, None);
        h.version = vec![
            SqlIdent::new("from_ms").unwrap(),
            SqlIdent::new("doc").unwrap(),
        ];
        h.entity = vec![SqlIdent::new("user_id").unwrap()];
        h.valid_to = Some(SqlIdent::new("to_ms").unwrap());
        let hcols = ["id", "user_id", "from_ms", "doc", "to_ms"].map(String::from);
        let stmts = merge_sql(Backend::MySql, &h, &hcols);
        assert!(stmts[0].ends_with("WHERE (s.`from_ms`, s.`doc`) > (t.`from_ms`, t.`doc`)"));
        assert_eq!(
            stmts.last().unwrap(),
            "UPDATE `dim` t JOIN (SELECT `id`, LEAD(`from_ms`) OVER (PARTITION BY `user_id` ORDER BY `from_ms`, `doc`) AS next_from FROM `dim` WHERE `user_id` IN (SELECT `user_id` FROM `stg_dim`)) n ON t.`id` = n.`id` SET t.`to_ms` = n.next_from WHERE NOT (t.`to_ms` <=> n.next_from)"
        );
        let a = target(Strategy::Accumulate, None);
        assert!(merge_sql(Backend::Sqlite, &a, &cols)[0].ends_with(
            "AND ((t.\"title\" IS NULL AND s.\"title\" IS NOT NULL) OR (t.\"ver\" IS NULL AND s.\"ver\" IS NOT NULL))"
        ));
        assert_eq!(
            stage_sql(Backend::MySql, &a, &cols, 2),
            "INSERT INTO `stg_dim` (`id`, `title`, `ver`) VALUES (?, ?, ?), (?, ?, ?)"
        );
    }

    #[test]
    fn rounds_follow_the_strategy() {
        let cols = vec!["id".to_owned(), "v".to_owned(), "x".to_owned()];
        let a = |v: i64, x: Option<&str>| {
            vec![
                Value::Str("a".into()),
                Value::Int(v),
                x.map_or(Value::Null, |x| Value::Str(x.into())),
            ]
        };
        let b = vec![Value::Str("b".into()), Value::Int(1), Value::Null];
        let rows = vec![a(1, None), a(3, Some("late")), b.clone(), a(2, Some("mid"))];
        let first = rounds(&target(Strategy::InsertNew, None), &cols, rows.clone()).unwrap();
        assert_eq!(first, vec![vec![a(1, None), b.clone()]]);
        let acc = rounds(&target(Strategy::Accumulate, None), &cols, rows.clone()).unwrap();
        assert_eq!(acc, vec![vec![a(1, Some("late")), b.clone()]]);
        // Versioned rows of one key are merged one round at a time, in
        // batch order; an exact copy is dropped.
        let mut with_copy = rows.clone();
        with_copy.push(a(1, None));
        let latest = rounds(&target(Strategy::Latest, Some("v")), &cols, with_copy).unwrap();
        assert_eq!(
            latest,
            vec![
                vec![a(1, None), b],
                vec![a(3, Some("late"))],
                vec![a(2, Some("mid"))]
            ]
        );
        let err = rounds(&target(Strategy::Latest, Some("nope")), &cols, rows).unwrap_err();
        assert!(err.contains("no column `nope`"), "{err}");
    }
}
