//! One DAG's run over the events of a micro-batch, and the halving that
//! finds the events that make it fail.

use std::sync::Arc;

use bson::Document;
use workflows::{Dag, RunOptions, RunState, Runner};

use crate::kinds::{Env, TaskKind};
use crate::quarantine::{self, Rejected};
use crate::source::Source;
use crate::warehouse::Warehouse;

/// One DAG's run over the events of a micro-batch.
pub(super) struct FeedRun {
    pub(super) consumer: String,
    pub(super) dag: Dag<TaskKind>,
    pub(super) warehouse: Warehouse,
    pub(super) runner: Runner,
    pub(super) opts: RunOptions,
}

/// How a DAG's part of a micro-batch ended.
#[derive(Debug)]
pub(super) enum FeedResult {
    /// Every event was committed or quarantined.
    Committed,
    /// A run failed for a reason that may pass: try the messages again.
    Retry,
}

/// What [`FeedRun::run_isolating`] did.
#[derive(Debug)]
pub(super) struct FeedOutcome {
    /// How it ended.
    pub(super) result: FeedResult,
    /// Events quarantined because they alone made a run fail.
    pub(super) isolated: u64,
    /// The failures seen on the way.
    pub(super) errors: Vec<String>,
}

/// Why a run did not succeed, and whether that may pass.
pub(super) fn failure(
    result: &Result<workflows::RunSummary, workflows::runner::RunError>,
) -> Option<(String, bool)> {
    match result {
        Ok(summary) if matches!(summary.state, RunState::Succeeded) => None,
        Ok(summary) => {
            let (why, retryable) = summary
                .first_failure()
                .map(|f| (format!("run {}: {f}", summary.run_id), f.retryable))
                .unwrap_or_else(|| {
                    (
                        format!("run {}: {}", summary.run_id, summary.state.status()),
                        true,
                    )
                });
            Some((why, retryable))
        }
        Err(e) => Some((e.to_string(), true)),
    }
}

impl FeedRun {
    pub(super) async fn run(
        &self,
        docs: Vec<Document>,
    ) -> Result<workflows::RunSummary, workflows::runner::RunError> {
        let env = Env::new(Source::Feed(Arc::new(docs)), self.warehouse.clone()).quiet();
        let tasks = env.tasks(&self.dag);
        self.runner.run(&self.dag, tasks, &self.opts).await
    }

    /// Runs the DAG over `docs` (each with its message's index; `ids` are
    /// the message ids, in the same order); when a run fails for its data,
    /// runs the halves, down to single events, which are quarantined.
    pub(super) async fn run_isolating(
        &self,
        docs: Vec<(usize, Document)>,
        ids: Vec<String>,
    ) -> FeedOutcome {
        let mut out = FeedOutcome {
            result: FeedResult::Committed,
            isolated: 0,
            errors: Vec::new(),
        };
        // A failure that is not about single events (a table missing, a
        // setting wrong) would fail every part: past this many events set
        // aside, stop and let the messages come back instead.
        let limit = (docs.len() / 10).max(3);
        let (key, type_field) = self
            .dag
            .tasks
            .iter()
            .find_map(|t| {
                t.kind
                    .extract()
                    .map(|c| (c.key.clone(), c.type_field.clone()))
            })
            .unwrap_or_else(|| ("event_id".into(), "type".into()));
        let mut breaking: Vec<Rejected> = Vec::new();
        let mut checked_empty = false;
        let mut todo: Vec<Vec<(Document, String)>> =
            vec![docs.into_iter().map(|(_, d)| d).zip(ids).collect()];
        while let Some(part) = todo.pop() {
            let result = self
                .run(part.iter().map(|(d, _)| d.clone()).collect())
                .await;
            let Some((why, retryable)) = failure(&result) else {
                continue;
            };
            out.errors.push(why.clone());
            if retryable {
                out.result = FeedResult::Retry;
                return out;
            }
            // A run that fails without any event fails for its settings or
            // its tables, not for the data: no event is to blame.
            if !checked_empty {
                checked_empty = true;
                if let Some((empty_why, _)) = failure(&self.run(Vec::new()).await) {
                    out.errors.push(format!(
                        "the DAG fails even without events ({empty_why}); the messages come back"
                    ));
                    out.result = FeedResult::Retry;
                    return out;
                }
            }
            if breaking.len() >= limit {
                out.errors.push(format!(
                    "more than {limit} events each fail the run alone: not a problem of single events; the messages come back"
                ));
                out.result = FeedResult::Retry;
                return out;
            }
            if part.len() == 1 {
                let (doc, id) = &part[0];
                breaking.push(Rejected::from_doc(
                    doc,
                    &key,
                    &type_field,
                    format!(
                        "the run of dag {} failed on this event alone: {why}",
                        self.dag.name
                    ),
                    Some(&format!("message {id}")),
                ));
            } else {
                tracing::warn!(dag = %self.dag.name, events = part.len(), error = %why, "a run failed on its data; running halves to find the events that break it");
                let mut left = part;
                let right = left.split_off(left.len() / 2);
                todo.push(right);
                todo.push(left);
            }
        }
        // Only now that the rest committed are the breaking events set
        // aside (a batch that comes back is searched again).
        match quarantine::write(
            &self.warehouse,
            &self.dag.name,
            super::FEED_TASK,
            &self.consumer,
            &breaking,
        )
        .await
        {
            Ok(()) => out.isolated = breaking.len() as u64,
            Err(e) => {
                out.errors
                    .push(format!("quarantining the events that break the run: {e}"));
                out.result = FeedResult::Retry;
            }
        }
        out
    }
}
