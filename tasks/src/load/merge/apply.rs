//! Merging rows in the segment's transaction, setting aside under
//! savepoints the rows the database refuses.

use workflows::{Backend, SqlIdent, TaskError};

use super::rows::{bind, key_of, read_value, STAGE_BYTES};
use super::sql::{
    existing_keys_sql, existing_sql, insert_sql, merge_sql, stage_sql, staging_sql, unstage_sql,
    upsert_sql,
};
use super::Strategy;
use super::Target;
use crate::error::from_merge;
use crate::schema::{ColumnType, Value};

/// A statement of a merge failed.
#[derive(Debug)]
pub(super) struct MergeFailed {
    what: String,
    source: sqlx::Error,
}

impl MergeFailed {
    fn new(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let what = what.into();
        move |source| Self { what, source }
    }

    pub(super) fn into_task_error(self, context: &str) -> TaskError {
        from_merge(format!("{context}: {}", self.what), self.source)
    }
}

/// The rows of one multi-row statement each: at most `per_stmt` rows and,
/// past the first row, at most [`STAGE_BYTES`] of values.
fn chunks(rows: &[Vec<Value>], per_stmt: usize) -> impl Iterator<Item = &[Vec<Value>]> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= rows.len() {
            return None;
        }
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
        start = end;
        Some(chunk)
    })
}

/// `sql` with every value of `rows` bound, row by row.
fn with_rows<'q>(
    sql: &'q str,
    columns: &[(SqlIdent, ColumnType)],
    rows: &[Vec<Value>],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut q = sqlx::query(sql);
    for row in rows {
        for ((_, ty), v) in columns.iter().zip(row) {
            q = bind(q, *ty, v);
        }
    }
    q
}

/// `sql` with the key values of `rows` bound, row by row.
fn with_keys<'q>(
    sql: &'q str,
    key_idx: &[(usize, ColumnType)],
    rows: &[Vec<Value>],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut q = sqlx::query(sql);
    for row in rows {
        for (i, ty) in key_idx {
            q = bind(q, *ty, &row[*i]);
        }
    }
    q
}

