//! `cutover serve`: the analytics read API the application calls, routed
//! by the cutover flags ([`reports`]), the comparisons made off the
//! response path ([`shadow`]), the flags over OpenFeature ([`ofrep`]), the
//! OpenAPI document, Prometheus metrics and the status page ([`page`]).
//!
//! The flags are read from the warehouse at start and again whenever their
//! version changes (polled, by default every 250 ms), so a change made by
//! `cutover flags set` on any machine applies within a second. Reads and
//! comparisons are counted in memory and written to the warehouse in
//! batches; a batch that cannot be written is kept for the next.

mod ofrep;
mod openapi;
mod page;
mod reports;
mod shadow;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use tasks::flags::store::{self, Counts};
use tasks::flags::{Flag, Side, State as FlagState};
use tasks::reports::ReportName;
use tasks::source::Source;
use tasks::Warehouse;
use tokio::sync::{mpsc, Semaphore};
use workflows::dag::Cutover;
use workflows::metrics::metrics;

use crate::cli::{Global, ServeArgs};
use crate::commands::{self, LOG_TARGET};

/// What every handler shares.
pub struct App {
    wh: Warehouse,
    source: Source,
    database: String,
    collection: String,
    /// The data points with a `[cutover]`, in DAG order.
    points: Vec<(String, Cutover)>,
    /// The DAGs of each data point.
    dags: HashMap<String, Vec<String>>,
    /// The data point whose flag switches each report.
    report_points: HashMap<ReportName, String>,
    flags: RwLock<Snapshot>,
    /// Counts not yet written, by data point and whether they are legacy
    /// reads, with the time of the latest (epoch ms).
    counts: Mutex<HashMap<(String, bool), (Counts, i64)>>,
    shadow: mpsc::Sender<shadow::Job>,
    shadow_sample: f64,
    warehouse_sample: f64,
    token: Option<String>,
    slots: Arc<Semaphore>,
    request_timeout: Duration,
}

/// The flags as last read, and the version they were read at.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    version: (i64, i64),
    flags: HashMap<String, Flag>,
}

impl App {
    /// The current flag of a data point.
    fn flag(&self, point: &str) -> Option<Flag> {
        self.flags
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .flags
            .get(point)
            .cloned()
    }

    /// The version the flags were read at.
    fn version(&self) -> (i64, i64) {
        self.flags.read().unwrap_or_else(|e| e.into_inner()).version
    }

    /// Reads every flag again.
    async fn reload(&self, version: (i64, i64)) -> Result<(), store::FlagError> {
        let names: Vec<&str> = self.points.iter().map(|(p, _)| p.as_str()).collect();
        let flags = store::flags(&self.wh, &names).await?;
        let m = metrics();
        for f in &flags {
            for s in FlagState::ALL {
                m.flag_state
                    .get_or_create(&vec![
                        ("data_point", f.data_point.clone()),
                        ("state", s.name().to_owned()),
                    ])
                    .set(i64::from(s == f.state));
            }
            m.flag_rollout
                .get_or_create(&vec![("data_point", f.data_point.clone())])
                .set(i64::from(f.rollout));
        }
        let mut snap = self.flags.write().unwrap_or_else(|e| e.into_inner());
        for f in &flags {
            if snap.flags.get(&f.data_point).is_some_and(|old| old != f) {
                tracing::info!(target: LOG_TARGET, data_point = %f.data_point, flag = %f.describe(), "flag changed");
            }
        }
        *snap = Snapshot {
            version,
            flags: flags
                .into_iter()
                .map(|f| (f.data_point.clone(), f))
                .collect(),
        };
        Ok(())
    }

    /// Counts reads or comparisons of a data point, to be written with the
    /// next batch. Legacy reads are kept apart, dated by the latest of them:
    /// a retirement asks for none since a given instant.
    fn count(&self, point: &str, c: Counts) {
        self.count_at(point, c, chrono::Utc::now().timestamp_millis());
    }

    fn count_at(&self, point: &str, c: Counts, at_ms: i64) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut add = |legacy: bool, part: Counts| {
            if part.is_empty() {
                return;
            }
            let entry = counts
                .entry((point.to_owned(), legacy))
                .or_insert((Counts::default(), at_ms));
            entry.0.add(part);
            entry.1 = entry.1.max(at_ms);
        };
        add(
            true,
            Counts {
                legacy_reads: c.legacy_reads,
                ..Counts::default()
            },
        );
        add(
            false,
            Counts {
                legacy_reads: 0,
                ..c
            },
        );
    }

    /// Counts one read answered by `side`.
    fn count_read(&self, point: &str, side: Side) {
        self.count(
            point,
            match side {
                Side::Legacy => Counts {
                    legacy_reads: 1,
                    ..Counts::default()
                },
                Side::Warehouse => Counts {
                    warehouse_reads: 1,
                    ..Counts::default()
                },
            },
        );
    }

    /// Writes the counts gathered so far; what cannot be written is kept.
    async fn flush(&self) {
        let batch = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()));
        for ((point, _), (c, at_ms)) in batch {
            let at = workflows::time::format_ms(at_ms);
            if let Err(e) = store::count(&self.wh, &point, &at, c).await {
                tracing::warn!(target: LOG_TARGET, data_point = %point, error = %workflows::redact::redact(&workflows::redact::chain(&e)), "could not write the read counts; keeping them for the next batch");
                self.count_at(&point, c, at_ms);
            }
        }
    }
}

