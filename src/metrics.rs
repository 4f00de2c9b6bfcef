//! The metrics endpoint (`--metrics-addr`): `GET /metrics` in the
//! Prometheus text format. Before each scrape it refreshes, from the
//! warehouse, the runs by state, each extract's watermark lag and each feed
//! consumer's lag; the rest ([`workflows::metrics`]) is what this process
//! measured as it ran.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use sqlx::Row;
use workflows::metrics::metrics;
use workflows::sql::text;

use tasks::consume::ConsumerStatus;
use tasks::Warehouse;

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` on `addr` until the process ends.
///
/// # Errors
/// The address could not be bound.
pub async fn serve(addr: SocketAddr, warehouse: Warehouse) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving metrics at /metrics");
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let warehouse = warehouse.clone();
            async move { scrape(&warehouse).await }
        }),
    );
    tokio::spawn(serve_router(listener, app, Limits::default()));
    Ok(())
}

/// What one HTTP server accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed at once.
    pub connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long one connection may stay open.
    pub connection_timeout: Duration,
    /// How long the answer under way may take once a connection is old
    /// enough to close.
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 64,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(60),
            grace: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` (HTTP/1) with `limits`: a client that sends
/// its headers slowly is cut off; a connection open too long is closed
/// after the answer under way (a keep-alive client opens another); and
/// connections beyond the limit are closed at once.
pub async fn serve_router(listener: tokio::net::TcpListener, app: Router, limits: Limits) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let permits = Arc::new(Semaphore::new(limits.connections));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!("too many connections; closing one");
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = tokio::time::sleep(limits.connection_timeout) => {
                    // Old enough: the request under way (if any) is
                    // answered with `Connection: close`, then the
                    // connection ends; one that hangs on is cut.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.grace, conn).await;
                }
            }
        });
    }
}

pub async fn scrape(warehouse: &Warehouse) -> impl IntoResponse {
    // One scrape at a time: a refresh clears the gauges before setting them.
    static SCRAPING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = SCRAPING.lock().await;
    match refresh(warehouse).await {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            workflows::redact::redact(&metrics().encode()).into_owned(),
        ),
        Err(e) => {
            // The database's error goes to the log, not to the client.
            tracing::warn!(error = %workflows::redact::redact(&e.to_string()), "metrics: could not read the warehouse");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "cannot read the warehouse; the cutover log says why\n".to_owned(),
            )
        }
    }
}

/// Sets the gauges that come from the warehouse.
///
/// # Errors
/// A read failed.
pub async fn refresh(warehouse: &Warehouse) -> Result<(), sqlx::Error> {
    let m = metrics();
    let runs =
        sqlx::query("SELECT dag, state, COUNT(*) AS n FROM cutover_runs GROUP BY dag, state")
            .fetch_all(&warehouse.pool)
            .await?;
    m.runs.clear();
    for r in &runs {
        m.runs
            .get_or_create(&vec![
                ("dag", string(r, "dag")?),
                ("state", string(r, "state")?),
            ])
            .set(r.try_get("n")?);
    }
    let now_ms = Utc::now().timestamp_millis();
    let watermarks = sqlx::query("SELECT dag, task, ts_ms FROM cutover_watermarks")
        .fetch_all(&warehouse.pool)
        .await?;
    m.watermark_lag.clear();
    for r in &watermarks {
        let ts: i64 = r.try_get("ts_ms")?;
        m.watermark_lag
            .get_or_create(&vec![
                ("dag", string(r, "dag")?),
                ("task", string(r, "task")?),
            ])
            .set((now_ms - ts) as f64 / 1000.0);
    }
    m.consumer_lag.clear();
    for c in ConsumerStatus::all(warehouse).await? {
        // A stopped consumer has no lag; its row stays for `cutover status`.
        if c.state == tasks::consume::ConsumerState::Stopped {
            continue;
        }
        if let Some(lag) = c.lag_ms {
            m.consumer_lag
                .get_or_create(&vec![
                    ("consumer", c.consumer_id.clone()),
                    ("host", c.host.clone()),
                    ("state", c.state.to_string()),
                ])
                .set(lag as f64 / 1000.0);
        }
    }
    Ok(())
}

fn string(r: &sqlx::any::AnyRow, column: &str) -> Result<String, sqlx::Error> {
    Ok(text(r, column)?.unwrap_or_default())
}
