//! `GET /v1/reports/{name}`: a report from the side its data point's flag
//! names, with the comparison queued when the flag asks for one.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value as Json;
use tasks::flags::{Side, State as FlagState};
use tasks::reports::{self, legacy, Format, Grain, Range, Report, ReportName};
use workflows::metrics::metrics;

use super::{error, App};

/// The header naming the targeting key a rollout share is taken by.
pub const TARGETING_KEY: &str = "cutover-targeting-key";

/// The query of a report read.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// Only events at or after this instant (RFC 3339, or YYYY-MM-DD for
    /// midnight UTC).
    #[param(
        pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))?$"
    )]
    pub from: Option<String>,
    /// Only events before this instant (RFC 3339 or YYYY-MM-DD).
    #[param(
        pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))?$"
    )]
    pub to: Option<String>,
    /// Only this presentation's rows (views_daily, slide_engagement).
    pub presentation_id: Option<String>,
    /// `json` (the default) or `csv`; `Accept: text/csv` asks for CSV too.
    #[param(pattern = "^(json|csv)$")]
    pub format: Option<String>,
}

/// The reports, as the OpenAPI document names them.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum Reports {
    /// Views and unique viewers per day and presentation.
    ViewsDaily,
    /// Views and dwell time per presentation and slide.
    SlideEngagement,
    /// Shares per day and channel.
    SharesDaily,
    /// Sessions started and completed, and their duration, per day and device.
    SessionsDaily,
    /// Views per day and the viewer's plan at the time of the view.
    ViewsByPlan,
}

/// A report read, checked.
#[derive(Debug, Clone)]
pub struct Read {
    /// The report.
    pub report: ReportName,
    /// The time range.
    pub range: Range,
    /// The presentation asked for.
    pub presentation_id: Option<String>,
    /// The query as given, for the record of a mismatch.
    pub query: ReportQuery,
}

impl Read {
    /// The request as recorded with a mismatch.
    pub fn describe(&self, key: &str, answered: Side) -> Json {
        serde_json::json!({
            "report": self.report.name(),
            "from": self.query.from,
            "to": self.query.to,
            "presentation_id": self.presentation_id,
            "targeting_key": key,
            "answered_by": answered.name(),
        })
    }
}

fn instant(field: &str, text: &Option<String>) -> Result<Option<i64>, String> {
    text.as_deref()
        .map(|s| {
            crate::commands::parse_instant(s).map_err(|_| {
                format!("{field}: `{s}` is not a date (YYYY-MM-DD) or an RFC 3339 instant")
            })
        })
        .transpose()
}

/// Checks a read: the report exists, the bounds parse and are in order, a
/// filter applies to the report.
pub fn check(name: &str, query: ReportQuery) -> Result<Read, (StatusCode, String)> {
    let report = ReportName::from_name(name).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!(
                "unknown report `{name}`; the reports are {}",
                ReportName::NAMES.join(", ")
            ),
        )
    })?;
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let range = Range {
        from_ms: instant("from", &query.from).map_err(bad)?,
        to_ms: instant("to", &query.to).map_err(bad)?,
    };
    if let (Some(f), Some(t)) = (range.from_ms, range.to_ms) {
        if f >= t {
            return Err(bad(format!(
                "from ({}) must be before to ({})",
                query.from.as_deref().unwrap_or_default(),
                query.to.as_deref().unwrap_or_default()
            )));
        }
    }
    if query.presentation_id.is_some() && !report.columns().contains(&"presentation_id") {
        return Err(bad(format!(
            "presentation_id: {name} has no presentation_id; it filters views_daily and slide_engagement"
        )));
    }
    if let Some(f) = &query.format {
        if f != "json" && f != "csv" {
            return Err(bad(format!("format: `{f}` is not json or csv")));
        }
    }
    Ok(Read {
        report,
        range,
        presentation_id: query.presentation_id.clone(),
        query,
    })
}

