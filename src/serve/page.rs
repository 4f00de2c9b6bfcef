//! `GET /`: the status page a person looks at, rendered on the server (no
//! script): per data point its flag and rollout, the verdict, the shadow
//! mismatch rate per day (a chart), the reconciliation history and the
//! last runs of its DAGs; the feed's lag. Every figure links to the JSON
//! it comes from (`/v1/flags/{data_point}`, `/v1/feed`).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tasks::consume::ConsumerStatus;
use tasks::flags::overview::{self, Overview};
use tasks::html::escape as esc;
use workflows::ledger::RunRecord;

use super::{error, json, App};

/// A data point's cutover, with the last runs of its DAGs.
#[derive(Debug, Serialize)]
pub struct Detail {
    /// Where the cutover stands.
    #[serde(flatten)]
    pub overview: Overview,
    /// The last runs of the data point's DAGs, newest first.
    pub runs: Vec<RunRecord>,
}

impl App {
    async fn detail(&self, point: &str) -> Result<Detail, String> {
        let Some((_, cutover)) = self.points.iter().find(|(p, _)| p == point) else {
            return Err(format!("`{point}` is not a data point with a flag"));
        };
        let now = chrono::Utc::now().timestamp_millis();
        let overview = overview::overview(&self.wh, point, cutover, now)
            .await
            .map_err(|e| workflows::redact::chain(&e))?;
        let mut runs = Vec::new();
        for dag in self.dags.get(point).into_iter().flatten() {
            runs.extend(
                self.wh
                    .ledger()
                    .runs(Some(dag), 5)
                    .await
                    .map_err(|e| workflows::redact::chain(&e))?,
            );
        }
        runs.sort_by(|a, b| b.started_at.cmp(&a.started_at));
        runs.truncate(5);
        Ok(Detail { overview, runs })
    }
}

/// Every flag.
#[utoipa::path(get, path = "/v1/flags", tag = "flags",
    responses((status = 200, description = "Every data point's flag and reports", body = Vec<serde_json::Value>)))]
pub async fn flags(State(app): State<Arc<App>>) -> Response {
    let out: Vec<serde_json::Value> = app
        .points
        .iter()
        .filter_map(|(p, c)| {
            app.flag(p)
                .map(|f| serde_json::json!({ "flag": f, "reports": c.reports }))
        })
        .collect();
    json(StatusCode::OK, &out)
}

/// One data point's cutover: its flag, counts, comparisons,
/// reconciliations, next step and verdict, and its DAGs' last runs.
#[utoipa::path(get, path = "/v1/flags/{data_point}", tag = "flags",
    params(("data_point" = String, Path, description = "The data point")),
    responses(
        (status = 200, description = "Where the data point's cutover stands", body = serde_json::Value),
        (status = 404, description = "No such data point", body = super::ApiError),
        (status = 503, description = "The warehouse could not be read", body = super::ApiError),
    ))]
pub async fn flag(State(app): State<Arc<App>>, Path(point): Path<String>) -> Response {
    if app.flag(&point).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!("`{point}` is not a data point with a flag"),
        );
    }
    match app.detail(&point).await {
        Ok(d) => json(StatusCode::OK, &d),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The live feed's consumers and their lag.
#[utoipa::path(get, path = "/v1/feed", tag = "flags",
    responses(
        (status = 200, description = "The feed consumers, with their lag", body = Vec<serde_json::Value>),
        (status = 503, description = "The warehouse could not be read", body = super::ApiError),
    ))]
