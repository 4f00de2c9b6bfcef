//! Comparisons off the response path: a read answered by one side is
//! queued with its answer, and a worker computes the other side and
//! compares the two under the reconciliation rules. The queue is bounded:
//! a comparison that finds no room is dropped and counted, never waited
//! for. A mismatch is recorded with the request and the differing rows.

use std::sync::Arc;

use tasks::flags::store::{self, Counts, Mismatch};
use tasks::flags::{Side, State as FlagState};
use tasks::reconciliation::differing_rows;
use tasks::reports::Report;
use tokio::sync::{mpsc, Mutex};
use workflows::metrics::metrics;

use super::reports::Read;
use super::App;
use crate::commands::LOG_TARGET;

/// Differing rows kept with a mismatch.
const SAMPLE: usize = 20;

/// A read to compare.
pub struct Job {
    /// The data point.
    pub point: String,
    /// The read.
    pub read: Read,
    /// Its targeting key.
    pub key: String,
    /// The side that answered.
    pub answered: Side,
    /// Its answer.
    pub answer: Report,
}

fn outcome(point: &str, outcome: &str) {
    metrics()
        .shadow_comparisons
        .get_or_create(&vec![
            ("data_point", point.to_owned()),
            ("outcome", outcome.to_owned()),
        ])
        .inc();
}

impl App {
    /// Queues a comparison, or drops and counts it when the queue is full.
    pub fn enqueue(&self, job: Job) {
        if let Err(e) = self.shadow.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            outcome(&job.point, "dropped");
        }
    }

    async fn compare(&self, job: Job) {
        let other = match job.answered {
            Side::Legacy => Side::Warehouse,
            Side::Warehouse => Side::Legacy,
        };
        // A data point retired since the read was queued: the legacy
        // analytics are not called any more.
        if other == Side::Legacy
            && self
                .flag(&job.point)
                .is_some_and(|f| f.state == FlagState::Retired)
        {
            outcome(&job.point, "skipped");
            return;
        }
        let theirs = match self.compute(&job.read, other).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target: LOG_TARGET, data_point = %job.point, report = job.read.report.name(), error = %workflows::redact::redact(&e), "a shadow comparison could not be made");
                outcome(&job.point, "failed");
                return;
            }
        };
        let (legacy, warehouse) = match job.answered {
            Side::Legacy => (&job.answer, &theirs),
            Side::Warehouse => (&theirs, &job.answer),
        };
        let diffs = differing_rows(legacy, warehouse);
        let mismatched = !diffs.is_empty();
        self.count(
            &job.point,
            Counts {
                comparisons: 1,
                mismatches: u64::from(mismatched),
                ..Counts::default()
            },
        );
        outcome(&job.point, if mismatched { "mismatch" } else { "equal" });
        if !mismatched {
            return;
        }
        let m = Mismatch {
            data_point: job.point.clone(),
            report: job.read.report.name().to_owned(),
            seen_at: workflows::time::timestamp(chrono::Utc::now()),
            request: job.read.describe(&job.key, job.answered),
            rows_differing: diffs.len() as u64,
            differences: serde_json::json!({
                "columns": legacy.columns,
                "groups": legacy.groups,
                "rows": diffs.iter().take(SAMPLE).collect::<Vec<_>>(),
            }),
        };
        tracing::warn!(target: LOG_TARGET, data_point = %job.point, report = job.read.report.name(), rows_differing = diffs.len(), "shadow read mismatched");
        if let Err(e) = store::record_mismatch(&self.wh, &m).await {
            tracing::warn!(target: LOG_TARGET, error = %workflows::redact::redact(&workflows::redact::chain(&e)), "could not record a shadow mismatch (it is counted)");
        }
    }
}

/// Starts the workers that make the comparisons.
pub fn start(app: Arc<App>, rx: mpsc::Receiver<Job>, workers: usize) {
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..workers {
        let (app, rx) = (Arc::clone(&app), Arc::clone(&rx));
        tokio::spawn(async move {
            loop {
                let Some(job) = rx.lock().await.recv().await else {
                    return;
                };
                app.compare(job).await;
            }
        });
    }
}
