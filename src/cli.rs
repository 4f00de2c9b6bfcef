//! The command line's shape: every flag, subcommand and its `--help` text.

mod args;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use args::{
    BackfillArgs, ConsumeArgs, DemoArgs, FeedArgs, ReconcileArgs, ReportArgs, RunArgs, RunsArgs,
    ScheduleArgs, SeedArgs, ServeArgs, SliceArgs, StatusArgs, SubsetArgs,
};

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
pub struct Cli {
    /// The options every subcommand takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// The event source: an events file (mongoexport form, Extended JSON) or
    /// a `mongodb://` URL.
    #[arg(
        long,
        global = true,
        env = "CUTOVER_SOURCE_URL",
        hide_env_values = true,
        default_value = ".cutover/events.jsonl"
    )]
    pub source_url: String,
    /// The warehouse: `sqlite:PATH`, `mysql://...` (MariaDB too) or
    /// `postgres://...`.
    #[arg(
        long,
        global = true,
        env = "CUTOVER_WAREHOUSE_URL",
        hide_env_values = true,
        default_value = "sqlite:.cutover/warehouse.db"
    )]
    pub warehouse_url: String,
    /// The directory holding the DAG files.
    #[arg(long, global = true, env = "CUTOVER_DAGS", default_value = "dags")]
    pub dags: PathBuf,
    /// Where runs keep their intermediate segment files.
    #[arg(
        long,
        global = true,
        env = "CUTOVER_WORK_DIR",
        default_value = ".cutover/work"
    )]
    pub work_dir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics while a long command
    /// (run, schedule, consume, backfill) runs, e.g. 127.0.0.1:9187.
    #[arg(long, global = true, env = "CUTOVER_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Log line format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log more (-v: debug, -vv: trace); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect and check DAG files.
    #[command(subcommand)]
    Dags(DagsCommand),
    /// Run DAGs now: tasks in dependency order, independent ones at once.
    Run(RunArgs),
    /// List recorded runs, newest first.
    Runs(RunsArgs),
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
    Consume(ConsumeArgs),
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
    Schedule(ScheduleArgs),
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
    Backfill(BackfillArgs),
    /// Show where every DAG stands (last run, watermarks) and every feed
    /// consumer (messages, events, poison, errors, lag).
    Status(StatusArgs),
    /// Create or upgrade the warehouse schema (also done before every run).
    Migrate,
    /// Write deterministic synthetic events following the event model, to an
    /// events file or into a MongoDB collection.
    Seed(SeedArgs),
    /// Seed an events file, run every DAG into a fresh SQLite warehouse,
    /// check the five reports against the legacy computation and print
    /// views_daily. Needs no server.
    Demo(DemoArgs),
    /// Print one of the five analytics reports, from the warehouse or as the
    /// legacy analytics compute it from the events.
    Report(ReportArgs),
    /// Compare the legacy analytics with the warehouse, per report and per
    /// UTC day, and drill every differing day down to the events behind it.
    ///
    /// Both sides are computed day by day (the legacy side with MongoDB
    /// aggregations or the same rules over the events file, the warehouse
    /// side with SQL) and folded per day into rows, the sum of every
    /// measure and an order-independent checksum, compared under rules
    /// printed with the result (e.g. avg_dwell_ms within a relative 1e-9).
    /// A differing day lists its differing rows (key, legacy, warehouse),
    /// then the events behind them: valid events missing from the facts,
    /// those the loader quarantined, fact rows with no valid event, values
    /// that differ, user dimension versions that give another plan. Every
    /// reconciliation is stored in the warehouse (--history lists them).
    /// Exits 1 when anything differs.
    Reconcile(ReconcileArgs),
    /// The diagonal slice: a small, deterministic sample of entities and
    /// days that cuts across every dimension of the data, with every report
    /// row each sample touches, legacy and warehouse side by side: the
    /// release test a reviewer reads and signs.
    ///
    /// Strata come from the data: days (first, last, busiest, quietest, and
    /// around a daylight-saving change in --time-zone), plans (each plan,
    /// users who changed plan, anonymous views, users with no plan), devices,
    /// share channels, slide-view payload versions, late arrivals, producer
    /// duplicates, sessions that ended before they started and renamed
    /// presentations. Every stratum the data holds gets a sample; empty ones
    /// are listed as empty. The same seed on the same data gives the same
    /// slice, and the document prints the command that reproduces it. Only
    /// the touched days are computed on both sides. Exits 1 when a row
    /// differs.
    Slice(SliceArgs),
    /// A development copy of the events: a sample of presentations (or
    /// users) with everything their reports depend on, written to an
    /// events file or an empty MongoDB collection, anonymised when asked.
    ///
    /// The sample is stratified as the diagonal slice is (plans, plan
    /// changers, anonymous views, devices, channels, payload versions,
    /// busiest and quietest days, late and invalid documents), the same
    /// seed on the same data giving the same sample. The copy is closed
    /// under the event model's relations: each sampled presentation's
    /// views, slide views and shares, its creation and renames, both ends
    /// of every session they happened in, and the registration and plan
    /// changes of every user who appears in them; dirt stays as it is
    /// (producer copies, late arrivals, invalid documents of the sample).
    /// It reads the source four times, holding the sample's ids, never
    /// every event.
    ///
    /// After writing it computes the five legacy reports on the copy and
    /// on the whole source restricted to the sample (through the
    /// pseudonyms) and says whether they are equal; it exits 1 when one is
    /// not. Lines of an events file that are not documents are counted
    /// and reported, and skipped.
    Subset(SubsetArgs),
    /// The cutover flags: one per data point whose DAG file has a
    /// `[cutover]` table, moving legacy -> shadow -> warehouse (a rollout
    /// share) -> retired.
    ///
    /// Moving towards the warehouse needs evidence, declared in the DAG
    /// file (defaults: the 3 latest reconciliations of every report of the
    /// data point passed, within 48 h; 1,000 shadow comparisons in that
    /// time, none mismatched); retiring needs the warehouse at 100 % for
    /// `retire_after` (7 days) with no legacy read. Moving back is always
    /// allowed, at once. A refused change says which evidence is missing.
    /// Every change is recorded with who, when, why and its evidence.
    #[command(subcommand)]
    Flags(FlagsCommand),
    /// Serve the analytics read API the application calls, routed by the
    /// cutover flags; the same flags over OpenFeature (OFREP); Prometheus
    /// metrics; and a status page.
    ///
    /// `GET /v1/reports/{name}?from=&to=&presentation_id=` answers a report
    /// (JSON, or CSV with `Accept: text/csv` or `format=csv`) from the side
    /// its data point's flag names: the legacy analytics in `legacy`; the
    /// legacy analytics in `shadow`, while the warehouse's answer is
    /// computed off the response path and compared with the legacy one
    /// under the reconciliation rules (a bounded queue; a comparison that
    /// finds no room is dropped and counted); in `warehouse`, the warehouse
    /// for the rollout share of the targeting keys (header
    /// `Cutover-Targeting-Key`, else each request on its own), the legacy
    /// analytics for the rest, a sample still compared; the warehouse alone
    /// in `retired`, where the legacy analytics are never called. Responses
    /// say which side answered (`Cutover-Source`) and the flag
    /// (`Cutover-Flag`). Every read and comparison is counted in the
    /// warehouse: the evidence `cutover flags set` and `cutover sunset`
    /// read. A flag changed with `cutover flags set` anywhere applies here
    /// within a second.
    ///
    /// `POST /ofrep/v1/evaluate/flags/{data_point}` and
    /// `POST /ofrep/v1/evaluate/flags` evaluate the flags for an
    /// OpenFeature provider: the value is the side to read for the
    /// context's targetingKey (`legacy` or `warehouse`), the variant the
    /// state. `/openapi.json` describes the API; `/metrics` is Prometheus.
    ///
    /// The surface is read-only. It listens on loopback unless told
    /// otherwise; another address needs a bearer token
    /// (CUTOVER_SERVE_TOKEN), which every request must then carry.
    Serve(ServeArgs),
    /// The sunset report: per data point, its flag and since when, the reads
    /// the legacy analytics still answered over the last 1, 7 and 30 days
    /// (counted by `serve` and OpenFeature evaluations), the shadow
    /// comparisons and their mismatch rate, the latest reconciliations, and
    /// a verdict: ready to promote, ready to retire, or what blocks each.
    Sunset {
        /// Output format.
        #[arg(long, value_enum, default_value_t = SunsetFormat::Table)]
        format: SunsetFormat,
    },
}