impl App {
    /// The report from one side.
    pub async fn compute(&self, read: &Read, side: Side) -> Result<Report, String> {
        let m = metrics();
        let report = match side {
            Side::Legacy => {
                m.legacy_computations
                    .get_or_create(&vec![("report", read.report.name().to_owned())])
                    .inc();
                let events = legacy::Events {
                    source: &self.source,
                    database: &self.database,
                    collection: &self.collection,
                };
                reports::from_legacy(&events, read.report, read.range, Grain::Report)
                    .await
                    .map_err(|e| {
                        format!(
                            "the legacy analytics failed: {}",
                            workflows::redact::chain(&e)
                        )
                    })?
            }
            Side::Warehouse => {
                reports::from_warehouse(&self.wh, read.report, read.range, Grain::Report)
                    .await
                    .map_err(|e| {
                        format!("the warehouse failed: {}", workflows::redact::chain(&e))
                    })?
            }
        };
        Ok(match &read.presentation_id {
            None => report,
            Some(id) => {
                let at = report
                    .columns
                    .iter()
                    .position(|c| *c == "presentation_id")
                    .unwrap_or(0);
                Report {
                    rows: report
                        .rows
                        .into_iter()
                        .filter(|r| r.get(at).and_then(Json::as_str) == Some(id.as_str()))
                        .collect(),
                    ..report
                }
            }
        })
    }
}

/// A report, from the side the flag names.
#[utoipa::path(
    get,
    path = "/v1/reports/{name}",
    tag = "reports",
    params(
        ("name" = Reports, Path, description = "The report"),
        ("cutover-targeting-key" = Option<String>, Header, description = "The key a warehouse rollout share is taken by (a user or account id); without it each request is its own"),
        ReportQuery,
    ),
    responses(
        (status = 200, description = "The report: an array of objects, one per group, with the event model's field names. Headers Cutover-Source (legacy or warehouse) and Cutover-Flag (the data point's flag) say who answered.",
            content((Vec<serde_json::Value> = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A parameter is wrong; the error says which", body = super::ApiError),
        (status = 401, description = "A bearer token is required"),
        (status = 404, description = "No such report", body = super::ApiError),
        (status = 503, description = "A side could not answer, the server is busy, or the request took too long", body = super::ApiError),
    ),
)]
pub async fn report(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<ReportQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let name = match name {
        Ok(Path(n)) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}; the parameters are from, to, presentation_id and format",
                    e.body_text()
                ),
            )
        }
    };
    let read = match check(&name, query) {
        Ok(r) => r,
        Err((status, m)) => return error(status, m),
    };
    let csv = read.query.format.as_deref() == Some("csv")
        || (read.query.format.is_none()
            && headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/csv")));
    let key = headers
        .get(TARGETING_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let point = app.report_points.get(&read.report).cloned();
    let flag = point.as_deref().and_then(|p| app.flag(p));
    let side = flag.as_ref().map_or(Side::Legacy, |f| f.side(&key));
    let started = Instant::now();
    let answer = app.compute(&read, side).await;
    let m = metrics();
    let labels = |status: &str| {
        vec![
            ("report", read.report.name().to_owned()),
            ("source", side.name().to_owned()),
            ("status", status.to_owned()),
        ]
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(target: crate::commands::LOG_TARGET, report = read.report.name(), error = %workflows::redact::redact(&e), "a report read failed");
            m.report_requests.get_or_create(&labels("503")).inc();
            return error(StatusCode::SERVICE_UNAVAILABLE, e);
        }
    };
    m.report_requests.get_or_create(&labels("200")).inc();
    m.report_seconds
        .get_or_create(&vec![
            ("report", read.report.name().to_owned()),
            ("source", side.name().to_owned()),
        ])
        .observe(started.elapsed().as_secs_f64());
    let body = answer.render(if csv { Format::Csv } else { Format::Json });
    if let (Some(point), Some(flag)) = (&point, &flag) {
        app.count_read(point, side);
        let sample = match flag.state {
            FlagState::Shadow => app.shadow_sample,
            FlagState::Warehouse => app.warehouse_sample,
            FlagState::Legacy | FlagState::Retired => 0.0,
        };
        if sample > 0.0 && rand::random::<f64>() < sample {
            app.enqueue(super::shadow::Job {
                point: point.clone(),
                read: read.clone(),
                key: key.clone(),
                answered: side,
                answer,
            });
        }
    }
    let mut response = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            if csv {
                "text/csv; charset=utf-8"
            } else {
                "application/json"
            },
        )],
        body,
    )
        .into_response();
    let h = response.headers_mut();
    h.insert("cutover-source", HeaderValue::from_static(side.name()));
    let flag_text = flag
        .as_ref()
        .map_or_else(|| "none".to_owned(), |f| f.describe());
    if let Ok(v) = HeaderValue::from_str(&flag_text) {
        h.insert("cutover-flag", v);
    }
    if let Some(p) = point.as_deref().and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert("cutover-data-point", p);
    }
    response
}
