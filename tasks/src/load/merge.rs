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
use crate::quarantine::Rejected;
use crate::schema::{ColumnType, Value};
use crate::segment::{self, output_dir};
use crate::warehouse::{advance_watermark, record_commit, ColumnInfo, Commit, Warehouse};

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

impl Config {
    /// Checks the targets against the outputs of the input transform
    /// (`outputs`) and, when known, the columns each output makes.
    pub fn check_outputs(
        &self,
        outputs: &[SqlIdent],
        planned: Option<&crate::transform::polars::Planned>,
    ) -> Vec<SettingProblem> {
        let mut out = Vec::new();
        let names = |v: &[SqlIdent]| {
            v.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (i, t) in self.targets.iter().enumerate() {
            if !outputs.contains(&t.output) {
                let hint = workflows::dag::did_you_mean(
                    t.output.as_str(),
                    outputs.iter().map(SqlIdent::as_str),
                )
                .map_or(String::new(), |h| format!(" (did you mean `{h}`?)"));
                out.push(SettingProblem::field(
                    format!("targets[{i}].output"),
                    format!(
                        "`{}` is not an output of {}{hint}; it makes {}",
                        t.output,
                        self.input,
                        names(outputs)
                    ),
                ));
                continue;
            }
            let Some(Some(Ok(columns))) = planned.map(|p| p.get(&t.output)) else {
                continue;
            };
            let has = |c: &SqlIdent| columns.iter().any(|(n, _)| n == c.as_str());
            let mut need = |field: &str, cols: &[SqlIdent]| {
                for c in cols {
                    if !has(c) {
                        out.push(SettingProblem::field(
                            format!("targets[{i}].{field}"),
                            format!(
                                "the output {} has no column `{c}`; it has {}",
                                t.output,
                                columns
                                    .iter()
                                    .map(|(n, _)| format!("`{n}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                }
            };
            need("key", &t.key);
            need("version", &t.version);
            need("entity", &t.entity);
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

/// Reduces a batch to at most two rounds of one row per key, merged one
/// after the other, so that a merge costs the distinct keys, not the
/// copies: for `insert_new` one round with the first row of each key; for
/// `accumulate` one round with, per key, the first non-null value of each
/// column; for `latest` and `history`, round one holds each key's newest
/// row (the greatest `version`; at an equal version, the earlier row) as it
/// is, and round two, for keys with older rows, a row whose columns are the
/// newest non-null values of those older rows, with the version of the
/// newest of them: it can only fill what is still null, never overwrite a
/// value of a newer version already in the table.
///
/// # Errors
/// A key or version column is not among the output's columns.
pub fn reduce(
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
    let version_idx: Vec<usize> = target
        .version
        .iter()
        .map(|v| index(v.as_str()))
        .collect::<Result<_, _>>()?;
    let mut at: HashMap<String, usize> = HashMap::with_capacity(rows.len());
    // Per key: the newest row, and the fill made of the older ones.
    let mut newest: Vec<Vec<Value>> = Vec::with_capacity(rows.len());
    let mut fills: Vec<Option<Vec<Value>>> = Vec::new();
    let versioned = matches!(target.strategy, Strategy::Latest | Strategy::History);
    for row in rows {
        let key = key_of(&row, &key_idx);
        let Some(&i) = at.get(&key) else {
            at.insert(key, newest.len());
            newest.push(row);
            if versioned {
                fills.push(None);
            }
            continue;
        };
        match target.strategy {
            Strategy::InsertNew => {}
            Strategy::Accumulate => fill(&mut newest[i], row),
            Strategy::Latest | Strategy::History => {
                if newest[i] == row {
                    continue;
                }
                let older = if newer(&row, &newest[i], &version_idx) {
                    std::mem::replace(&mut newest[i], row)
                } else {
                    row
                };
                fills[i] = Some(match fills[i].take() {
                    None => older,
                    Some(f) if newer(&older, &f, &version_idx) => {
                        let mut o = older;
                        fill(&mut o, f);
                        o
                    }
                    Some(mut f) => {
                        fill(&mut f, older);
                        f
                    }
                });
            }
        }
    }
    let second: Vec<Vec<Value>> = fills.into_iter().flatten().collect();
    Ok(if second.is_empty() {
        vec![newest]
    } else {
        vec![newest, second]
    })
}

/// Fills the null cells of `row` from `other`.
fn fill(row: &mut [Value], other: Vec<Value>) {
    for (slot, v) in row.iter_mut().zip(other) {
        if *slot == Value::Null {
            *slot = v;
        }
    }
}

/// Whether `a`'s version columns compare greater than `b`'s, as SQL's row
/// comparison does (a null makes it unknown, so not greater).
fn newer(a: &[Value], b: &[Value], version: &[usize]) -> bool {
    use std::cmp::Ordering;
    for &i in version {
        let ord = match (&a[i], &b[i]) {
            (Value::Int(x), Value::Int(y)) => x.cmp(y),
            (Value::Float(x), Value::Float(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
            (Value::Int(x), Value::Float(y)) => {
                (*x as f64).partial_cmp(y).unwrap_or(Ordering::Equal)
            }
            (Value::Float(x), Value::Int(y)) => {
                x.partial_cmp(&(*y as f64)).unwrap_or(Ordering::Equal)
            }
            (Value::Str(x), Value::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
            (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
            _ => return false,
        };
        match ord {
            Ordering::Greater => return true,
            Ordering::Less => return false,
            Ordering::Equal => {}
        }
    }
    false
}

/// Why `v` cannot go into column `col` of `table`, if it cannot.
pub fn misfit(col: &ColumnInfo, table: &str, v: &Value, backend: Backend) -> Option<String> {
    let name = &col.name;
    match v {
        Value::Null if col.not_null => Some(format!("column {name} of {table} cannot be null")),
        Value::Str(s) => {
            if !col.nul_ok && s.contains('\0') {
                return Some(format!(
                    "column {name} of {table}: the value holds a NUL character, which PostgreSQL text cannot store"
                ));
            }
            if let Some(max) = col.max_chars {
                let n = s.chars().count() as u64;
                if n > max {
                    return Some(format!(
                        "column {name} of {table} holds at most {max} characters; the value has {n}"
                    ));
                }
            }
            if let Some(max) = col.max_bytes {
                if s.len() as u64 > max {
                    return Some(format!(
                        "column {name} of {table} holds at most {max} bytes; the value has {}",
                        s.len()
                    ));
                }
            }
            None
        }
        Value::Int(i) => match col.int_range {
            Some((lo, hi)) if *i < lo || *i > hi => Some(format!(
                "column {name} of {table} holds integers from {lo} to {hi}; the value is {i}"
            )),
            _ => None,
        },
        Value::Float(f) if !f.is_finite() && backend == Backend::MySql => {
            Some(format!("column {name} of {table}: MySQL cannot store {f}"))
        }
        _ => None,
    }
}

/// Why a row is too large to send at all, if it is.
fn oversized(row: &[Value], max: usize) -> Option<String> {
    let bytes: usize = row
        .iter()
        .map(|v| match v {
            Value::Str(s) => s.len() + 2,
            _ => 16,
        })
        .sum();
    (bytes > max).then(|| {
        format!(
            "the row is {bytes} bytes, more than the server takes in one statement ({max} bytes)"
        )
    })
}

/// Rows per staging statement: bounded by the backend's bind parameters,
/// 2,000 rows, and about 4 MiB of values.
const STAGE_BYTES: usize = 4 << 20;

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

/// A statement of a merge failed.
#[derive(Debug)]
struct MergeFailed {
    what: String,
    source: sqlx::Error,
}

impl MergeFailed {
    fn new(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let what = what.into();
        move |source| Self { what, source }
    }

    fn into_task_error(self, context: &str) -> TaskError {
        from_merge(format!("{context}: {}", self.what), self.source)
    }
}

/// Stages rows in a temporary table, merges them into the target and
/// returns the rows changed.
async fn merge_rows(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    t: &Target,
    columns: &[(String, ColumnType)],
    rows: &[Vec<Value>],
) -> Result<u64, MergeFailed> {
    let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    for sql in staging_sql(backend, t) {
        sqlx::query(&sql)
            .execute(&mut *tx)
            .await
            .map_err(MergeFailed::new(format!("staging {}", t.table())))?;
    }
    let per_stmt = (backend.max_params() / names.len().max(1)).clamp(1, 2000);
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < rows.len() && end - start < per_stmt && (end == start || bytes < STAGE_BYTES) {
            bytes += rows[end]
                .iter()
                .map(|v| match v {
                    Value::Str(s) => s.len(),
                    _ => 8,
                })
                .sum::<usize>();
            end += 1;
        }
        let chunk = &rows[start..end];
        let sql = stage_sql(backend, t, &names, chunk.len());
        let mut q = sqlx::query(&sql);
        for row in chunk {
            for ((_, ty), v) in columns.iter().zip(row) {
                q = bind(q, *ty, v);
            }
        }
        q.execute(&mut *tx)
            .await
            .map_err(MergeFailed::new(format!("staging rows for {}", t.table())))?;
        start = end;
    }
    let mut changed = 0;
    for sql in merge_sql(backend, t, &names) {
        let done = sqlx::query(&sql)
            .execute(&mut *tx)
            .await
            .map_err(MergeFailed::new(format!("merging into {}", t.table())))?;
        changed += if backend == Backend::Sqlite {
            // sqlx reports SQLite's change count of the last statement that
            // changed rows, not of this one.
            let n: i64 = sqlx::query_scalar("SELECT changes()")
                .fetch_one(&mut *tx)
                .await
                .map_err(MergeFailed::new("counting changes"))?;
            n as u64
        } else {
            done.rows_affected()
        };
    }
    if let Some(sql) = unstage_sql(backend, t) {
        sqlx::query(&sql)
            .execute(&mut *tx)
            .await
            .map_err(MergeFailed::new("dropping staging"))?;
    }
    Ok(changed)
}

/// Merges rows, each attempt under a savepoint; when the database refuses
/// some row's data, finds the rows it refuses by halving, sets them aside
/// in `refused` with the database's reason, and merges the rest.
async fn merge_isolating(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    t: &Target,
    columns: &[(String, ColumnType)],
    rows: Vec<Vec<Value>>,
    refused: &mut Vec<(Vec<Value>, String)>,
) -> Result<u64, MergeFailed> {
    use sqlx::Connection;
    // When the database refuses most rows, the table is wrong, not the
    // rows: fail rather than quarantine them all.
    let limit = (rows.len() / 2).max(10);
    let mut changed = 0;
    let mut todo = vec![rows];
    while let Some(part) = todo.pop() {
        if part.is_empty() {
            continue;
        }
        let mut sp = tx
            .begin()
            .await
            .map_err(MergeFailed::new("opening a savepoint"))?;
        match merge_rows(&mut sp, backend, t, columns, &part).await {
            Ok(n) => {
                sp.commit()
                    .await
                    .map_err(MergeFailed::new("releasing a savepoint"))?;
                changed += n;
            }
            Err(e) if crate::error::data_error(&e.source) => {
                sp.rollback()
                    .await
                    .map_err(MergeFailed::new("rolling back to a savepoint"))?;
                if refused.len() >= limit {
                    return Err(e);
                }
                if part.len() == 1 {
                    let reason = format!(
                        "{} refused the row: {}",
                        t.table(),
                        workflows::redact::redact(&crate::error::db_message(&e.source))
                    );
                    refused.extend(part.into_iter().map(|r| (r, reason.clone())));
                } else {
                    let mut left = part;
                    let right = left.split_off(left.len() / 2);
                    todo.push(right);
                    todo.push(left);
                }
            }
            Err(e) => return Err(e),
        }
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

/// A few keys of a batch, to name the events of a failing load.
fn some_keys(names: &[String], rows: &[Vec<Value>], key_idx: &[usize]) -> String {
    let shown: Vec<String> = rows
        .iter()
        .take(3)
        .map(|r| {
            key_idx
                .iter()
                .map(|&i| match &r[i] {
                    Value::Str(s) => crate::quarantine::clip(s, 80),
                    other => serde_json::to_string(other).unwrap_or_default(),
                })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    let key: Vec<&str> = key_idx.iter().map(|&i| names[i].as_str()).collect();
    format!(
        "{} rows, {} {}{}",
        rows.len(),
        key.join("/"),
        shown.join(", "),
        if rows.len() > 3 { ", ..." } else { "" }
    )
}

#[async_trait]
impl Task for LoadMerge {
    async fn run(&self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        let wh = &self.warehouse;
        let in_dir = ctx.output_dir(&self.config.input);
        // The outputs the transform made (one directory each).
        let made: BTreeSet<String> = std::fs::read_dir(&in_dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        // Segment numbers present in any target's output, in order.
        let mut seqs = BTreeSet::new();
        let mut listed = Vec::new();
        for t in &self.config.targets {
            if !made.is_empty() && !made.contains(t.output.as_str()) {
                return Err(TaskError::fatal(format!(
                    "target {}: the transform {} makes no output `{}` (it makes {}); nothing was loaded and the watermark did not move",
                    t.table(),
                    self.config.input,
                    t.output,
                    made.iter().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            let dir = output_dir(&in_dir, t.output.as_str());
            let segs = segment::list(&dir).map_err(|e| from_io("listing segments", e))?;
            seqs.extend(segs.iter().map(|(s, _)| *s));
            listed.push((dir, segs.into_iter().collect::<HashMap<_, _>>()));
        }
        // What each target table can hold, checked before loading.
        let mut capacity: Vec<HashMap<String, ColumnInfo>> = Vec::new();
        for t in &self.config.targets {
            let cols = wh
                .columns(t.table().as_str())
                .await
                .map_err(|e| from_sqlx(format!("reading the columns of {}", t.table()), e))?;
            if cols.is_empty() {
                return Err(TaskError::fatal(format!(
                    "target {}: the table does not exist in the warehouse {}",
                    t.table(),
                    wh.display_url
                )));
            }
            capacity.push(cols.into_iter().map(|c| (c.name.clone(), c)).collect());
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
        // A statement larger than MySQL's packet limit closes the
        // connection: a row that alone is larger is set aside.
        let max_row_bytes = match wh.backend {
            Backend::MySql => {
                sqlx::query_scalar::<_, i64>("SELECT CAST(@@max_allowed_packet AS SIGNED)")
                    .fetch_one(&wh.pool)
                    .await
                    .map(|n| (n.max(1 << 20) as usize) - (64 << 10))
                    .unwrap_or(16 << 20)
            }
            _ => usize::MAX,
        };
        let progress = crate::kinds::progress(&format!("{} {}", ctx.dag, ctx.task));
        let (mut offered, mut changed, mut committed, mut quarantined) = (0u64, 0u64, 0u64, 0u64);
        for seq in seqs {
            let mut tx = wh
                .pool
                .begin()
                .await
                .map_err(|e| from_sqlx("starting a transaction", e))?;
            let mut watermark = None;
            let (offered_before, changed_before) = (offered, changed);
            let mut rejected: Vec<Rejected> = Vec::new();
            for ((t, (dir, segs)), cap) in self.config.targets.iter().zip(&listed).zip(&capacity) {
                let Some(meta) = segs.get(&seq) else { continue };
                watermark = watermark.or(meta.watermark.map(|w| (meta.source_task.clone(), w)));
                let rows = segment::read(dir, seq).map_err(|e| from_io("reading a segment", e))?;
                offered += rows.len() as u64;
                let names: Vec<String> = meta.columns.iter().map(|(n, _)| n.clone()).collect();
                if let Some(missing) = names.iter().find(|n| !cap.contains_key(*n)) {
                    return Err(TaskError::fatal(format!(
                        "target {}: the table has no column `{missing}`, which output {} makes",
                        t.table(),
                        t.output
                    )));
                }
                let key_idx: Vec<usize> = t
                    .key
                    .iter()
                    .filter_map(|k| names.iter().position(|n| n == k.as_str()))
                    .collect();
                // Rows the table cannot hold are set aside before loading,
                // each with its own document.
                let mut fit = Vec::with_capacity(rows.len());
                for row in rows {
                    let why = names
                        .iter()
                        .zip(&row)
                        .find_map(|(n, v)| misfit(&cap[n], t.table().as_str(), v, wh.backend))
                        .or_else(|| oversized(&row, max_row_bytes));
                    match why {
                        Some(reason) => rejected.push(Rejected::from_row(
                            &names,
                            &row,
                            &key_idx,
                            Some(t.table().as_str()),
                            format!("task {}: {reason}", ctx.task),
                        )),
                        None => fit.push(row),
                    }
                }
                let n = fit.len() as u64;
                let context = format!(
                    "segment {seq} into {} ({})",
                    t.table(),
                    some_keys(&names, &fit, &key_idx)
                );
                for round in reduce(t, &names, fit).map_err(TaskError::fatal)? {
                    let mut refused = Vec::new();
                    changed +=
                        merge_isolating(&mut tx, wh.backend, t, &meta.columns, round, &mut refused)
                            .await
                            .map_err(|e| e.into_task_error(&context))?;
                    for (row, why) in refused {
                        rejected.push(Rejected::from_row(
                            &names,
                            &row,
                            &key_idx,
                            Some(t.table().as_str()),
                            format!("task {}: {why}", ctx.task),
                        ));
                    }
                }
                progress.inc(n);
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
            // The rows set aside are quarantined before the segment commits:
            // a crash in between quarantines them again on the rerun.
            crate::quarantine::write_on(
                &mut tx,
                wh.backend,
                &ctx.dag,
                &ctx.task,
                &ctx.run_id,
                &rejected,
            )
            .await
            .map_err(|e| from_sqlx("writing the quarantine", e))?;
            quarantined += rejected.len() as u64;
            tx.commit()
                .await
                .map_err(|e| from_sqlx("committing a segment", e))?;
            committed += 1;
        }
        progress.finish_and_clear();
        let mut summary =
            format!("{offered} rows merged in {committed} transactions, {changed} rows changed");
        if quarantined > 0 {
            summary.push_str(&format!(
                ", {quarantined} rows quarantined (the warehouse cannot hold them)"
            ));
        }
        Ok(TaskReport {
            rows_read: offered,
            rows_written: changed,
            rows_quarantined: quarantined,
            summary,
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
    fn reduce_follows_the_strategy() {
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
        let first = reduce(&target(Strategy::InsertNew, None), &cols, rows.clone()).unwrap();
        assert_eq!(first, vec![vec![a(1, None), b.clone()]]);
        let acc = reduce(&target(Strategy::Accumulate, None), &cols, rows.clone()).unwrap();
        assert_eq!(acc, vec![vec![a(1, Some("late")), b.clone()]]);
        // The newest row of each key as it is, then what the older rows
        // can fill: an older value never lands on a newer version.
        let latest = reduce(&target(Strategy::Latest, Some("v")), &cols, rows.clone()).unwrap();
        assert_eq!(
            latest,
            vec![vec![a(3, Some("late")), b.clone()], vec![a(2, Some("mid"))]]
        );
        let newest_null = vec![a(7, None), a(3, Some("old"))];
        assert_eq!(
            reduce(&target(Strategy::Latest, Some("v")), &cols, newest_null).unwrap(),
            vec![vec![a(7, None)], vec![a(3, Some("old"))]]
        );
        // Twenty thousand copies of one key are two rows to merge.
        let copies: Vec<Vec<Value>> = (0..20_000).map(|i| a(i, Some("x"))).collect();
        let two = reduce(&target(Strategy::Latest, Some("v")), &cols, copies).unwrap();
        assert_eq!(
            two,
            vec![vec![a(19_999, Some("x"))], vec![a(19_998, Some("x"))]]
        );
        let err = reduce(&target(Strategy::Latest, Some("nope")), &cols, rows).unwrap_err();
        assert!(err.contains("no column `nope`"), "{err}");
    }

    #[test]
    fn values_a_column_cannot_hold_are_named() {
        let col = |max_chars, int_range, not_null, nul_ok| ColumnInfo {
            name: "c".into(),
            max_chars,
            max_bytes: None,
            int_range,
            not_null,
            nul_ok,
        };
        let long = Value::Str("x".repeat(100));
        assert_eq!(
            misfit(
                &col(Some(64), None, false, true),
                "t",
                &long,
                Backend::MySql
            )
            .unwrap(),
            "column c of t holds at most 64 characters; the value has 100"
        );
        assert!(misfit(
            &col(Some(100), None, false, true),
            "t",
            &long,
            Backend::MySql
        )
        .is_none());
        let nul = Value::Str("a\0b".into());
        assert!(
            misfit(&col(None, None, false, false), "t", &nul, Backend::Postgres)
                .unwrap()
                .contains("NUL")
        );
        let big = Value::Int(3_000_000_000);
        assert!(misfit(
            &col(None, Some((i32::MIN.into(), i32::MAX.into())), false, true),
            "t",
            &big,
            Backend::Postgres
        )
        .unwrap()
        .contains("the value is 3000000000"));
        assert!(misfit(
            &col(None, None, true, true),
            "t",
            &Value::Null,
            Backend::Sqlite
        )
        .is_some());
    }
}
