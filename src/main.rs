//! The `cutover` command line: parses arguments, wires the engine
//! (`workflows`) to the task kinds (`tasks`) and prints results.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tasks::consume;
use tasks::kinds::{build_tasks, Env, TaskKind};
use tasks::reports::{self, Format, Range, ReportName};
use tasks::seed::{self, SeedOptions};
use tasks::source::Source;
use tasks::Warehouse;
use workflows::dag::{self, Dag};
use workflows::{RunOptions, RunState, Runner, TaskKinds, TaskState};

/// cutover loads an event-sourced MongoDB collection into a star-schema
/// warehouse (SQLite, MySQL/MariaDB, PostgreSQL) from declarative DAG files:
/// extract incrementally by a watermark, transform with Polars SQL, merge
/// idempotently, and verify against the source.
///
/// With no configuration it reads the events file `.cutover/events.jsonl`
/// and writes the SQLite warehouse `.cutover/warehouse.db`; `cutover demo`
/// sets both up and runs everything.
#[derive(Debug, Parser)]
#[command(name = "cutover", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// The event source: an events file (mongoexport form, Extended JSON) or
    /// a `mongodb://` URL.
    #[arg(
        long,
        global = true,
        env = "CUTOVER_SOURCE_URL",
        hide_env_values = true,
        default_value = ".cutover/events.jsonl"
    )]
    source_url: String,
    /// The warehouse: `sqlite:PATH`, `mysql://...` (MariaDB too) or
    /// `postgres://...`.
    #[arg(
        long,
        global = true,
        env = "CUTOVER_WAREHOUSE_URL",
        hide_env_values = true,
        default_value = "sqlite:.cutover/warehouse.db"
    )]
    warehouse_url: String,
    /// The directory holding the DAG files.
    #[arg(long, global = true, env = "CUTOVER_DAGS", default_value = "dags")]
    dags: PathBuf,
    /// Where runs keep their intermediate segment files.
    #[arg(
        long,
        global = true,
        env = "CUTOVER_WORK_DIR",
        default_value = ".cutover/work"
    )]
    work_dir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics while a long command
    /// (run, schedule, consume, backfill) runs, e.g. 127.0.0.1:9187.
    #[arg(long, global = true, env = "CUTOVER_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Log line format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log more (-v: debug, -vv: trace); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and check DAG files.
    #[command(subcommand)]
    Dags(DagsCommand),
    /// Run DAGs now: tasks in dependency order, independent ones at once.
    Run {
        /// The DAGs to run, by name.
        #[arg(value_name = "DAG")]
        names: Vec<String>,
        /// Run every DAG in the DAG directory: each after the DAGs its
        /// `after` names (the dimensions before the facts), otherwise in
        /// file-name order.
        #[arg(long, conflicts_with = "names")]
        all: bool,
        /// Show what would run and from which watermark, without running.
        #[arg(long)]
        dry_run: bool,
        /// Keep the run's segment files after success.
        #[arg(long)]
        keep_work: bool,
    },
    /// List recorded runs, newest first.
    Runs {
        /// Only runs of this DAG.
        #[arg(long)]
        dag: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// First record runs still `running` whose process is gone (killed,
        /// crashed: on this host a dead pid, elsewhere no heartbeat for 2
        /// minutes) as interrupted. Every run does this for its own DAG.
        #[arg(long)]
        sweep: bool,
    },
    /// Inspect the quarantine (documents and rows set aside, with why and
    /// where), and replay it once the cause is fixed.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Consume the live event feed from an SQS queue into the warehouse, through
    /// the DAGs' own extract, transform and load tasks (not their verify
    /// tasks), in micro-batches.
    ///
    /// Each message body is one event as MongoDB Extended JSON. A message is
    /// deleted only after every DAG that takes its event has committed it;
    /// until then it is kept invisible. Bodies that are not events are
    /// quarantined (DAG `(sqs)`) and deleted. If the warehouse fails, the
    /// messages come back after the visibility timeout (and, past the queue's
    /// redrive policy, go to its dead-letter queue). AWS settings come from the
    /// standard chain: AWS_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a
    /// profile, and AWS_ENDPOINT_URL for an SQS-compatible server.
    ///
    /// Runs until SIGINT/SIGTERM (then finishes what it holds), or with
    /// --until-idle until the queue has been empty that long.
    Consume {
        /// The DAGs to feed, by name; every DAG that reads events when none.
        #[arg(value_name = "DAG")]
        names: Vec<String>,
        /// The queue's URL.
        #[arg(long, env = "CUTOVER_SQS_QUEUE_URL", hide_env_values = true)]
        queue_url: String,
        /// Exit once no message has arrived for this many seconds.
        #[arg(long, value_name = "SECS")]
        until_idle: Option<u64>,
        #[command(flatten)]
        feed: FeedArgs,
    },
    /// Run every DAG that has a [schedule] on its cron schedule, in its time
    /// zone, until SIGINT/SIGTERM.
    ///
    /// Several daemons may share a warehouse: each schedule tick is claimed
    /// by one of them (a lease in the warehouse with a fencing token, renewed
    /// while the run goes on), so each tick runs once, a DAG still running is
    /// never overlapped (its next tick is skipped), and a daemon that lost its
    /// lease cannot commit. On SIGINT/SIGTERM it starts nothing more and lets
    /// running DAGs finish for the grace period; runs still going then are
    /// interrupted and the next run recovers.
    Schedule {
        /// The DAGs to schedule, by name; every scheduled DAG when none.
        #[arg(value_name = "DAG")]
        names: Vec<String>,
        /// How long a claimed lease lasts unless renewed (renewed every
        /// third); at least 3s.
        #[arg(long, default_value = "30s", value_parser = at_least_3s)]
        lease_ttl: Duration,
        /// How long running DAGs may take to finish after SIGINT/SIGTERM.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Also consume the live feed from SQS in this process, as `cutover
        /// consume` does, sharing the warehouse connections and the ledger.
        #[arg(long)]
        with_sqs: bool,
        /// The queue's URL, with --with-sqs.
        #[arg(long, env = "CUTOVER_SQS_QUEUE_URL", hide_env_values = true)]
        queue_url: Option<String>,
        #[command(flatten)]
        feed: FeedArgs,
    },
    /// Load a range of event time again through a DAG's extract, transform
    /// and load (not its verify tasks), in chunks.
    ///
    /// Each chunk is its own run (trigger `backfill`, its tick the chunk's
    /// start) and reads only its window; a backfill never moves a watermark,
    /// so it can run beside the scheduler. The chunks are recorded in the
    /// warehouse: run again with the same arguments, it skips the chunks
    /// done and tries the failed ones again. Several workers, here
    /// (--parallel) or on other machines sharing the warehouse, claim chunks
    /// without overlap; a dead worker's chunk is taken again once its claim
    /// expires. Exits non-zero when a chunk failed, or when it was stopped
    /// (SIGINT/SIGTERM: the chunks under way finish) with chunks left.
    Backfill {
        /// The DAG to backfill.
        #[arg(value_name = "DAG")]
        name: String,
        /// The first instant of event time (YYYY-MM-DD, midnight UTC, or RFC 3339).
        #[arg(long)]
        from: String,
        /// The first instant after the range (exclusive).
        #[arg(long)]
        to: String,
        /// The length of a chunk: at least 1s, and at most 100,000 chunks in
        /// the range.
        #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
        chunk: Duration,
        /// Chunks this process runs at once.
        #[arg(long, default_value = "1")]
        parallel: NonZeroUsize,
        /// At most this many events read per second by this process (over
        /// all its chunks), to spare the live MongoDB.
        #[arg(long, value_name = "EVENTS_PER_S")]
        max_rate: Option<std::num::NonZeroU32>,
        /// How long a claim on a chunk lasts unless renewed (every third of
        /// it): how soon a dead worker's chunk is taken again; at least 3s.
        #[arg(long, default_value = "60s", value_parser = at_least_3s)]
        claim_ttl: Duration,
        /// List the chunks and their states without running anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show where every DAG stands (last run, watermarks) and every feed
    /// consumer (messages, events, poison, errors, lag).
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Create or upgrade the warehouse schema (also done before every run).
    Migrate,
    /// Write deterministic synthetic events following the event model, to an
    /// events file or into a MongoDB collection.
    Seed {
        /// Documents to write, dirt included.
        #[arg(long, default_value_t = 10_000)]
        events: u64,
        /// Random seed: the same seed gives the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Days the events span, from 2026-01-05.
        #[arg(long, default_value_t = 14)]
        days: u32,
        /// The file to write, or a `mongodb://` URL to insert into.
        #[arg(long)]
        out: String,
        /// The MongoDB database, when `--out` is a MongoDB URL.
        #[arg(long, default_value = "app")]
        database: String,
        /// The MongoDB collection, when `--out` is a MongoDB URL.
        #[arg(long, default_value = "events")]
        collection: String,
    },
    /// Seed an events file, run every DAG into a fresh SQLite warehouse,
    /// check the five reports against the legacy computation and print
    /// views_daily. Needs no server.
    Demo {
        /// Documents to generate.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        /// Where the demo's events file and warehouse go.
        #[arg(long, default_value = ".cutover/demo")]
        dir: PathBuf,
    },
    /// Print one of the five analytics reports, from the warehouse or as the
    /// legacy analytics compute it from the events.
    Report {
        /// The report: views_daily, slide_engagement, shares_daily,
        /// sessions_daily or views_by_plan.
        name: String,
        /// Where the numbers come from: the warehouse's star schema, or the
        /// legacy aggregations over the source events (MongoDB or the
        /// events file).
        #[arg(long, value_enum, default_value_t = ReportSource::Warehouse)]
        source: ReportSource,
        /// The MongoDB database of the events, for `--source legacy`.
        #[arg(long, default_value = "app")]
        database: String,
        /// The collection of the events, for `--source legacy`.
        #[arg(long, default_value = "events")]
        collection: String,
        /// Only events at or after this instant (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        from: Option<String>,
        /// Only events before this instant (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        to: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
    },
}

