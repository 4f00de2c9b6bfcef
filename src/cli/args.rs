//! The arguments of the subcommands that take more than a nested
//! subcommand, and the feed consumer's flags they share.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{at_least_3s, ListFormat, ReconcileFormat, ReportFormat, ReportSource, SliceFormat};

/// The arguments of `cutover run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The DAGs to run, by name.
    #[arg(value_name = "DAG")]
    pub names: Vec<String>,
    /// Run every DAG in the DAG directory: each after the DAGs its
    /// `after` names (the dimensions before the facts), otherwise in
    /// file-name order.
    #[arg(long, conflicts_with = "names")]
    pub all: bool,
    /// Show what would run and from which watermark, without running.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the run's segment files after success.
    #[arg(long)]
    pub keep_work: bool,
    /// Run every task even when nothing is new. By default, when an
    /// extract finds the source, its watermark and the DAG as they were at
    /// the DAG's last successful run, the tasks after it are not run
    /// (`up to date`); this runs them, e.g. after a warehouse table was
    /// changed by hand.
    #[arg(long)]
    pub no_skip: bool,
    /// How many DAGs run at once, each still after the DAGs its `after`
    /// names (on SQLite, one at a time). More than one overlaps one DAG's
    /// reading with another's loading, but holds several DAGs' memory at
    /// once: on two cores, two took a quarter off a PostgreSQL load and
    /// next to nothing off a MariaDB one, for about a third more memory
    /// (BENCHMARKS.md).
    #[arg(long, default_value = "1", value_name = "N")]
    pub parallel: NonZeroUsize,
}

/// The arguments of `cutover runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs of this DAG.
    #[arg(long)]
    pub dag: Option<String>,
    /// At most this many runs.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
    /// First record runs still `running` whose process is gone (killed,
    /// crashed: on this host a dead pid, elsewhere no heartbeat for 2
    /// minutes) as interrupted. Every run does this for its own DAG.
    #[arg(long)]
    pub sweep: bool,
}

/// The arguments of `cutover consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The DAGs to feed, by name; every DAG that reads events when none.
    #[arg(value_name = "DAG")]
    pub names: Vec<String>,
    /// The queue's URL.
    #[arg(long, env = "CUTOVER_SQS_QUEUE_URL", hide_env_values = true)]
    pub queue_url: String,
    /// Exit once no message has arrived for this many seconds.
    #[arg(long, value_name = "SECS")]
    pub until_idle: Option<u64>,
    #[command(flatten)]
    pub feed: FeedArgs,
}

/// The arguments of `cutover schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// The DAGs to schedule, by name; every scheduled DAG when none.
    #[arg(value_name = "DAG")]
    pub names: Vec<String>,
    /// How long a claimed lease lasts unless renewed (renewed every
    /// third); at least 3s.
    #[arg(long, default_value = "30s", value_parser = at_least_3s)]
    pub lease_ttl: Duration,
    /// How long running DAGs may take to finish after SIGINT/SIGTERM.
    #[arg(long, default_value = "60s", value_parser = workflows::duration::parse)]
    pub grace: Duration,
    /// Run every task of every scheduled run, even when its extracts find
    /// nothing new since the DAG's last successful run (as `run --no-skip`).
    #[arg(long)]
    pub no_skip: bool,
    /// Also consume the live feed from SQS in this process, as `cutover
    /// consume` does, sharing the warehouse connections and the ledger.
    #[arg(long)]
    pub with_sqs: bool,
    /// The queue's URL, with --with-sqs.
    #[arg(long, env = "CUTOVER_SQS_QUEUE_URL", hide_env_values = true)]
    pub queue_url: Option<String>,
    #[command(flatten)]
    pub feed: FeedArgs,
}

/// The arguments of `cutover backfill`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The DAG to backfill.
    #[arg(value_name = "DAG")]
    pub name: String,
    /// The first instant of event time (YYYY-MM-DD, midnight UTC, or RFC 3339).
    #[arg(long)]
    pub from: String,
    /// The first instant after the range (exclusive).
    #[arg(long)]
    pub to: String,
    /// The length of a chunk: at least 1s, and at most 100,000 chunks in
    /// the range.
    #[arg(long, default_value = "1d", value_parser = workflows::duration::parse)]
    pub chunk: Duration,
    /// Chunks this process runs at once.
    #[arg(long, default_value = "1")]
    pub parallel: NonZeroUsize,
    /// At most this many events read per second by this process (over
    /// all its chunks), to spare the live MongoDB.
    #[arg(long, value_name = "EVENTS_PER_S")]
    pub max_rate: Option<NonZeroU32>,
    /// How long a claim on a chunk lasts unless renewed (every third of
    /// it): how soon a dead worker's chunk is taken again; at least 3s.
    #[arg(long, default_value = "60s", value_parser = at_least_3s)]
    pub claim_ttl: Duration,
    /// List the chunks and their states without running anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// The arguments of `cutover status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

