//! `verify.reconcile`: compares a fact table with the source, checking day
//! by day that the table holds exactly one row per valid distinct event up
//! to the committed watermark. A day the run's extract read whole is
//! compared with what the extract saw (its digest of the day's distinct
//! keys); any other day, and a day whose digests differ, is compared event
//! by event with the source read again through the extract's own columns.
//! On a difference it names the events that differ and fails the run.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use workflows::{
    KindInfo, Role, SettingProblem, SqlIdent, Task, TaskContext, TaskError, TaskReport,
};

use super::Scope;
use crate::error::from_sqlx;
use crate::expected::{
    day_number, is_quarantined, quarantined, source_keys, split, Seen, SourceKeys,
};
use crate::segment::read_from;
use crate::source::{Selection, Source};
use crate::warehouse::Warehouse;
use workflows::time::day_of;

/// The kind.
pub const KIND: KindInfo = KindInfo {
    name: "verify.reconcile",
    summary: "check day by day that a fact table holds exactly the valid distinct source events",
    role: Role::Verify,
    fields: || serde_aux::serde_introspection::serde_introspect::<Config>(),
};

/// The settings of a `verify.reconcile` task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `extract.mongo` task whose source and columns define the expected
    /// events.
    pub source: String,
    /// The fact table checked.
    pub table: SqlIdent,
    /// The table's event key column.
    #[serde(default = "default_key")]
    pub key: SqlIdent,
    /// The table's timestamp column (epoch ms).
    #[serde(default = "default_ts")]
    pub ts: SqlIdent,
    /// Differing events listed per day at most.
    #[serde(default = "default_show")]
    pub show: usize,
    /// Which days are compared: `all`, every day up to the watermark (the
    /// only scope that finds events that arrived later than the lookback),
    /// or `run`, the days this run's extract read (from the day it started
    /// reading), which reads far less of a large source.
    #[serde(default)]
    pub scope: Scope,
}

fn default_key() -> SqlIdent {
    SqlIdent::new("event_id").expect("valid")
}
fn default_ts() -> SqlIdent {
    SqlIdent::new("ts_ms").expect("valid")
}
fn default_show() -> usize {
    10
}

impl Config {
    /// Checks without I/O; `source_is_extract` says whether `source` names
    /// an extract task of the DAG.
    pub fn check(&self, source_is_extract: bool) -> Vec<SettingProblem> {
        if source_is_extract {
            Vec::new()
        } else {
            vec![SettingProblem::field(
                "source",
                format!("`{}` is not an extract task of this DAG", self.source),
            )]
        }
    }
}

/// The task.
pub struct Reconcile {
    /// Its settings.
    pub config: Config,
    /// What the source task reads.
    pub extract: Selection,
    /// The source.
    pub source: Source,
    /// The warehouse.
    pub warehouse: Warehouse,
}

