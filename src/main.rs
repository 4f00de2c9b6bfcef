//! The `cutover` command line: parses arguments, wires the engine
//! (`workflows`) to the task kinds (`tasks`) and prints results.

mod cli;
mod commands;
mod metrics;
mod serve;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use workflows::redact::redact;

use crate::cli::{Cli, Command, Global, LogFormat};

/// mimalloc rather than glibc's malloc. The runtime's threads take turns
/// with every task, so memory allocated on one thread is often freed on
/// another: glibc's per-thread arenas kept each arena's freed pages for
/// that arena (a long run held the peak of each), and capping the arenas
/// at one per core made the threads wait on each other's arena locks (a
/// reconciliation took twice as long). mimalloc frees across threads
/// without a shared lock and hands freed pages back (`tests/bench/memory.sh`,
/// BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Runs the command given.
async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Dags(cmd) => commands::dags::command(g, cmd),
        Command::Run(args) => commands::run::command(g, args).await,
        Command::Runs(args) => commands::runs::command(g, args).await,
        Command::Quarantine(cmd) => commands::quarantine::command(g, cmd).await,
        Command::Consume(args) => commands::consume::command(g, args).await,
        Command::Schedule(args) => commands::schedule::command(g, args).await,
        Command::Backfill(args) => commands::backfill::command(g, args).await,
        Command::Status(args) => commands::status::command(g, args).await,
        Command::Migrate => commands::migrate::command(g).await,
        Command::Seed(args) => commands::seed::command(args).await,
        Command::Demo(args) => commands::demo::command(g, args).await,
        Command::Report(args) => commands::report::command(g, args).await,
        Command::Reconcile(args) => commands::reconcile::command(g, args).await,
        Command::Slice(args) => commands::slice::command(g, args).await,
        Command::Subset(args) => commands::subset::command(g, args).await,
        Command::Flags(cmd) => commands::flags::command(g, cmd).await,
        Command::Serve(args) => serve::command(g, args).await,
        Command::Sunset { format } => commands::sunset::command(g, format).await,
    }
}

/// Logs to standard error, redacted, at the level `-v` and `RUST_LOG` ask
/// for.
fn init_logs(g: &Global) {
    let default = match g.verbose {
        0 => {
            "warn,cutover=info,tasks::consume=info,workflows::daemon=info,workflows::backfill=info"
        }
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