pub async fn feed(State(app): State<Arc<App>>) -> Response {
    match ConsumerStatus::all(&app.wh).await {
        Ok(c) => json(StatusCode::OK, &c),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            workflows::redact::chain(&e),
        ),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}\
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ccc}\
.state{display:inline-block;padding:.1em .6em;border-radius:.8em;background:#eee;font-weight:bold}\
.legacy{background:#ddd}.shadow{background:#fde68a}.warehouse{background:#bfdbfe}.retired{background:#bbf7d0}\
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.2em .8em;border-bottom:1px solid #eee;text-align:left}\
.differs,.failed,.mismatch{color:#b91c1c;font-weight:bold}.equal,.succeeded{color:#15803d}\
.advice li:first-child{font-weight:bold}svg text{font-size:10px;fill:#555}";

/// The status page.
pub async fn page(State(app): State<Arc<App>>) -> Response {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>cutover: the analytics cutover</title><style>{STYLE}</style></head><body>\
         <h1>The analytics cutover</h1><p>One flag per data point: legacy, shadow, warehouse (a rollout share), retired. \
         Figures link to their JSON; <a href=\"/v1/flags\">every flag</a>, <a href=\"/openapi.json\">the API</a>, <a href=\"/metrics\">metrics</a>.</p>"
    );
    for (point, _) in &app.points {
        match app.detail(point).await {
            Ok(d) => section(&mut html, point, &d),
            Err(e) => {
                let _ = write!(
                    html,
                    "<section id=\"{p}\"><h2>{p}</h2><p class=\"failed\">cannot be read: {}</p></section>",
                    esc(&workflows::redact::redact(&e)),
                    p = esc(point)
                );
            }
        }
    }
    html.push_str("<h2 id=\"feed\">The live feed</h2>");
    match ConsumerStatus::all(&app.wh).await {
        Ok(consumers) if consumers.is_empty() => {
            html.push_str("<p>No feed consumer has run (<a href=\"/v1/feed\">JSON</a>).</p>");
        }
        Ok(consumers) => {
            html.push_str("<table><tr><th>consumer</th><th>host</th><th>state</th><th>lag</th><th>updated</th></tr>");
            for c in consumers {
                let lag = c.lag_ms.map_or_else(
                    || "-".to_owned(),
                    |ms| format!("{:.1} s", ms as f64 / 1000.0),
                );
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/v1/feed\">{lag}</a></td><td>{}</td></tr>",
                    esc(&c.consumer_id),
                    esc(&c.host),
                    esc(&c.state.to_string()),
                    esc(&c.updated_at)
                );
            }
            html.push_str("</table>");
        }
        Err(e) => {
            let _ = write!(
                html,
                "<p class=\"failed\">cannot be read: {}</p>",
                esc(&workflows::redact::redact(&e.to_string()))
            );
        }
    }
    html.push_str("</body></html>");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

fn section(html: &mut String, point: &str, d: &Detail) {
    let o = &d.overview;
    let p = esc(point);
    let link = format!("/v1/flags/{p}");
    let _ = write!(
        html,
        "<section id=\"{p}\"><h2>{p}</h2><p>Flag: <a href=\"{link}\"><span class=\"state {}\" data-flag=\"{p}\">{}</span></a> {} \
         &middot; reports {}</p><ul class=\"advice\">",
        o.flag.state.name(),
        esc(&o.flag.describe()),
        if o.flag.version == 0 {
            "(never changed)".to_owned()
        } else {
            format!("since {}", esc(&o.flag.since))
        },
        esc(&o.reports.join(", "))
    );
    for a in &o.advice {
        let _ = write!(html, "<li>{}</li>", esc(a));
    }
    let _ = write!(
        html,
        "</ul><p>Reads answered by the legacy analytics: <a href=\"{link}\">{} in 24 h, {} in 7 days, {} in 30 days</a>; \
         by the warehouse: <a href=\"{link}\">{} in 24 h</a>. Shadow comparisons within {}: <a href=\"{link}\"><span class=\"comparisons\">{}</span>, \
         <span class=\"mismatches\">{}</span> mismatched</a>.</p>",
        o.legacy_reads.day,
        o.legacy_reads.week,
        o.legacy_reads.month,
        o.warehouse_reads.day,
        workflows::duration::format(o.evidence_required.within),
        o.comparisons,
        o.mismatches
    );
    chart(html, &link, o);
    html.push_str("<h3>Reconciliations</h3>");
    if o.reconciliations.is_empty() {
        let _ = write!(
            html,
            "<p>None yet (<code>cutover reconcile</code>); <a href=\"{link}\">JSON</a>.</p>"
        );
    } else {
        html.push_str("<table><tr><th>report</th><th>started</th><th>result</th><th>id</th></tr>");
        for r in &o.reconciliations {
            let status = if r.equal { "equal" } else { "differs" };
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td class=\"{status}\"><a href=\"{link}\">{status}</a></td><td>{}</td></tr>",
                esc(&r.report),
                esc(&r.started_at),
                esc(&r.id)
            );
        }
        html.push_str("</table>");
    }
    html.push_str("<h3>Last runs</h3>");
    if d.runs.is_empty() {
        let _ = write!(html, "<p>No run yet; <a href=\"{link}\">JSON</a>.</p>");
    } else {
        html.push_str(
            "<table><tr><th>DAG</th><th>started</th><th>state</th><th>rows written</th></tr>",
        );
        for r in &d.runs {
            let state = r.state.as_str();
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td class=\"{state}\"><a href=\"{link}\">{state}</a></td><td>{}</td></tr>",
                esc(&r.dag),
                esc(&r.started_at),
                r.rows_written
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</section>");
}

/// The shadow mismatch rate per day, as an SVG bar chart.
fn chart(html: &mut String, link: &str, o: &Overview) {
    let days: Vec<_> = o
        .daily
        .iter()
        .filter(|d| d.counts.comparisons > 0)
        .collect();
    if days.is_empty() {
        let _ = write!(
            html,
            "<p class=\"chart\">No shadow comparison in the last 14 days (<a href=\"{link}\">JSON</a>).</p>"
        );
        return;
    }
    let (w, h, bar) = (60 * days.len() + 40, 140, 40);
    let _ = write!(
        html,
        "<h3>Shadow mismatch rate per day</h3><a href=\"{link}\"><svg class=\"chart\" role=\"img\" aria-label=\"shadow mismatch rate per day\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <line x1=\"30\" y1=\"110\" x2=\"{}\" y2=\"110\" stroke=\"#999\"/>",
        w - 5
    );
    for (i, d) in days.iter().enumerate() {
        let rate = d.counts.mismatches as f64 / d.counts.comparisons as f64;
        let height = (rate * 100.0)
            .round()
            .max(if d.counts.mismatches > 0 { 2.0 } else { 0.0 });
        let x = 35 + i * 60;
        let _ = write!(
            html,
            "<rect x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{height}\" fill=\"#b91c1c\"><title>{}: {} of {} mismatched</title></rect>\
             <text x=\"{x}\" y=\"{}\">{:.1}%</text><text x=\"{x}\" y=\"125\">{}</text>",
            110.0 - height,
            esc(&d.day),
            d.counts.mismatches,
            d.counts.comparisons,
            105.0 - height,
            rate * 100.0,
            esc(&d.day[5..])
        );
    }
    html.push_str("</svg></a>");
}