/// A `YYYY-MM-DD` day as the epoch ms of its UTC midnight.
fn midnight_ms(s: &str) -> Result<i64, String> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp_millis()
        })
        .map_err(|_| format!("`{s}` is not a day (YYYY-MM-DD)"))
}

/// The arguments of `cutover seed`.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Documents to write, dirt included.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Random seed: the same seed gives the same file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Days the events span, from --start.
    #[arg(long, default_value_t = 14)]
    pub days: u32,
    /// The first UTC day of the events (YYYY-MM-DD).
    #[arg(long, value_name = "DAY", default_value = "2026-01-05", value_parser = midnight_ms)]
    pub start: i64,
    /// The file to write, or a `mongodb://` URL to insert into.
    #[arg(long)]
    pub out: String,
    /// The MongoDB database, when `--out` is a MongoDB URL.
    #[arg(long, default_value = "app")]
    pub database: String,
    /// The MongoDB collection, when `--out` is a MongoDB URL.
    #[arg(long, default_value = "events")]
    pub collection: String,
}

/// The arguments of `cutover demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Documents to generate.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Where the demo's events file and warehouse go.
    #[arg(long, default_value = ".cutover/demo")]
    pub dir: PathBuf,
}

/// The arguments of `cutover report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The report: views_daily, slide_engagement, shares_daily,
    /// sessions_daily or views_by_plan.
    pub name: String,
    /// Where the numbers come from: the warehouse's star schema, or the
    /// legacy aggregations over the source events (MongoDB or the
    /// events file).
    #[arg(long, value_enum, default_value_t = ReportSource::Warehouse)]
    pub source: ReportSource,
    /// The MongoDB database of the events, for `--source legacy`.
    #[arg(long, default_value = "app")]
    pub database: String,
    /// The collection of the events, for `--source legacy`.
    #[arg(long, default_value = "events")]
    pub collection: String,
    /// Only events at or after this instant (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    pub from: Option<String>,
    /// Only events before this instant (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    pub to: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

/// How the live feed is consumed.
#[derive(Debug, Args)]
#[command(next_help_heading = "Feed consumer")]
pub struct FeedArgs {
    /// Concurrent long-polling receivers (each receives up to 10 messages).
    #[arg(long, default_value = "2")]
    pub receivers: NonZeroUsize,
    /// Flush a micro-batch when it holds this many messages...
    #[arg(long, default_value = "1000")]
    pub batch_messages: NonZeroUsize,
    /// ...or when its oldest message has waited this long.
    #[arg(long, default_value = "5s", value_parser = workflows::duration::parse)]
    pub batch_age: Duration,
    /// Long-polling wait per receive, in seconds (at most 20).
    #[arg(long, value_name = "SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=20))]
    pub wait: u64,
    /// Visibility timeout for received messages, in seconds (3 to 43200);
    /// the queue's own when absent. Held messages are extended every third
    /// of it.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(3..=43_200))]
    pub visibility_timeout: Option<u64>,
}

/// The arguments of `cutover reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Reports (views_daily, slide_engagement, shares_daily,
    /// sessions_daily, views_by_plan) or data points (views, engagement,
    /// shares, sessions); every report when none.
    #[arg(value_name = "REPORT|DATA_POINT")]
    pub names: Vec<String>,
    /// The first UTC day compared (YYYY-MM-DD).
    #[arg(long, value_name = "DAY")]
    pub from: Option<String>,
    /// The first UTC day not compared (YYYY-MM-DD): `--from 2026-01-01
    /// --to 2026-01-08` compares one week.
    #[arg(long, value_name = "DAY")]
    pub to: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReconcileFormat::Table)]
    pub format: ReconcileFormat,
    /// Differing rows and events shown (and stored) per day.
    #[arg(long, default_value_t = 20)]
    pub sample: usize,
    /// Events read at most per window of a drill-down: a differing day
    /// with more events is bisected by time, counting both sides, down to
    /// windows this small.
    #[arg(long, default_value_t = 20_000)]
    pub drill_limit: usize,
    /// The MongoDB database of the events.
    #[arg(long, default_value = "app")]
    pub database: String,
    /// The collection of the events.
    #[arg(long, default_value = "events")]
    pub collection: String,
    /// List the stored reconciliations (of the named reports when given),
    /// newest first, instead of reconciling.
    #[arg(long, conflicts_with_all = ["show", "from", "to"])]
    pub history: bool,
    /// How many reconciliations --history lists.
    #[arg(long, default_value_t = 20, requires = "history")]
    pub limit: i64,
    /// Print a stored reconciliation again, by id, instead of reconciling.
    #[arg(long, value_name = "ID", conflicts_with_all = ["from", "to"])]
    pub show: Option<String>,
}