/// Merges rows into the target and returns the rows changed: by one
/// conflict-resolving insert per chunk of rows when `upsert` (the rows have
/// one row per key), else staged in a temporary table and merged from there.
async fn merge_rows(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    t: &Target,
    columns: &[(SqlIdent, ColumnType)],
    rows: &[Vec<Value>],
    upsert: bool,
) -> Result<u64, MergeFailed> {
    let names: Vec<SqlIdent> = columns.iter().map(|(n, _)| n.clone()).collect();
    let per_stmt = (backend.max_params() / names.len().max(1)).clamp(1, 2000);
    if upsert {
        return upsert_rows(tx, backend, t, columns, rows, per_stmt).await;
    }
    for sql in staging_sql(backend, t) {
        sqlx::query(&sql)
            .execute(&mut *tx)
            .await
            .map_err(MergeFailed::new(format!("staging {}", t.table())))?;
    }
    for chunk in chunks(rows, per_stmt) {
        let sql = stage_sql(backend, t, &names, chunk.len());
        with_rows(&sql, columns, chunk)
            .execute(&mut *tx)
            .await
            .map_err(MergeFailed::new(format!("staging rows for {}", t.table())))?;
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

/// Merges rows by conflict-resolving inserts, each row written once.
async fn upsert_rows(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    t: &Target,
    columns: &[(SqlIdent, ColumnType)],
    rows: &[Vec<Value>],
    per_stmt: usize,
) -> Result<u64, MergeFailed> {
    let names: Vec<SqlIdent> = columns.iter().map(|(n, _)| n.clone()).collect();
    let key_idx: Vec<(usize, ColumnType)> = t
        .key
        .iter()
        .filter_map(|k| {
            columns
                .iter()
                .position(|(n, _)| n == k)
                .map(|i| (i, columns[i].1))
        })
        .collect();
    let mut changed = 0;
    for chunk in chunks(rows, per_stmt) {
        if backend == Backend::MySql && t.strategy == Strategy::InsertNew {
            changed += insert_new_rows(tx, t, columns, &key_idx, chunk).await?;
            continue;
        }
        // MySQL counts an insert once, a change twice and an unchanged
        // duplicate once: the rows already there make it exact.
        let existing = if backend == Backend::MySql {
            let sql = existing_sql(backend, t, chunk.len());
            let row = with_keys(&sql, &key_idx, chunk)
                .fetch_one(&mut *tx)
                .await
                .map_err(MergeFailed::new(format!(
                    "counting the rows of {}",
                    t.table()
                )))?;
            sqlx::Row::try_get::<i64, _>(&row, 0).map_err(MergeFailed::new(format!(
                "counting the rows of {}",
                t.table()
            )))? as u64
        } else {
            0
        };
        let sql = upsert_sql(backend, t, &names, chunk.len());
        let done = with_rows(&sql, columns, chunk)
            .execute(&mut *tx)
            .await
            .map_err(MergeFailed::new(format!("merging into {}", t.table())))?;
        changed += match backend {
            Backend::MySql => done.rows_affected().saturating_sub(existing),
            // sqlx reports SQLite's change count of the last statement that
            // changed rows, not of this one.
            Backend::Sqlite => sqlx::query_scalar::<_, i64>("SELECT changes()")
                .fetch_one(&mut *tx)
                .await
                .map_err(MergeFailed::new("counting changes"))?
                as u64,
            Backend::Postgres => done.rows_affected(),
        };
    }
    Ok(changed)
}

/// MySQL, `insert_new`: inserts the rows whose keys the table does not
/// hold yet, found by a plain (not locking) read. An insert that updates
/// nothing (`ON DUPLICATE KEY UPDATE k = k`) would still lock every
/// existing row it meets, so loads of a shared dimension (every fact DAG's
/// `dim_date`) would wait on each other's segments; this takes no lock on
/// a row already there. When another load inserted one of the keys in
/// between (the insert fails as a unique violation, and only the statement
/// is undone), the keys are read once more by a locking read, which sees
/// what the transaction's snapshot does not, and the rest inserted: the
/// feed's micro-batches, whose DAGs load the same days side by side, would
/// otherwise retry the whole task after a back-off.
async fn insert_new_rows(
    tx: &mut sqlx::AnyConnection,
    t: &Target,
    columns: &[(SqlIdent, ColumnType)],
    key_idx: &[(usize, ColumnType)],
    chunk: &[Vec<Value>],
) -> Result<u64, MergeFailed> {
    let backend = Backend::MySql;
    let what = || format!("reading the keys of {}", t.table());
    let positions: Vec<usize> = key_idx.iter().map(|(i, _)| *i).collect();
    let names: Vec<SqlIdent> = columns.iter().map(|(n, _)| n.clone()).collect();
    for locking in [false, true] {
        let mut sql = existing_keys_sql(backend, t, chunk.len());
        if locking {
            sql.push_str(" LOCK IN SHARE MODE");
        }
        let found = with_keys(&sql, key_idx, chunk)
            .fetch_all(&mut *tx)
            .await
            .map_err(MergeFailed::new(what()))?;
        let mut there = std::collections::HashSet::with_capacity(found.len());
        for r in &found {
            let key = key_idx
                .iter()
                .enumerate()
                .map(|(n, (_, ty))| read_value(r, n, *ty))
                .collect::<Result<Vec<Value>, _>>()
                .map_err(MergeFailed::new(what()))?;
            there.insert(key_of(&key, &(0..key.len()).collect::<Vec<_>>()));
        }
        let fresh: Vec<Vec<Value>> = chunk
            .iter()
            .filter(|r| !there.contains(&key_of(r, &positions)))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let sql = insert_sql(backend, t, &names, fresh.len());
        match with_rows(&sql, columns, &fresh).execute(&mut *tx).await {
            Ok(done) => return Ok(done.rows_affected()),
            Err(e) if !locking && workflows::db::unique_violation(&e) => {}
            Err(e) => return Err(MergeFailed::new(format!("merging into {}", t.table()))(e)),
        }
    }
    unreachable!("the locking read's insert returns")
}

/// Merges rows, each attempt under a savepoint; when the database refuses
/// some row's data, finds the rows it refuses by halving, sets them aside
/// in `refused` with the database's reason, and merges the rest.
pub(super) async fn merge_isolating(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    t: &Target,
    columns: &[(SqlIdent, ColumnType)],
    rows: Vec<Vec<Value>>,
    upsert: bool,
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
        match merge_rows(&mut sp, backend, t, columns, &part, upsert).await {
            Ok(n) => {
                sp.commit()
                    .await
                    .map_err(MergeFailed::new("releasing a savepoint"))?;
                changed += n;
            }
            Err(e) if workflows::db::data_error(&e.source) => {
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
                        workflows::redact::redact(&workflows::db::db_message(&e.source))
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