/// How the live feed is consumed.
#[derive(Debug, Args)]
#[command(next_help_heading = "Feed consumer")]
struct FeedArgs {
    /// Concurrent long-polling receivers (each receives up to 10 messages).
    #[arg(long, default_value = "2")]
    receivers: NonZeroUsize,
    /// Flush a micro-batch when it holds this many messages...
    #[arg(long, default_value = "1000")]
    batch_messages: NonZeroUsize,
    /// ...or when its oldest message has waited this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    batch_age: Duration,
    /// Long-polling wait per receive, in seconds (at most 20).
    #[arg(long, value_name = "SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=20))]
    wait: u64,
    /// Visibility timeout for received messages, in seconds (3 to 43200);
    /// the queue's own when absent. Held messages are extended every third
    /// of it.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(3..=43_200))]
    visibility_timeout: Option<u64>,
}

impl FeedArgs {
    fn settings(&self, g: &Global, until_idle: Option<u64>) -> consume::Settings {
        consume::Settings {
            receivers: self.receivers,
            batch_messages: self.batch_messages,
            batch_age: self.batch_age,
            wait: Duration::from_secs(self.wait),
            visibility: self.visibility_timeout.map(Duration::from_secs),
            until_idle: until_idle.map(Duration::from_secs),
            run: RunOptions {
                work_root: g.work_dir.clone(),
                ..RunOptions::default()
            },
        }
    }
}