/// How the sunset report is printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SunsetFormat {
    /// Aligned columns, then each data point's verdict.
    Table,
    /// One object per data point.
    Json,
    /// A Markdown document for a release ticket.
    Markdown,
}

/// `cutover flags` subcommands.
#[derive(Debug, Subcommand)]
pub enum FlagsCommand {
    /// Every data point's flag: state, rollout, since when, its reports.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// One data point's flag, the evidence its next step needs and what
    /// is seen of it, and its latest changes.
    Show {
        /// The data point (`views`, `engagement`, ...).
        data_point: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Move a data point's flag. Exits 1 when the evidence is missing
    /// (and says which).
    Set {
        /// The data point.
        data_point: String,
        /// legacy, shadow, warehouse or retired.
        state: String,
        /// The warehouse's share of the targeting keys, in percent, for
        /// `warehouse` (default 100).
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        rollout: Option<u8>,
        /// Why: recorded with the change (required with --force).
        #[arg(long)]
        reason: Option<String>,
        /// Make the change without its evidence (recorded as forced).
        #[arg(long)]
        force: bool,
        /// Who makes the change (default: the user and host).
        #[arg(long, env = "CUTOVER_ACTOR")]
        actor: Option<String>,
    },
    /// The changes of every flag or one, newest first.
    History {
        /// Only this data point's.
        data_point: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

/// `cutover quarantine` subcommands.
#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
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

/// `cutover dags` subcommands.
#[derive(Debug, Subcommand)]
pub enum DagsCommand {
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

/// How a list is printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

/// Where a report's numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportSource {
    /// The warehouse's star schema.
    Warehouse,
    /// The legacy aggregations over the source events.
    Legacy,
}

/// How a reconciliation is printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReconcileFormat {
    /// Aligned text.
    Table,
    /// The whole result.
    Json,
    /// A document for a review.
    Markdown,
}

/// How a slice is printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SliceFormat {
    /// Aligned text.
    Table,
    /// The whole slice.
    Json,
    /// A document for a review.
    Markdown,
    /// A standalone page for a review.
    Html,
}

/// How a report is printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
}

/// A duration of at least three seconds (leases and claims renewed every
/// third of it, at most once a second).
fn at_least_3s(s: &str) -> Result<Duration, String> {
    let d = workflows::duration::parse(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(3) {
        return Err(format!(
            "{} is too short: at least 3s, so that renewing every third of it keeps it",
            workflows::duration::format(d)
        ));
    }
    Ok(d)
}