/// Serves until SIGINT/SIGTERM.
///
/// # Errors
/// The DAGs, the warehouse, the source or the address cannot be used.
pub async fn command(g: &Global, args: ServeArgs) -> Result<ExitCode> {
    let token = args.token.clone().filter(|t| !t.trim().is_empty());
    if let Some(t) = &token {
        workflows::redact::register_secret(t);
    }
    if !args.addr.ip().is_loopback() && token.is_none() {
        bail!(
            "{} is not a loopback address: serving the analytics beyond this machine needs a bearer token (set CUTOVER_SERVE_TOKEN), which every request must then carry",
            args.addr
        );
    }
    let all = commands::load_dags(&g.dags)?;
    let mut dags: HashMap<String, Vec<String>> = HashMap::new();
    for d in &all {
        dags.entry(d.data_point.clone())
            .or_default()
            .push(d.name.clone());
    }
    let points: Vec<(String, Cutover)> = all
        .into_iter()
        .filter_map(|d| d.cutover.map(|c| (d.data_point, c)))
        .collect();
    let mut report_points = HashMap::new();
    for (point, c) in &points {
        for r in &c.reports {
            if let Some(name) = ReportName::from_name(r) {
                report_points.insert(name, point.clone());
            }
        }
    }
    let wh = commands::warehouse(g).await?;
    let source = commands::source(g).await?;
    let (tx, rx) = mpsc::channel(args.shadow_queue.get());
    let app = Arc::new(App {
        wh,
        source,
        database: args.database.clone(),
        collection: args.collection.clone(),
        points,
        dags,
        report_points,
        flags: RwLock::new(Snapshot::default()),
        counts: Mutex::new(HashMap::new()),
        shadow: tx,
        shadow_sample: args.shadow_sample,
        warehouse_sample: args.warehouse_sample,
        token,
        slots: Arc::new(Semaphore::new(args.max_concurrent.get())),
        request_timeout: args.request_timeout,
    });
    let version = store::version(&app.wh)
        .await
        .context("reading the cutover flags")?;
    app.reload(version)
        .await
        .context("reading the cutover flags")?;
    tokio::spawn(watch_flags(Arc::clone(&app), args.poll));
    tokio::spawn(flush_counts(Arc::clone(&app), args.flush_every));
    shadow::start(Arc::clone(&app), rx, args.shadow_workers.get());
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listening on {}", args.addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(target: LOG_TARGET, %addr, "serving the analytics read API");
    eprintln!(
        "serving http://{addr}/ (reports at /v1/reports/NAME, OpenFeature at /ofrep/v1, metrics at /metrics); Ctrl-C stops"
    );
    let (_stop_tx, mut stop) = commands::stop_on_signal("stopping");
    let limits = crate::metrics::Limits {
        connections: args.max_concurrent.get() * 4,
        header_timeout: Duration::from_secs(5),
        connection_timeout: args.request_timeout + Duration::from_secs(60),
        grace: args.request_timeout + Duration::from_secs(5),
    };
    tokio::select! {
        () = crate::metrics::serve_router(listener, router(Arc::clone(&app)), limits) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    app.flush().await;
    Ok(ExitCode::SUCCESS)
}

/// Reads the flags again whenever their version changes.
async fn watch_flags(app: Arc<App>, every: Duration) {
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        let result = match store::version(&app.wh).await {
            Ok(v) if v == app.version() => Ok(()),
            Ok(v) => app.reload(v).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(target: LOG_TARGET, "the flags can be read again");
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(target: LOG_TARGET, error = %workflows::redact::redact(&workflows::redact::chain(&e)), "cannot read the flags; serving by the last ones read");
            }
            _ => {}
        }
    }
}

async fn flush_counts(app: Arc<App>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        app.flush().await;
    }
}

/// Every route, behind the token and the limits.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page::page))
        .route("/v1/reports/{name}", get(reports::report))
        .route("/v1/flags", get(page::flags))
        .route("/v1/flags/{data_point}", get(page::flag))
        .route("/v1/feed", get(page::feed))
        .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep::one))
        .route("/ofrep/v1/evaluate/flags", post(ofrep::bulk))
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(scrape))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            guard,
        ))
        .with_state(app)
}

/// The bearer token, then a slot among the requests answered at once, then
/// the request within its time.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
            )
                .into_response();
        }
    }
    let Ok(_slot) = Arc::clone(&app.slots).try_acquire_owned() else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests at once; retry in a second".into(),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    match tokio::time::timeout(app.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {}; it was stopped",
                workflows::duration::format(app.request_timeout)
            ),
        ),
    }
}

/// Compares two secrets in a time that does not depend on where they
/// differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON error: `{"error": "..."}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    /// What is wrong, in words.
    pub error: String,
}

/// An error response with a JSON body.
pub fn error(status: StatusCode, message: String) -> Response {
    json(
        status,
        &ApiError {
            error: workflows::redact::redact(&message).into_owned(),
        },
    )
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

async fn not_found(req: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such path: {}; the API is described at /openapi.json",
            req.uri().path()
        ),
    )
}

async fn scrape(State(app): State<Arc<App>>) -> Response {
    crate::metrics::scrape(&app.wh).await.into_response()
}
