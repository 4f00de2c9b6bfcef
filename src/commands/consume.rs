//! `cutover consume`: the live feed from SQS into the warehouse.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use tasks::consume::{self, Consumer, Queue};
use tasks::kinds::TaskKind;
use tasks::Warehouse;
use workflows::dag::Dag;
use workflows::Runner;

use super::{load_dags, run_options, select, start_metrics, stop_on_signal, warehouse, LOG_TARGET};
use crate::cli::{ConsumeArgs, FeedArgs, Global};

/// Consumes the queue for the DAGs selected until a signal or, with
/// `--until-idle`, until the queue stays empty, then prints the totals.
///
/// # Errors
/// The DAGs do not load or are unknown, or the warehouse, the metrics
/// address or the queue cannot be used.
pub async fn command(g: &Global, args: ConsumeArgs) -> Result<ExitCode> {
    let dags = select(g, &args.names, args.names.is_empty())?;
    let settings = args.feed.settings(g, args.until_idle);
    let wh = warehouse(g).await?;
    start_metrics(g, &wh).await?;
    let runner = Runner::new(wh.ledger());
    let consumer = start(g, &dags, &args.queue_url, wh, runner, settings).await?;
    let (_, stop) = stop_on_signal("finishing the messages held, then exiting");
    tracing::info!(
        target: LOG_TARGET,
        consumer = consumer.id(),
        queue = args.queue_url.as_str(),
        "consuming"
    );
    let t = consumer.run(stop).await;
    println!(
        "consumed {} messages ({} redelivered): {} events, {} poison quarantined, {} deleted, {} left for consumers of other DAGs, {} of types no DAG takes, {} events quarantined for breaking a run, {} micro-batches ({} with a failed DAG), {} errors",
        t.messages, t.redelivered, t.events, t.poison, t.deleted, t.left_for_others, t.ignored, t.isolated, t.batches, t.failed_batches, t.errors
    );
    Ok(ExitCode::SUCCESS)
}

/// A consumer of the queue at `queue_url` for `dags`, which leaves the
/// events of the other DAGs in the DAG directory to their consumers.
///
/// # Errors
/// The DAGs do not load, or the consumer cannot start.
pub async fn start(
    g: &Global,
    dags: &[Dag<TaskKind>],
    queue_url: &str,
    wh: Warehouse,
    runner: Runner,
    settings: consume::Settings,
) -> Result<Consumer> {
    let queue = Queue::from_env(queue_url).await;
    let all = load_dags(&g.dags)?;
    Consumer::new(queue, dags, &all, wh, runner, settings)
        .await
        .context("cannot start consuming")
}

impl FeedArgs {
    /// The consumer's settings from these flags.
    pub fn settings(&self, g: &Global, until_idle: Option<u64>) -> consume::Settings {
        consume::Settings {
            receivers: self.receivers,
            batch_messages: self.batch_messages,
            batch_age: self.batch_age,
            wait: Duration::from_secs(self.wait),
            visibility: self.visibility_timeout.map(Duration::from_secs),
            until_idle: until_idle.map(Duration::from_secs),
            run: run_options(g),
        }
    }
}