impl Reconcile {
    async fn table_keys(
        &self,
        from_ms: Option<i64>,
        until_ms: i64,
    ) -> Result<Vec<(String, i64)>, TaskError> {
        let wh = &self.warehouse;
        let mut m = wh.backend.markers();
        let sql = format!(
            "SELECT {k}, {t} FROM {tbl} WHERE {t} >= {p1} AND {t} < {p2}",
            k = wh.q(&self.config.key),
            t = wh.q(&self.config.ts),
            tbl = wh.q(&self.config.table),
            p1 = m.next(),
            p2 = m.next()
        );
        let rows = sqlx::query(&sql)
            .bind(from_ms.unwrap_or(i64::MIN / 2))
            .bind(until_ms)
            .fetch_all(&wh.pool)
            .await
            .map_err(|e| from_sqlx(format!("reading {}", self.config.table), e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let key: String = r.try_get(0).map_err(|e| from_sqlx("reading a key", e))?;
            let ts: i64 = r
                .try_get(1)
                .map_err(|e| from_sqlx("reading a timestamp", e))?;
            out.push((key, ts));
        }
        Ok(out)
    }
}

#[async_trait]
impl Task for Reconcile {
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
        let until = watermark + 1;
        // Whole days: from the start of the day the run's extract began at.
        let extract_dir = ctx.output_dir(&self.config.source);
        let read = read_from(&extract_dir);
        let from = self.config.scope.first_day(read.as_ref());
        let wh = &self.warehouse;
        let (split, table_rows) = split(
            read.and_then(|_| Seen::read(&extract_dir)),
            wh,
            &wh.q(&self.config.table),
            &wh.q(&self.config.key),
            &wh.q(&self.config.ts),
            from,
            until,
        )
        .await?;
        let (source, read_count, table) = if split.needs_source(from) {
            // An event stored after the extract began (ObjectId times have
            // second precision) may or may not be loaded yet: it is left
            // out of the comparison on both sides, and the next run checks
            // it.
            let arrived = read.map(|r| r.started_ms - 1_000);
            let until = split.source_until(until);
            let keep = |day: i64| split.exact(day);
            let SourceKeys { read, days, during } =
                source_keys(&self.source, &self.extract, from, until, arrived, &keep).await?;
            let mut table = self.table_keys(from, until).await?;
            table.retain(|(k, ts)| {
                split.exact(day_number(*ts)) && !during.contains(k) && !split.during.contains(k)
            });
            let mut days = days;
            for keys in days.values_mut() {
                keys.retain(|k| !during.contains(k) && !split.during.contains(k));
            }
            (days, read, table)
        } else {
            (Default::default(), 0, Vec::new())
        };
        let quarantined = quarantined(&self.warehouse, &ctx.dag).await?;
        let mut explained = 0u64;
        let mut table_days: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut duplicates = 0u64;
        for (key, ts) in &table {
            if !table_days
                .entry(day_of(*ts))
                .or_default()
                .insert(key.clone())
            {
                duplicates += 1;
            }
        }
        let all_days: BTreeSet<&String> = source.keys().chain(table_days.keys()).collect();
        let mut problems = Vec::new();
        let expected =
            source.values().map(HashSet::len).sum::<usize>() as u64 + split.agreed_events;
        for day in all_days {
            let empty_s = HashSet::new();
            let empty_t = BTreeSet::new();
            let s = source.get(day).unwrap_or(&empty_s);
            let t = table_days.get(day).unwrap_or(&empty_t);
            if s.len() == t.len() && t.iter().all(|k| s.contains(k)) {
                continue;
            }
            // An event the DAG quarantined (the warehouse cannot hold it) is
            // a known difference: it is named in the quarantine, not here.
            let mut missing: Vec<&String> = s
                .iter()
                .filter(|k| !t.contains(*k))
                .filter(|k| {
                    let q = is_quarantined(&quarantined, k);
                    explained += u64::from(q);
                    !q
                })
                .collect();
            missing.sort();
            let extra_any = t.iter().any(|k| !s.contains(k));
            if missing.is_empty() && !extra_any {
                continue;
            }
            let extra: Vec<&String> = t.iter().filter(|k| !s.contains(*k)).collect();
            let show = |v: &[&String]| {
                v.iter()
                    .take(self.config.show)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if v.len() > self.config.show {
                        ", ..."
                    } else {
                        ""
                    }
            };
            let mut line = format!(
                "{day}: source {} events, {} {} rows",
                s.len(),
                self.config.table,
                t.len()
            );
            if !missing.is_empty() {
                line.push_str(&format!("; missing from the table: {}", show(&missing)));
            }
            if !extra.is_empty() {
                line.push_str(&format!(
                    "; not valid events in the source: {}",
                    show(&extra)
                ));
            }
            problems.push(line);
        }
        if duplicates > 0 {
            problems.push(format!(
                "{} holds {duplicates} duplicate keys",
                self.config.table
            ));
        }
        if problems.is_empty() {
            Ok(TaskReport {
                unchanged: false,
                rows_read: read_count + table.len() as u64 + table_rows,
                rows_written: 0,
                rows_quarantined: 0,
                summary: format!(
                    "{} matches the source: {expected} events over {} days {}up to {}{}{}",
                    self.config.table,
                    source.len() + split.agreed_days,
                    from.map_or_else(String::new, |f| format!("from {} ", day_of(f))),
                    workflows::time::format_ms(watermark),
                    if split.agreed_days > 0 {
                        format!(
                            " ({} days against the extract's digests, {} read again)",
                            split.agreed_days,
                            source.len()
                        )
                    } else {
                        String::new()
                    },
                    if explained > 0 {
                        format!(", but for {explained} events the DAG quarantined (`cutover quarantine list --dag {}`)", ctx.dag)
                    } else {
                        String::new()
                    }
                ),
            })
        } else {
            Err(TaskError::fatal(format!(
                "{} differs from the source on {} day(s):\n  {}",
                self.config.table,
                problems.len(),
                problems.join("\n  ")
            )))
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
    Arc::new(Reconcile {
        config,
        extract,
        source,
        warehouse,
    })
}