#[derive(Debug, Subcommand)]
enum QuarantineCommand {
    /// List what is quarantined, newest first: DAG, task, document id,
    /// where it was (a line of the events file, an `_id`, a message) and why.
    List {
        /// Only this DAG's.
        #[arg(long)]
        dag: Option<String>,
        /// Only this task's.
        #[arg(long)]
        task: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Show quarantined documents whole: why, where, and the raw form (bytes
    /// that are not UTF-8 shown as \xNN).
    Show {
        /// The document ids (the `_id`, or the hash `list` shows).
        #[arg(required = true)]
        doc_ids: Vec<String>,
        /// Only this DAG's.
        #[arg(long)]
        dag: Option<String>,
    },
    /// Run quarantined documents through their DAG again (extract,
    /// transform, load; not verify), after fixing what set them aside: those
    /// that now load leave the quarantine, the others stay with the new
    /// reason. Rows a load or transform set aside are read again from the
    /// source by their `_id`.
    Replay {
        /// Only this DAG's.
        #[arg(long)]
        dag: Option<String>,
        /// Only this task's.
        #[arg(long)]
        task: Option<String>,
        /// Only these documents.
        doc_ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DagsCommand {
    /// Check DAG files (default: every file in the DAG directory); exits
    /// non-zero on any problem and lists them all.
    Validate {
        /// Files to check.
        paths: Vec<PathBuf>,
    },
    /// List DAGs: name, data point, schedule and next run.
    List,
    /// Show a DAG's task graph and every resolved setting.
    Show {
        /// The DAG's name.
        name: String,
    },
    /// List the task kinds DAG files can use.
    Kinds,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportSource {
    /// The warehouse's star schema.
    Warehouse,
    /// The legacy aggregations over the source events.
    Legacy,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Table,
    Json,
    Csv,
}

fn init_logs(g: &Global) {
    let default = match g.verbose {
        0 => "warn,cutover=info,tasks::consume=info,tasks::daemon=info,tasks::backfill=info,tasks::metrics=info",
        1 => "warn,workflows=info,tasks=info,cutover=debug",
        _ => "info,workflows=debug,tasks=debug,cutover=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| RedactingStderr);
    match g.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Exit quietly when the reader of standard output goes away
    // (`cutover report ... | head`), as command-line tools do.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any other
    // thread of ours writes to a pipe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Every file cutover makes (the SQLite warehouse, work files, events
    // files) is its owner's alone.
    #[cfg(unix)]
    // SAFETY: umask only sets this process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
    // Secrets from the command line and the environment are known before
    // anything can print them.
    for arg in std::env::args_os().skip(1) {
        let arg = arg.to_string_lossy();
        // `--warehouse-url=mysql://...` as well as a separate value.
        let value = arg
            .split_once('=')
            .filter(|(k, _)| k.starts_with("--"))
            .map_or(&*arg, |(_, v)| v);
        workflows::redact::register_url(value);
    }
    // A panic's message passes through the same redaction.
    std::panic::set_hook(Box::new(|info| {
        let text = info.to_string();
        eprintln!("{}", redact(&text));
    }));
    for var in [
        "CUTOVER_SOURCE_URL",
        "CUTOVER_WAREHOUSE_URL",
        "CUTOVER_SQS_QUEUE_URL",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SQS",
    ] {
        if let Ok(v) = std::env::var(var) {
            workflows::redact::register_url(&v);
        }
    }
    workflows::redact::register_env();
    let cli = Cli::parse();
    workflows::redact::register_url(&cli.global.source_url);
    workflows::redact::register_url(&cli.global.warehouse_url);
    init_logs(&cli.global);
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            let chain = workflows::redact::chain(e.as_ref());
            eprintln!("error: {}", redact(&chain));
            ExitCode::FAILURE
        }
    }
}

/// `text` with every secret hidden.
fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    workflows::redact::redact(text)
}

/// Standard error, with every secret hidden from what is written.
struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A duration of at least three seconds (leases and claims renewed every
/// third of it, at most once a second).
fn at_least_3s(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(3) {
        return Err(format!(
            "{} is too short: at least 3s, so that renewing every third of it keeps it",
            humantime::format_duration(d)
        ));
    }
    Ok(d)
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Dags(cmd) => dags_command(g, cmd),
        Command::Run {
            names,
            all,
            dry_run,
            keep_work,
        } => {
            let selected = select(g, &names, all)?;
            if dry_run {
                dry_run_plan(g, &selected).await
            } else {
                run(g, &selected, keep_work, "manual").await
            }
        }
        Command::Runs {
            dag,
            limit,
            format,
            sweep,
        } => {
            let wh = warehouse(g).await?;
            if sweep {
                let dead = wh.ledger().interrupt_dead(dag.as_deref()).await?;
                eprintln!("{} dead runs recorded as interrupted", dead.len());
            }
            let runs = wh.ledger().runs(dag.as_deref(), limit).await?;
            match format {
                ListFormat::Json => println!("{}", redact(&serde_json::to_string_pretty(&runs)?)),
                ListFormat::Table => {
                    println!(
                        "{:<36}  {:<14}  {:<11}  {:<24}  {:>8}  {:>8}  {:>5}",
                        "RUN", "DAG", "STATE", "STARTED", "READ", "WRITTEN", "QUAR"
                    );
                    for r in runs {
                        println!(
                            "{:<36}  {:<14}  {:<11}  {:<24}  {:>8}  {:>8}  {:>5}",
                            r.run_id,
                            r.dag,
                            r.state,
                            r.started_at,
                            r.rows_read,
                            r.rows_written,
                            r.rows_quarantined
                        );
                        if let Some(e) = r.error {
                            println!(
                                "    error: {}",
                                redact(e.lines().next().unwrap_or_default())
                            );
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Consume {
            names,
            queue_url,
            until_idle,
            feed,
        } => {
            let dags = select(g, &names, names.is_empty())?;
            let settings = feed.settings(g, until_idle);
            consume_feed(g, &dags, &queue_url, settings).await
        }
        Command::Schedule {
            names,
            lease_ttl,
            grace,
            with_sqs,
            queue_url,
            feed,
        } => {
            let dags = select(g, &names, names.is_empty())?;
            let env = env(g).await?;
            start_metrics(g, &env.warehouse).await?;
            let runner = Runner::new(env.warehouse.ledger());
            let settings = tasks::daemon::Settings {
                holder: holder(),
                lease_ttl,
                grace,
                run: RunOptions {
                    work_root: g.work_dir.clone(),
                    ..RunOptions::default()
                },
            };
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            tasks::kinds::hide_progress();
            let consumer = match (with_sqs, queue_url) {
                (false, _) => None,
                (true, None) => {
                    bail!("--with-sqs needs the queue's URL: --queue-url or CUTOVER_SQS_QUEUE_URL")
                }
                (true, Some(url)) => {
                    let queue = consume::Queue::from_env(&url).await;
                    let all = load_dags(&g.dags)?;
                    let consumer = consume::Consumer::new(
                        queue,
                        &dags,
                        &all,
                        env.warehouse.clone(),
                        runner.clone(),
                        feed.settings(g, None),
                    )
                    .await
                    .context("cannot start consuming")?;
                    tracing::info!(consumer = consumer.id(), queue = %url, "consuming the feed beside the schedule");
                    Some(consumer)
                }
            };
            let stop_tx = std::sync::Arc::new(stop_tx);
            let on_signal = std::sync::Arc::clone(&stop_tx);
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!(
                    "signal received: starting nothing more, letting running DAGs finish"
                );
                let _ = on_signal.send(true);
            });
            let daemon = async {
                let ran = tasks::daemon::run(&dags, env, runner, settings, stop.clone()).await;
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
        Command::Backfill {
            name,
            from,
            to,
            chunk,
            parallel,
            max_rate,
            claim_ttl,
            dry_run,
        } => {
            let dag = select(g, std::slice::from_ref(&name), false)?
                .pop()
                .context("no DAG selected")?;
            let settings = tasks::backfill::Settings {
                from_ms: parse_instant(&from).context("--from")?,
                until_ms: parse_instant(&to).context("--to")?,
                chunk,
                parallel,
                max_rate,
                claim_ttl,
                holder: holder(),
                run: RunOptions {
                    work_root: g.work_dir.clone(),
                    ..RunOptions::default()
                },
            };
            settings.check()?;
            let env = env(g).await?;
            if dry_run {
                let chunks = tasks::backfill::dry_run(&dag, &env, &settings).await?;
                println!(
                    "backfill {}: {} chunks",
                    settings.key(&dag.name),
                    chunks.len()
                );
                println!(
                    "{:<24}  {:<24}  {:<8}  {:>8}  RUN",
                    "FROM", "UNTIL", "STATE", "EVENTS"
                );
                for c in chunks {
                    println!(
                        "{:<24}  {:<24}  {:<8}  {:>8}  {}",
                        reports::format_ms(c.from_ms),
                        reports::format_ms(c.until_ms),
                        c.state,
                        c.events,
                        c.run_id.unwrap_or_else(|| "-".into())
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            start_metrics(g, &env.warehouse).await?;
            let runner = Runner::new(env.warehouse.ledger());
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("signal received: finishing the chunks under way, claiming no more");
                let _ = stop_tx.send(true);
            });
            let report = tasks::backfill::run(&dag, env, runner, settings, stop).await?;
            let secs = report.elapsed.as_secs_f64();
            println!(
                "backfill {}: {} chunks; {} done by this process, {} done before or by other workers, {} failed; {} events in {:.1} s ({:.0} events/s)",
                report.key,
                report.chunks,
                report.done_here,
                report.done_elsewhere,
                report.failed.len(),
                report.events,
                secs,
                report.events as f64 / secs.max(1e-3)
            );
            for c in &report.failed {
                println!(
                    "  failed: {} to {}: {}",
                    reports::format_ms(c.from_ms),
                    reports::format_ms(c.until_ms),
                    c.error.as_deref().unwrap_or("?")
                );
            }
            if report.left > 0 {
                println!(
                    "stopped with {} chunks left: run the same command again to go on",
                    report.left
                );
            }
            Ok(if report.failed.is_empty() && report.left == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Status { format } => status(g, format).await,
        Command::Quarantine(cmd) => quarantine_command(g, cmd).await,
        Command::Migrate => {
            let wh = warehouse(g).await?;
            println!("warehouse {} is migrated", wh.display_url);
            Ok(ExitCode::SUCCESS)
        }
        Command::Seed {
            events,
            seed,
            days,
            out,
            database,
            collection,
        } => {
            let (stats, place) =
                if out.starts_with("mongodb://") || out.starts_with("mongodb+srv://") {
                    let Source::Mongo(client) = Source::open(&out).await? else {
                        unreachable!("a mongodb URL opens MongoDB")
                    };
                    let coll = client.database(&database).collection(&collection);
                    let opts = SeedOptions {
                        events,
                        seed,
                        days,
                        ..SeedOptions::default()
                    };
                    let bar = indicatif::ProgressBar::new(events);
                    bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30} {human_pos}/{human_len} events inserted ({per_sec}, eta {eta})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                    let stats = seed::insert_into(&opts, &coll, 10_000, &bar)
                        .await
                        .with_context(|| format!("inserting into {database}.{collection}"))?;
                    bar.finish_and_clear();
                    (stats, format!("{database}.{collection}"))
                } else {
                    let path = PathBuf::from(&out);
                    (
                        write_seed(&path, events, seed, days)?,
                        path.display().to_string(),
                    )
                };
            println!(
                "wrote {} events to {} ({} duplicates, {} invalid, {} unknown types, {} late)",
                stats.written,
                place,
                stats.duplicates,
                stats.invalid,
                stats.unknown_types,
                stats.late
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { events, dir } => demo(g, events, &dir).await,
        Command::Report {
            name,
            source,
            database,
            collection,
            from,
            to,
            format,
        } => {
            let report = ReportName::from_name(&name).with_context(|| {
                let names: Vec<&str> = ReportName::ALL.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown report `{name}`; the reports are {}",
                    names.join(", ")
                )
            })?;
            let range = Range {
                from_ms: from.as_deref().map(parse_instant).transpose()?,
                to_ms: to.as_deref().map(parse_instant).transpose()?,
            };
            let rows = match source {
                ReportSource::Warehouse => {
                    let wh = warehouse(g).await?;
                    reports::from_warehouse(&wh, report, range).await?
                }
                ReportSource::Legacy => {
                    let src = Source::open(&g.source_url).await?;
                    let events = reports::legacy::Events {
                        source: &src,
                        database: &database,
                        collection: &collection,
                    };
                    let spinner = indicatif::ProgressBar::new_spinner();
                    spinner.set_message(format!(
                        "computing {name} from the events as the legacy analytics do"
                    ));
                    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
                    let rows = reports::from_legacy(&events, report, range).await;
                    spinner.finish_and_clear();
                    rows?
                }
            };
            let format = match format {
                ReportFormat::Table => Format::Table,
                ReportFormat::Json => Format::Json,
                ReportFormat::Csv => Format::Csv,
            };
            print!("{}", rows.render(format));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Serves the metrics endpoint when --metrics-addr is given.
async fn start_metrics(g: &Global, wh: &Warehouse) -> Result<()> {
    if let Some(addr) = g.metrics_addr {
        tasks::metrics::serve(addr, wh.clone())
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    Ok(())
}

/// This process's name in leases and claims: host, pid and start time.
fn holder() -> String {
    format!(
        "{}:{}:{}",
        consume::status::hostname(),
        std::process::id(),
        Utc::now().timestamp_millis()
    )
}

/// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 instant into epoch ms.
fn parse_instant(s: &str) -> Result<i64> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_millis());
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .with_context(|| format!("`{s}` is not a date (YYYY-MM-DD) or an RFC 3339 instant"))
}

fn load_dags(dir: &Path) -> Result<Vec<Dag<TaskKind>>> {
    dag::load_dir::<TaskKind>(dir).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!(
            "{} problem(s) in the DAG files in {}",
            errors.len(),
            dir.display()
        )
    })
}

fn select(g: &Global, names: &[String], all: bool) -> Result<Vec<Dag<TaskKind>>> {
    let dags = load_dags(&g.dags)?;
    if all {
        return Ok(dags);
    }
    if names.is_empty() {
        bail!("name the DAGs to run, or pass --all");
    }
    names
        .iter()
        .map(|n| {
            dags.iter()
                .find(|d| &d.name == n)
                .cloned()
                .with_context(|| {
                    let known: Vec<&str> = dags.iter().map(|d| d.name.as_str()).collect();
                    match dag::did_you_mean(n, known.iter().copied()) {
                        Some(h) => format!(
                            "no DAG named `{n}` in {} (did you mean `{h}`?)",
                            g.dags.display()
                        ),
                        None => format!(
                            "no DAG named `{n}` in {}; there are: {}",
                            g.dags.display(),
                            known.join(", ")
                        ),
                    }
                })
        })
        .collect()
}

async fn consume_feed(
    g: &Global,
    dags: &[Dag<TaskKind>],
    queue_url: &str,
    settings: consume::Settings,
) -> Result<ExitCode> {
    let wh = warehouse(g).await?;
    start_metrics(g, &wh).await?;
    let runner = Runner::new(wh.ledger());
    let queue = consume::Queue::from_env(queue_url).await;
    tasks::kinds::hide_progress();
    let all = load_dags(&g.dags)?;
    let consumer = consume::Consumer::new(queue, dags, &all, wh, runner, settings)
        .await
        .context("cannot start consuming")?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received: finishing the messages held, then exiting");
        let _ = stop_tx.send(true);
    });
    tracing::info!(consumer = consumer.id(), queue = queue_url, "consuming");
    let t = consumer.run(stop).await;
    println!(
        "consumed {} messages ({} redelivered): {} events, {} poison quarantined, {} deleted, {} left for consumers of other DAGs, {} of types no DAG takes, {} events quarantined for breaking a run, {} micro-batches ({} with a failed DAG), {} errors",
        t.messages, t.redelivered, t.events, t.poison, t.deleted, t.left_for_others, t.ignored, t.isolated, t.batches, t.failed_batches, t.errors
    );
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn status(g: &Global, format: ListFormat) -> Result<ExitCode> {
    let dags = load_dags(&g.dags)?;
    let wh = warehouse(g).await?;
    let ledger = wh.ledger();
    let mut rows = Vec::new();
    for dag in &dags {
        let last = ledger.runs(Some(&dag.name), 1).await?.into_iter().next();
        let mut watermarks = serde_json::Map::new();
        for t in &dag.tasks {
            if let TaskKind::ExtractMongo(_) = t.kind {
                let w = wh.watermark(&dag.name, &t.id).await?;
                watermarks.insert(
                    t.id.clone(),
                    w.map(reports::format_ms)
                        .map_or(serde_json::Value::Null, Into::into),
                );
            }
        }
        rows.push(serde_json::json!({
            "dag": dag.name,
            "last_run": last,
            "watermarks": watermarks,
        }));
    }
    let consumers = consume::ConsumerStatus::all(&wh).await?;
    match format {
        ListFormat::Json => println!(
            "{}",
            redact(&serde_json::to_string_pretty(
                &serde_json::json!({ "dags": rows, "consumers": consumers })
            )?)
        ),
        ListFormat::Table => {
            println!(
                "{:<14}  {:<9}  {:<8}  {:<24}  WATERMARKS",
                "DAG", "LAST RUN", "TRIGGER", "STARTED"
            );
            for r in &rows {
                let run = &r["last_run"];
                let marks: Vec<String> = r["watermarks"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("none")))
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "{:<14}  {:<9}  {:<8}  {:<24}  {}",
                    r["dag"].as_str().unwrap_or_default(),
                    run["state"].as_str().unwrap_or("never"),
                    run["trigger"].as_str().unwrap_or("-"),
                    run["started_at"].as_str().unwrap_or("-"),
                    marks.join(" ")
                );
            }
            if consumers.is_empty() {
                println!("\nno feed consumer has run against this warehouse");
            } else {
                println!(
                    "\n{:<36}  {:<8}  {:<24}  {:>8}  {:>11}  {:>8}  {:>6}  {:>8}  {:>6}  {:>9}",
                    "CONSUMER",
                    "STATE",
                    "UPDATED",
                    "MESSAGES",
                    "REDELIVERED",
                    "EVENTS",
                    "POISON",
                    "DELETED",
                    "ERRORS",
                    "LAG"
                );
                for c in &consumers {
                    let t = &c.totals;
                    let lag = c
                        .lag_ms
                        .map_or("-".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
                    println!(
                        "{:<36}  {:<8}  {:<24}  {:>8}  {:>11}  {:>8}  {:>6}  {:>8}  {:>6}  {:>9}",
                        c.consumer_id,
                        c.state,
                        c.updated_at,
                        t.messages,
                        t.redelivered,
                        t.events,
                        t.poison,
                        t.deleted,
                        t.errors,
                        lag
                    );
                    if let Some(e) = &c.last_error {
                        println!(
                            "    last error: {}",
                            redact(e.lines().next().unwrap_or_default())
                        );
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn warehouse(g: &Global) -> Result<Warehouse> {
    let wh = Warehouse::connect(&g.warehouse_url).await?;
    wh.migrate().await?;
    Ok(wh)
}

async fn env(g: &Global) -> Result<Env> {
    let source = Source::open(&g.source_url).await?;
    if let Source::File(path) = &source {
        if !path.exists() {
            bail!(
                "the events file {} does not exist; set CUTOVER_SOURCE_URL (a file or mongodb:// URL), or create one with `cutover seed --out {}`",
                path.display(),
                path.display()
            );
        }
    }
    source.check().await?;
    Ok(Env {
        source,
        warehouse: warehouse(g).await?,
    })
}

async fn run(
    g: &Global,
    dags: &[Dag<TaskKind>],
    keep_work: bool,
    trigger: &str,
) -> Result<ExitCode> {
    let env = env(g).await?;
    start_metrics(g, &env.warehouse).await?;
    let runner = Runner::new(env.warehouse.ledger());
    let opts = RunOptions {
        work_root: g.work_dir.clone(),
        trigger: trigger.into(),
        keep_work,
        ..RunOptions::default()
    };
    let mut failed = 0;
    for dag in dags {
        let summary = runner.run(dag, build_tasks(dag, &env), &opts).await?;
        println!(
            "{} run {}: {}",
            dag.name,
            summary.run_id,
            summary.state.name()
        );
        for (id, state) in &summary.tasks {
            match state {
                TaskState::Succeeded { attempt, report } => {
                    let retried = if *attempt > 1 {
                        format!(" (attempt {attempt})")
                    } else {
                        String::new()
                    };
                    println!("  {id:<22} ok{retried}: {}", report.summary);
                }
                TaskState::Failed { attempt, error, .. } => {
                    println!(
                        "  {id:<22} FAILED after {attempt} attempt(s): {}",
                        redact(error)
                    )
                }
                TaskState::Skipped { because } => {
                    println!("  {id:<22} skipped ({because} did not succeed)")
                }
                other => println!("  {id:<22} {}", other.name()),
            }
        }
        let t = summary.totals;
        println!(
            "  {} documents read, {} rows changed, {} quarantined{}",
            t.read,
            t.written,
            t.quarantined,
            if t.quarantined > 0 {
                " (`cutover quarantine list` shows them)"
            } else {
                ""
            }
        );
        if matches!(summary.state, RunState::Failed { .. }) {
            failed += 1;
            println!("  work files kept in {}", summary.work_dir.display());
        }
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn dry_run_plan(g: &Global, dags: &[Dag<TaskKind>]) -> Result<ExitCode> {
    let wh = Warehouse::connect(&g.warehouse_url).await?;
    for dag in dags {
        println!("{} (dry run: nothing is read or written)", dag.name);
        for (i, wave) in dag.waves().iter().enumerate() {
            for t in wave {
                let mut line = format!("  step {}: {} [{}]", i + 1, t.id, t.kind.kind_name());
                if let TaskKind::ExtractMongo(c) = &t.kind {
                    // Without migrations there is no watermark table yet.
                    let w = wh.watermark(&dag.name, &t.id).await.ok().flatten();
                    let from = c
                        .since(w)
                        .map_or_else(|| "the beginning".to_owned(), reports::format_ms);
                    line.push_str(&format!(" would read {} from {from}", c.types.join(", ")));
                }
                if !t.depends_on.is_empty() {
                    line.push_str(&format!(" after {}", t.depends_on.join(", ")));
                }
                println!("{line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn dags_command(g: &Global, cmd: DagsCommand) -> Result<ExitCode> {
    match cmd {
        DagsCommand::Validate { paths } => {
            let result = if paths.is_empty() {
                dag::load_dir::<TaskKind>(&g.dags)
            } else {
                dag::load_files::<TaskKind>(&paths)
            };
            match result {
                Ok(dags) => {
                    for d in &dags {
                        println!(
                            "ok  {} ({}): {} tasks",
                            d.file.display(),
                            d.name,
                            d.tasks.len()
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in &errors {
                        println!("{e}");
                    }
                    eprintln!("{} problem(s)", errors.len());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        DagsCommand::List => {
            let dags = load_dags(&g.dags)?;
            println!(
                "{:<16}  {:<12}  {:<32}  NEXT RUN",
                "NAME", "DATA POINT", "SCHEDULE"
            );
            for d in dags {
                let (schedule, next) = match &d.schedule {
                    Some(s) => (
                        format!("{} ({})", s.cron, s.timezone),
                        s.next_after(Utc::now()).map_or_else(
                            || "never".into(),
                            |t| reports::format_ms(t.timestamp_millis()),
                        ),
                    ),
                    None => ("ad hoc".into(), "-".into()),
                };
                println!(
                    "{:<16}  {:<12}  {:<32}  {}",
                    d.name, d.data_point, schedule, next
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DagsCommand::Show { name } => {
            let dag = select(g, &[name], false)?.remove(0);
            println!("{} ({})", dag.name, dag.file.display());
            if !dag.description.is_empty() {
                println!("  {}", dag.description.trim());
            }
            println!("  data point: {}", dag.data_point);
            match &dag.schedule {
                Some(s) => println!(
                    "  schedule: {} in {}, catch up: {}",
                    s.cron,
                    s.timezone,
                    s.catch_up.name()
                ),
                None => println!("  schedule: none (ad hoc)"),
            }
            println!("\ntask graph:");
            for (i, wave) in dag.waves().iter().enumerate() {
                let ids: Vec<&str> = wave.iter().map(|t| t.id.as_str()).collect();
                println!("  step {}: {}", i + 1, ids.join(", "));
            }
            for t in &dag.tasks {
                let mut table = toml::Table::try_from(t).context("rendering the task")?;
                if let Some(toml::Value::Table(kind)) = table.remove("kind") {
                    table.extend(kind);
                }
                let mut wrapper = toml::Table::new();
                wrapper.insert(t.id.clone(), toml::Value::Table(table));
                print!(
                    "\n{}",
                    toml::to_string_pretty(&wrapper).context("rendering the task")?
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DagsCommand::Kinds => {
            for k in TaskKind::catalog() {
                println!("{:<18} {}", k.name, k.summary);
                println!("{:<18} settings: {}", "", (k.fields)().join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn write_seed(out: &Path, events: u64, seed: u64, days: u32) -> Result<seed::SeedStats> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = out.with_extension("tmp");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let opts = SeedOptions {
        events,
        seed,
        days,
        ..SeedOptions::default()
    };
    let stats = seed::generate(&opts, std::io::BufWriter::new(file)).context("writing events")?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(stats)
}

async fn demo(g: &Global, events: u64, dir: &Path) -> Result<ExitCode> {
    let events_file = dir.join("events.jsonl");
    let db = dir.join("warehouse.db");
    for stale in [
        db.clone(),
        db.with_extension("db-wal"),
        db.with_extension("db-shm"),
    ] {
        let _ = std::fs::remove_file(stale);
    }
    let stats = write_seed(&events_file, events, 7, 14)?;
    println!(
        "seeded {} events into {} ({} duplicates, {} invalid, {} unknown types, {} late)\n",
        stats.written,
        events_file.display(),
        stats.duplicates,
        stats.invalid,
        stats.unknown_types,
        stats.late
    );
    let g = Global {
        source_url: events_file.display().to_string(),
        warehouse_url: format!("sqlite:{}", db.display()),
        dags: g.dags.clone(),
        work_dir: dir.join("work"),
        metrics_addr: g.metrics_addr,
        log_format: g.log_format,
        verbose: g.verbose,
    };
    let dags = load_dags(&g.dags)?;
    let code = run(&g, &dags, false, "demo").await?;
    let wh = warehouse(&g).await?;
    let src = Source::open(&g.source_url).await?;
    let events = reports::legacy::Events {
        source: &src,
        database: "app",
        collection: "events",
    };
    println!();
    let mut code = code;
    for (name, r) in ReportName::ALL {
        let ours = reports::from_warehouse(&wh, *r, Range::default()).await?;
        let theirs = reports::from_legacy(&events, *r, Range::default()).await?;
        match reports::first_difference(&ours, &theirs, 1e-9) {
            None => println!(
                "{name:<17} {:>6} rows, equal to the legacy report",
                ours.rows.len()
            ),
            Some(d) => {
                println!("{name:<17} DIFFERS from the legacy report: {d}");
                code = ExitCode::FAILURE;
            }
        }
    }
    let report = reports::from_warehouse(&wh, ReportName::ViewsDaily, Range::default()).await?;
    let shown = reports::Report {
        columns: report.columns.clone(),
        rows: report.rows.iter().take(15).cloned().collect(),
    };
    println!(
        "\nviews_daily (first {} of {} rows):",
        shown.rows.len(),
        report.rows.len()
    );
    print!("{}", shown.render(Format::Table));
    println!(
        "\nThe warehouse is the SQLite file {}. Explore it with:",
        db.display()
    );
    println!(
        "  CUTOVER_WAREHOUSE_URL=sqlite:{} cutover report views_daily --format json",
        db.display()
    );
    println!(
        "  CUTOVER_WAREHOUSE_URL=sqlite:{} cutover runs",
        db.display()
    );
    println!(
        "  sqlite3 {} 'SELECT COUNT(*) FROM fact_views'",
        db.display()
    );
    Ok(code)
}

async fn quarantine_command(g: &Global, cmd: QuarantineCommand) -> Result<ExitCode> {
    use tasks::quarantine::{self, Filter};
    let wh = warehouse(g).await?;
    match cmd {
        QuarantineCommand::List {
            dag,
            task,
            limit,
            format,
        } => {
            let rows = quarantine::list(
                &wh,
                &Filter {
                    dag,
                    task,
                    doc_ids: Vec::new(),
                    limit: Some(limit),
                },
            )
            .await
            .context("reading the quarantine")?;
            match format {
                ListFormat::Json => println!("{}", redact(&serde_json::to_string_pretty(&rows)?)),
                ListFormat::Table => {
                    if rows.is_empty() {
                        println!("the quarantine is empty");
                    }
                    println!(
                        "{:<14}  {:<18}  {:<24}  {:<30}  REASON",
                        "DAG", "TASK", "DOCUMENT", "WHERE"
                    );
                    for r in rows {
                        let reason: String = r.reason.chars().take(160).collect();
                        println!(
                            "{:<14}  {:<18}  {:<24}  {:<30}  {}",
                            r.dag,
                            r.task,
                            r.doc_id,
                            r.location.as_deref().unwrap_or("-"),
                            redact(&reason)
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        QuarantineCommand::Show { doc_ids, dag } => {
            let rows = quarantine::list(
                &wh,
                &Filter {
                    dag,
                    task: None,
                    doc_ids: doc_ids.clone(),
                    limit: None,
                },
            )
            .await
            .context("reading the quarantine")?;
            if rows.is_empty() {
                bail!(
                    "nothing in the quarantine has the id {}",
                    doc_ids.join(", ")
                );
            }
            for r in rows {
                println!("document:    {}", r.doc_id);
                println!("dag, task:   {} {}", r.dag, r.task);
                println!(
                    "event:       {} {}",
                    r.event_type.as_deref().unwrap_or("-"),
                    r.event_id.as_deref().unwrap_or("-")
                );
                println!("where:       {}", r.location.as_deref().unwrap_or("-"));
                println!("run, when:   {} {}", r.run_id, r.quarantined_at);
                println!("reason:      {}", redact(&r.reason));
                println!("raw ({}):", r.raw_encoding);
                println!("{}\n", redact(&r.raw().display()));
            }
            Ok(ExitCode::SUCCESS)
        }
        QuarantineCommand::Replay { dag, task, doc_ids } => {
            let dags = load_dags(&g.dags)?;
            let env = env(g).await?;
            let runner = Runner::new(env.warehouse.ledger());
            let opts = RunOptions {
                work_root: g.work_dir.clone(),
                ..RunOptions::default()
            };
            let filter = Filter {
                dag,
                task,
                doc_ids,
                limit: None,
            };
            let done = tasks::replay::replay(&dags, &env, &runner, &opts, &filter).await?;
            if done.is_empty() {
                println!("nothing in the quarantine matches");
            }
            let mut code = ExitCode::SUCCESS;
            for r in done {
                println!(
                    "{}: {} rows, {} documents replayed{}: {} left the quarantine, {} stay",
                    r.dag,
                    r.rows,
                    r.documents,
                    r.run_id
                        .as_deref()
                        .map_or(String::new(), |id| format!(" (run {id})")),
                    r.released,
                    r.rows as u64 - r.released.min(r.rows as u64)
                );
                for (doc, why) in &r.skipped {
                    println!("  {doc}: not replayed: {why}");
                }
                if let Some(e) = &r.error {
                    println!("  the run failed: {}", redact(e));
                    code = ExitCode::FAILURE;
                }
            }
            Ok(code)
        }
    }
}