/// The arguments of `cutover slice`.
#[derive(Debug, Args)]
pub struct SliceArgs {
    /// Samples (an entity on a day) wanted; raised to the number of strata
    /// the data holds, so that each is covered.
    #[arg(long, default_value_t = 30)]
    pub size: usize,
    /// The seed of the choice: the same seed on the same data gives the
    /// same slice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The first UTC day sampled (YYYY-MM-DD).
    #[arg(long, value_name = "DAY")]
    pub from: Option<String>,
    /// The first UTC day not sampled (YYYY-MM-DD).
    #[arg(long, value_name = "DAY")]
    pub to: Option<String>,
    /// The IANA time zone whose daylight-saving changes give day strata,
    /// e.g. Europe/Berlin (the reports' days stay UTC days).
    #[arg(long, value_name = "TZ", default_value = "UTC")]
    pub time_zone: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SliceFormat::Table)]
    pub format: SliceFormat,
    /// Write the document to this file (atomically) instead of standard
    /// output; a one-line verdict is printed.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The MongoDB database of the events.
    #[arg(long, default_value = "app")]
    pub database: String,
    /// The collection of the events.
    #[arg(long, default_value = "events")]
    pub collection: String,
}

/// `cutover serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on. Anything but loopback needs
    /// CUTOVER_SERVE_TOKEN.
    #[arg(long, env = "CUTOVER_SERVE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// The bearer token every request must carry (`Authorization: Bearer
    /// TOKEN`); none on loopback when unset.
    #[arg(long, env = "CUTOVER_SERVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The MongoDB database of the events, for the legacy analytics.
    #[arg(long, default_value = "app")]
    pub database: String,
    /// The collection of the events, for the legacy analytics.
    #[arg(long, default_value = "events")]
    pub collection: String,
    /// The share of `shadow` reads whose warehouse answer is compared
    /// (0 to 1).
    #[arg(long, default_value = "1", value_parser = share)]
    pub shadow_sample: f64,
    /// The share of `warehouse` reads still compared with the other side
    /// (0 to 1).
    #[arg(long, default_value = "0.1", value_parser = share)]
    pub warehouse_sample: f64,
    /// Comparisons waiting at most; one that finds no room is dropped and
    /// counted.
    #[arg(long, default_value = "256")]
    pub shadow_queue: NonZeroUsize,
    /// Comparisons made at once.
    #[arg(long, default_value = "1")]
    pub shadow_workers: NonZeroUsize,
    /// Requests answered at once; more get 503 with Retry-After.
    #[arg(long, default_value = "32")]
    pub max_concurrent: NonZeroUsize,
    /// The longest a request may take before it gets 503.
    #[arg(long, default_value = "30s", value_parser = workflows::duration::parse)]
    pub request_timeout: Duration,
    /// How often the flags' version is read from the warehouse.
    #[arg(long, default_value = "250ms", value_parser = workflows::duration::parse)]
    pub poll: Duration,
    /// How often the read counts are written to the warehouse.
    #[arg(long, default_value = "5s", value_parser = workflows::duration::parse)]
    pub flush_every: Duration,
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a share between 0 and 1")),
    }
}

/// The arguments of `cutover subset`.
#[derive(Debug, Args)]
pub struct SubsetArgs {
    /// Where the copy goes: an events file (written whole or not at all),
    /// or a `mongodb://` URL (into an empty collection: --out-database,
    /// --out-collection).
    #[arg(long, value_name = "FILE|URL")]
    pub out: String,
    /// Sample this many presentations, with everything their reports
    /// depend on (the default, 20).
    #[arg(long, value_name = "N", conflicts_with = "users")]
    pub presentations: Option<usize>,
    /// Sample this many users instead, with everything theirs depend on.
    #[arg(long, value_name = "N")]
    pub users: Option<usize>,
    /// The seed of the choice: the same seed on the same data gives the
    /// same copy.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The first UTC day of the facts copied (YYYY-MM-DD); what they depend
    /// on is copied whenever it happened.
    #[arg(long, value_name = "DAY")]
    pub from: Option<String>,
    /// The first UTC day not copied (YYYY-MM-DD).
    #[arg(long, value_name = "DAY")]
    pub to: Option<String>,
    /// Replace user, session, presentation and event ids, titles,
    /// referrers and any other text with pseudonyms: an HMAC-SHA256 keyed
    /// by the secret in CUTOVER_SUBSET_KEY (at least 16 bytes), so the same
    /// value always gets the same pseudonym and none can be traced back
    /// without the key. `_id`s are minted again in the same order with the
    /// same time inside; plans, countries, devices, channels, numbers and
    /// times are kept.
    #[arg(long)]
    pub anonymize: bool,
    /// Move every time (event times and the times inside `_id`s) by this
    /// many days.
    #[arg(
        long,
        value_name = "DAYS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub shift_days: i64,
    /// The MongoDB database of the events, when the source is MongoDB.
    #[arg(long, default_value = "app")]
    pub database: String,
    /// The collection of the events, when the source is MongoDB.
    #[arg(long, default_value = "events")]
    pub collection: String,
    /// The database written, when --out is a MongoDB URL.
    #[arg(long, default_value = "app")]
    pub out_database: String,
    /// The collection written, when --out is a MongoDB URL; it must be
    /// empty.
    #[arg(long, default_value = "events")]
    pub out_collection: String,
}
