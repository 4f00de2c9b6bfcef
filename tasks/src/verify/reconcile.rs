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
use workflows::{
    KindInfo, Role, SettingProblem, SqlIdent, Task, TaskContext, TaskError, TaskReport,
};

use super::Scope;
use crate::error::from_sqlx;
use crate::expected::{exact_days, is_quarantined, quarantined, split, Exact, Seen, TableRange};
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
        let (table, key, ts) = (
            wh.q(&self.config.table),
            wh.q(&self.config.key),
            wh.q(&self.config.ts),
        );
        let range = TableRange {
            table: &table,
            key_sql: &key,
            ts: &ts,
            from_ms: from,
            until_ms: until,
        };
        let (split, table_rows) =
            split(read.and_then(|_| Seen::read(&extract_dir)), wh, range).await?;
        let arrived = read.map(|r| r.started_ms - 1_000);
        let Exact {
            read: read_count,
            source,
            table,
        } = exact_days(&self.source, &self.extract, wh, range, &split, arrived).await?;
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
