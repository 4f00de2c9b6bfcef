//! Replaying the quarantine (`cutover quarantine replay`): once the cause
//! of a quarantine is fixed (a DAG's columns widened or its rules changed,
//! a warehouse column altered), the documents set aside are run through
//! their DAG again, as a batch of the live feed is: extract, transform and
//! load, without verify, recorded as runs of trigger `replay`. A document
//! that now loads leaves the quarantine; one set aside again stays, with
//! the new reason.
//!
//! The documents come from the quarantine's raw form when an extract (or
//! the feed) set them aside; rows a transform or a load set aside are
//! looked up again in the source by their `_id`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bson::oid::ObjectId;
use bson::Document;
use workflows::{Dag, RunOptions, RunState, Runner, TaskKinds, Trigger};

use crate::kinds::{Env, TaskKind};
use crate::quarantine::{self, Filter, Raw, Stored};
use crate::source::{parse_line, Source};

/// What a replay did, per DAG.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Replayed {
    /// The DAG.
    pub dag: String,
    /// The replay's run, when one ran.
    pub run_id: Option<String>,
    /// Quarantine rows taken.
    pub rows: usize,
    /// Documents run through the DAG.
    pub documents: usize,
    /// Rows that left the quarantine (their document now loads).
    pub released: u64,
    /// Rows that could not be replayed, with why.
    pub skipped: Vec<(String, String)>,
    /// Why the run failed, when it did.
    pub error: Option<String>,
}

/// Replays the quarantine rows `filter` selects, DAG by DAG.
///
/// # Errors
/// The quarantine or the source could not be read.
pub async fn replay(
    dags: &[Dag<TaskKind>],
    env: &Env,
    runner: &Runner,
    opts: &RunOptions,
    filter: &Filter,
) -> Result<Vec<Replayed>, crate::error::Context> {
    let rows = quarantine::list(&env.warehouse, filter)
        .await
        .map_err(|e| crate::error::Context::new("reading the quarantine", e))?;
    let mut by_dag: BTreeMap<String, Vec<Stored>> = BTreeMap::new();
    for r in rows {
        by_dag.entry(r.dag.clone()).or_default().push(r);
    }
    let mut out = Vec::new();
    for (name, rows) in by_dag {
        let mut report = Replayed {
            dag: name.clone(),
            rows: rows.len(),
            ..Replayed::default()
        };
        let Some(dag) = dags
            .iter()
            .find(|d| d.name == name)
            .and_then(Dag::without_verify)
        else {
            for r in &rows {
                report.skipped.push((
                    r.doc_id.clone(),
                    format!("no DAG named {name} reads events in the DAG folder"),
                ));
            }
            out.push(report);
            continue;
        };
        let mut docs: BTreeMap<String, Document> = BTreeMap::new();
        let mut wanted: Vec<(String, ObjectId)> = Vec::new();
        for r in &rows {
            let from_extract = r.task == crate::consume::FEED_TASK
                || dag
                    .task(&r.task)
                    .is_some_and(|t| t.kind.role() == workflows::Role::Extract);
            if from_extract {
                match r.raw() {
                    Raw::Json(text) | Raw::Text(text) => match parse_line(&text) {
                        Ok(d) => {
                            docs.insert(r.doc_id.clone(), d);
                        }
                        Err(why) => report
                            .skipped
                            .push((r.doc_id.clone(), format!("still not a document: {why}"))),
                    },
                    Raw::Bytes(_) => report.skipped.push((
                        r.doc_id.clone(),
                        "still not a document: its bytes are not UTF-8".into(),
                    )),
                }
            } else {
                match ObjectId::parse_str(&r.doc_id) {
                    Ok(oid) => wanted.push((r.doc_id.clone(), oid)),
                    Err(_) => report.skipped.push((
                        r.doc_id.clone(),
                        format!(
                            "task {} set aside a row that names no source document",
                            r.task
                        ),
                    )),
                }
            }
        }
        if !wanted.is_empty() {
            let (database, collection) = dag
                .tasks
                .iter()
                .find_map(|t| {
                    t.kind
                        .extract()
                        .map(|c| (c.database.clone(), c.collection.clone()))
                })
                .unwrap_or_else(|| ("app".into(), "events".into()));
            let ids: Vec<ObjectId> = wanted.iter().map(|(_, o)| *o).collect();
            let found = env
                .source
                .by_ids(&database, &collection, &ids)
                .await
                .map_err(|e| crate::error::Context::new("reading the source", e))?;
            for (doc_id, oid) in &wanted {
                match found
                    .iter()
                    .find(|d| d.get_object_id("_id").ok() == Some(*oid))
                {
                    Some(d) => {
                        docs.insert(doc_id.clone(), d.clone());
                    }
                    None => report.skipped.push((
                        doc_id.clone(),
                        "the source no longer holds this document".into(),
                    )),
                }
            }
        }
        report.documents = docs.len();
        if docs.is_empty() {
            out.push(report);
            continue;
        }
        let run_env = Env::new(
            Source::Feed(Arc::new(docs.values().cloned().collect())),
            env.warehouse.clone(),
        )
        .quiet();
        let mut opts = opts.clone();
        opts.trigger = Trigger::Replay;
        match runner.run(&dag, run_env.tasks(&dag), &opts).await {
            Ok(summary) => {
                report.run_id = Some(summary.run_id.clone());
                if summary.state == RunState::Succeeded {
                    let mut tasks: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                    for r in &rows {
                        if docs.contains_key(&r.doc_id) {
                            tasks
                                .entry(r.task.as_str())
                                .or_default()
                                .push(r.doc_id.clone());
                        }
                    }
                    for (task, ids) in tasks {
                        let ids: Vec<String> = ids
                            .into_iter()
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect();
                        report.released +=
                            quarantine::release(&env.warehouse, &name, task, &ids, &summary.run_id)
                                .await
                                .map_err(|e| {
                                    crate::error::Context::new("updating the quarantine", e)
                                })?;
                    }
                } else {
                    report.error = summary.first_error();
                }
            }
            Err(e) => report.error = Some(e.to_string()),
        }
        out.push(report);
    }
    Ok(out)
}
