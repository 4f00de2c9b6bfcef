//! Merging rows in the segment's transaction, setting aside under
//! savepoints the rows the database refuses.

use workflows::{Backend, SqlIdent, TaskError};

use super::rows::{bind, STAGE_BYTES};
use super::sql::{merge_sql, stage_sql, staging_sql, unstage_sql};
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

/// Stages rows in a temporary table, merges them into the target and
/// returns the rows changed.
async fn merge_rows(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    t: &Target,
    columns: &[(SqlIdent, ColumnType)],
    rows: &[Vec<Value>],
) -> Result<u64, MergeFailed> {
    let names: Vec<SqlIdent> = columns.iter().map(|(n, _)| n.clone()).collect();
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
pub(super) async fn merge_isolating(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    t: &Target,
    columns: &[(SqlIdent, ColumnType)],
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
