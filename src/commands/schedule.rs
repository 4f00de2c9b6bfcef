//! `cutover schedule`: the scheduler daemon, with the live feed beside it
//! on request.

use std::process::ExitCode;

use anyhow::{bail, Result};
use std::sync::Arc;

use workflows::daemon::{self, Settings};
use workflows::{RunOptions, Runner};

use super::{consume, env, holder, run_options, select, start_metrics, stop_on_signal, LOG_TARGET};
use crate::cli::{Global, ScheduleArgs};

/// Runs the scheduled DAGs selected, and with `--with-sqs` the feed too,
/// until a signal; then prints what each did.
///
/// # Errors
/// The DAGs do not load or are unknown, the source, warehouse, metrics
/// address or queue cannot be used, or the scheduler failed.
pub async fn command(g: &Global, args: ScheduleArgs) -> Result<ExitCode> {
    let dags = select(g, &args.names, args.names.is_empty())?;
    // Many runs in one process: tasks' progress counters stay hidden.
    let env = env(g).await?.quiet();
    start_metrics(g, &env.warehouse).await?;
    let runner = Runner::new(env.warehouse.ledger());
    let settings = Settings {
        holder: holder(),
        lease_ttl: args.lease_ttl,
        grace: args.grace,
        run: RunOptions {
            skip_unchanged: !args.no_skip,
            ..run_options(g)
        },
    };
    let consumer = match (args.with_sqs, args.queue_url) {
        (false, _) => None,
        (true, None) => {
            bail!("--with-sqs needs the queue's URL: --queue-url or CUTOVER_SQS_QUEUE_URL")
        }
        (true, Some(url)) => {
            let consumer = consume::start(
                g,
                &dags,
                &url,
                env.warehouse.clone(),
                runner.clone(),
                args.feed.settings(g, None),
            )
            .await?;
            tracing::info!(
                target: LOG_TARGET,
                consumer = consumer.id(),
                queue = %url,
                "consuming the feed beside the schedule"
            );
            Some(consumer)
        }
    };
    let (stop_tx, stop) = stop_on_signal("starting nothing more, letting running DAGs finish");
    let daemon = async {
        let ran = daemon::run(&dags, Arc::new(env), runner, settings, stop.clone()).await;
        if ran.is_err() {
            // The feed stops with the scheduler.
            let _ = stop_tx.send(true);
        }
        ran
    };
    let feed = async {
        match consumer {
            Some(c) => Some(c.run(stop.clone()).await),
            None => None,
        }
    };
    let (ran, feed) = tokio::join!(daemon, feed);
    let ran = ran?;
    println!(
        "scheduler stopped: {} runs ({} failed), {} ticks run elsewhere or skipped, {} runs interrupted",
        ran.runs, ran.failed, ran.not_ours, ran.interrupted
    );
    if let Some(t) = feed {
        println!(
            "consumer stopped: {} messages, {} events, {} poison quarantined, {} deleted, {} errors",
            t.messages, t.events, t.poison, t.deleted, t.errors
        );
    }
    Ok(ExitCode::SUCCESS)
}
