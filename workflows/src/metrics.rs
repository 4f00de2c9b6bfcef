//! The process's metrics, for Prometheus: what the runner measures as runs
//! go (task durations, rows, finished runs), and gauges that the metrics
//! endpoint refreshes from the warehouse before each scrape (runs by state,
//! watermark lag, consumer lag), so that every process sharing a warehouse
//! reports the same view of it.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::task::TaskReport;

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;

type Hist = fn() -> Histogram;

/// The metrics of this process.
pub struct Metrics {
    registry: Mutex<Registry>,
    runs_finished: Family<Labels, Counter>,
    task_seconds: Family<Labels, Histogram, Hist>,
    rows: Family<Labels, Counter>,
    /// Runs in the ledger by DAG and state (refreshed before each scrape).
    pub runs: Family<Labels, Gauge>,
    /// Seconds between now and each extract's watermark (refreshed).
    pub watermark_lag: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Age in seconds of the oldest message of each consumer's last batch
    /// (refreshed).
    pub consumer_lag: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Report reads served, by report, source and HTTP status.
    pub report_requests: Family<Labels, Counter>,
    /// Seconds to answer a report read, by report and source.
    pub report_seconds: Family<Labels, Histogram, Hist>,
    /// Legacy computations made (answers and comparisons), by report: what
    /// retiring a data point brings to zero.
    pub legacy_computations: Family<Labels, Counter>,
    /// Shadow comparisons by data point and outcome (equal, mismatch,
    /// dropped when the queue was full, failed when a side could not be
    /// read).
    pub shadow_comparisons: Family<Labels, Counter>,
    /// OpenFeature evaluations by flag and value.
    pub flag_evaluations: Family<Labels, Counter>,
    /// Each data point's flag: 1 for its state, 0 for the others.
    pub flag_state: Family<Labels, Gauge>,
    /// Each data point's rollout share, in percent.
    pub flag_rollout: Family<Labels, Gauge>,
}

fn request_buckets() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn task_buckets() -> Histogram {
    // 10 ms to about 45 min.
    Histogram::new(exponential_buckets(0.01, 2.0, 19))
}

/// The metrics of this process.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("cutover")),
            runs_finished: Family::default(),
            task_seconds: Family::new_with_constructor(task_buckets as Hist),
            rows: Family::default(),
            runs: Family::default(),
            watermark_lag: Family::default(),
            consumer_lag: Family::default(),
            report_requests: Family::default(),
            report_seconds: Family::new_with_constructor(request_buckets as Hist),
            legacy_computations: Family::default(),
            shadow_comparisons: Family::default(),
            flag_evaluations: Family::default(),
            flag_state: Family::default(),
            flag_rollout: Family::default(),
        };
        {
            let mut r = m.registry.lock().expect("metrics registry");
            r.register(
                "runs_finished",
                "Runs this process finished, by DAG, trigger and state",
                m.runs_finished.clone(),
            );
            r.register(
                "task_duration_seconds",
                "Duration of task attempts run by this process, by DAG, task and state",
                m.task_seconds.clone(),
            );
            r.register(
                "rows",
                "Rows read, written and quarantined by this process's tasks, by DAG, task and kind",
                m.rows.clone(),
            );
            r.register(
                "runs",
                "Runs in the warehouse's ledger, by DAG and state",
                m.runs.clone(),
            );
            r.register(
                "watermark_lag_seconds",
                "Seconds between now and each extract's committed watermark",
                m.watermark_lag.clone(),
            );
            r.register(
                "consumer_lag_seconds",
                "Age of the oldest message of each feed consumer's last batch",
                m.consumer_lag.clone(),
            );
            r.register(
                "report_requests",
                "Report reads served, by report, source and HTTP status",
                m.report_requests.clone(),
            );
            r.register(
                "report_duration_seconds",
                "Time to answer a report read, by report and source",
                m.report_seconds.clone(),
            );
            r.register(
                "legacy_computations",
                "Legacy report computations made, to answer or to compare, by report",
                m.legacy_computations.clone(),
            );
            r.register(
                "shadow_comparisons",
                "Shadow comparisons by data point and outcome (equal, mismatch, dropped, failed)",
                m.shadow_comparisons.clone(),
            );
            r.register(
                "flag_evaluations",
                "OpenFeature (OFREP) evaluations by flag and value",
                m.flag_evaluations.clone(),
            );
            r.register(
                "flag_state",
                "Each data point's cutover flag: 1 for its state",
                m.flag_state.clone(),
            );
            r.register(
                "flag_rollout_percent",
                "Each data point's warehouse rollout share",
                m.flag_rollout.clone(),
            );
        }
        m
    })
}

impl Metrics {
    /// Records a task attempt's end.
    pub fn task_ended(
        &self,
        dag: &str,
        task: &str,
        state: crate::AttemptStatus,
        took: Duration,
        report: Option<&TaskReport>,
    ) {
        self.task_seconds
            .get_or_create(&vec![
                ("dag", dag.to_owned()),
                ("task", task.to_owned()),
                ("state", state.as_str().to_owned()),
            ])
            .observe(took.as_secs_f64());
        if let Some(r) = report {
            for (kind, n) in [
                ("read", r.rows_read),
                ("written", r.rows_written),
                ("quarantined", r.rows_quarantined),
            ] {
                self.rows
                    .get_or_create(&vec![
                        ("dag", dag.to_owned()),
                        ("task", task.to_owned()),
                        ("kind", kind.to_owned()),
                    ])
                    .inc_by(n);
            }
        }
    }

    /// Records a run's end.
    pub fn run_ended(&self, dag: &str, trigger: crate::Trigger, state: crate::RunStatus) {
        self.runs_finished
            .get_or_create(&vec![
                ("dag", dag.to_owned()),
                ("trigger", trigger.as_str().to_owned()),
                ("state", state.as_str().to_owned()),
            ])
            .inc();
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry");
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_encodes() {
        let m = metrics();
        m.run_ended(
            "views",
            crate::Trigger::Schedule,
            crate::RunStatus::Succeeded,
        );
        m.task_ended(
            "views",
            "load",
            crate::AttemptStatus::Succeeded,
            Duration::from_millis(1500),
            Some(&TaskReport {
                unchanged: false,
                rows_read: 10,
                rows_written: 8,
                rows_quarantined: 2,
                summary: String::new(),
            }),
        );
        let text = m.encode();
        assert!(
            text.contains(
                r#"cutover_runs_finished_total{dag="views",trigger="schedule",state="succeeded"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"cutover_rows_total{dag="views",task="load",kind="quarantined"} 2"#)
        );
        assert!(text.contains(
            r#"cutover_task_duration_seconds_count{dag="views",task="load",state="succeeded"} 1"#
        ));
    }
}
