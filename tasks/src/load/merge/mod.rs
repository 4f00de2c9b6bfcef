//! `load.merge`: merges a transform's outputs into warehouse tables, segment
//! by segment. Each segment is one transaction holding the rows of every
//! target and the watermark the segment completes, so a crash leaves either
//! all of a segment or none of it, and a rerun merges the same rows again to
//! the same result. Rows go in multi-row statements, never one per round
//! trip.

mod apply;
mod config;
mod rows;
mod sql;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use workflows::{Backend, LeaseError, Leases, SqlIdent, Task, TaskContext, TaskError, TaskReport};

use crate::error::{from_io, from_sqlx};
use crate::progress::Progress;
use crate::quarantine::Rejected;
use crate::schema::{ColumnType, Value};
use crate::segment::{self, output_dir};
use crate::warehouse::{advance_watermark, record_commit, ColumnInfo, Commit, Warehouse};

use apply::merge_isolating;
pub use config::{Config, Strategy, Target, KIND};
use rows::oversized;
pub use rows::{misfit, reduce, MissingColumn};
pub use sql::{existing_sql, merge_sql, stage_sql, staging_sql, upsert_sql, upserts};

/// The task.
pub struct LoadMerge {
    /// Its settings.
    pub config: Config,
    /// The warehouse.
    pub warehouse: Warehouse,
    /// Whether it shows a progress counter.
    pub progress: Progress,
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
        // Which targets take each row in one write (their key is the
        // table's unique key), and which are staged first.
        let mut upsert = Vec::with_capacity(self.config.targets.len());
        for t in &self.config.targets {
            let unique = wh
                .unique_keys(t.table().as_str())
                .await
                .map_err(|e| from_sqlx(format!("reading the keys of {}", t.table()), e))?;
            upsert.push(upserts(wh.backend, t, &unique));
        }
        // A retried attempt skips the segments an earlier attempt of this
        // run committed.
        let done: Vec<i64> = sqlx::query_scalar(
            &wh.backend
                .sql("SELECT segment FROM cutover_commits WHERE run_id = ? AND task = ?"),
        )
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
        let progress = self.progress.counter(&format!("{} {}", ctx.dag, ctx.task));
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
            for (((t, (dir, segs)), cap), &upsert) in self
                .config
                .targets
                .iter()
                .zip(&listed)
                .zip(&capacity)
                .zip(&upsert)
            {
                let Some(meta) = segs.get(&seq) else { continue };
                watermark = watermark.or(meta.watermark.map(|w| (meta.source_task.clone(), w)));
                let rows = segment::read(dir, seq).map_err(|e| from_io("reading a segment", e))?;
                offered += rows.len() as u64;
                let names: Vec<String> = meta.columns.iter().map(|(n, _)| n.clone()).collect();
                let columns: Vec<(SqlIdent, ColumnType)> = meta
                    .columns
                    .iter()
                    .map(|(n, ty)| SqlIdent::new(n).map(|n| (n, *ty)))
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        TaskError::fatal(format!(
                            "target {}: output {}: column {e}",
                            t.table(),
                            t.output
                        ))
                    })?;
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
                let (n_changed, refused) =
                    merge_batch(&mut tx, wh.backend, t, &columns, fit, upsert, &context).await?;
                changed += n_changed;
                for (row, why) in refused {
                    rejected.push(Rejected::from_row(
                        &names,
                        &row,
                        &key_idx,
                        Some(t.table().as_str()),
                        format!("task {}: {why}", ctx.task),
                    ));
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
            unchanged: false,
            rows_read: offered,
            rows_written: changed,
            rows_quarantined: quarantined,
            summary,
        })
    }
}

/// Merges one batch of rows into `target` inside the open transaction, as
/// a segment's load does: reduced to one row per key (by the strategy),
/// then written once each by a conflict-resolving insert when `upsert`
/// (see [`upserts`]), else staged and merged. Returns the rows changed and
/// the rows the database refused, with its reason; `context` names the
/// batch in an error.
///
/// # Errors
/// A statement failed for another reason than a row's data, or the
/// database refused most rows (the table is wrong, not the rows).
pub async fn merge_batch(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    target: &Target,
    columns: &[(SqlIdent, ColumnType)],
    rows: Vec<Vec<Value>>,
    upsert: bool,
    context: &str,
) -> Result<(u64, Vec<(Vec<Value>, String)>), TaskError> {
    let names: Vec<String> = columns.iter().map(|(n, _)| n.as_str().to_owned()).collect();
    let (mut changed, mut refused) = (0, Vec::new());
    let key_idx: Vec<usize> = target
        .key
        .iter()
        .filter_map(|k| names.iter().position(|n| n == k.as_str()))
        .collect();
    for mut round in reduce(target, &names, rows).map_err(|e| TaskError::fatal(e.to_string()))? {
        // In key order: concurrent loads of a shared table lock its rows in
        // the same order (no deadlock), and the index grows in order.
        round.sort_unstable_by(|a, b| {
            key_idx
                .iter()
                .map(|&i| key_order(&a[i], &b[i]))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let mut set_aside = Vec::new();
        changed += merge_isolating(
            conn,
            backend,
            target,
            columns,
            round,
            upsert,
            &mut set_aside,
        )
        .await
        .map_err(|e| e.into_task_error(context))?;
        refused.append(&mut set_aside);
    }
    Ok((changed, refused))
}

/// An order of key values: nulls, booleans, numbers, then strings by
/// their bytes.
fn key_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    let rank = |v: &Value| match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Int(_) | Value::Float(_) => 2,
        Value::Str(_) => 3,
    };
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Str(x), Value::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            let f = |v: &Value| match v {
                Value::Int(i) => *i as f64,
                Value::Float(f) => *f,
                _ => 0.0,
            };
            f(a).total_cmp(&f(b))
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Builds the task.
pub fn build(config: Config, warehouse: Warehouse, progress: Progress) -> Arc<dyn Task> {
    Arc::new(LoadMerge {
        config,
        warehouse,
        progress,
    })
}

#[cfg(test)]
mod tests;
