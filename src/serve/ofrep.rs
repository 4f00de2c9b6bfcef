//! The flags over the OpenFeature Remote Evaluation Protocol (OFREP), so
//! that an application reads them with its own OpenFeature SDK and an OFREP
//! provider. A flag's key is its data point; its value is the side the
//! application should read for the context's `targetingKey` (`legacy` or
//! `warehouse`), its variant the state, its reason `SPLIT` while a rollout
//! share divides the keys and `STATIC` otherwise. Each evaluation counts as
//! a read of the side it names, so a retirement sees an application that
//! still asks for the legacy side.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value as Json;
use tasks::flags::{Flag, State as FlagState};
use workflows::metrics::metrics;

use super::{json, App};

/// The evaluation context: the `targetingKey` is required (the rollout
/// share is taken by it); other attributes are accepted and ignored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EvaluationContext {
    /// The key the rollout share is taken by: a user or account id.
    #[serde(rename = "targetingKey")]
    #[schema(min_length = 1)]
    pub targeting_key: String,
}

/// An evaluation request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EvaluationRequest {
    /// The context.
    pub context: EvaluationContext,
}

/// One flag's evaluation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Evaluation {
    /// The flag: the data point.
    pub key: String,
    /// The side to read for the targeting key: `legacy` or `warehouse`.
    pub value: String,
    /// The flag's state: legacy, shadow, warehouse or retired.
    pub variant: String,
    /// STATIC, or SPLIT while a rollout share divides the keys.
    pub reason: String,
    /// The flag's state, rollout share, since when, version and reports.
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<&'static str, Json>,
}

/// An evaluation error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EvaluationError {
    /// The flag, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// PARSE_ERROR, TARGETING_KEY_MISSING, INVALID_CONTEXT or
    /// FLAG_NOT_FOUND.
    #[serde(rename = "errorCode")]
    pub error_code: String,
    /// What is wrong, in words.
    #[serde(rename = "errorDetails")]
    pub error_details: String,
}

/// Every flag's evaluation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkEvaluation {
    /// One per data point with a `[cutover]`.
    pub flags: Vec<Evaluation>,
}

fn failure(status: StatusCode, key: Option<&str>, code: &str, details: String) -> Response {
    json(
        status,
        &EvaluationError {
            key: key.map(str::to_owned),
            error_code: code.to_owned(),
            error_details: details,
        },
    )
}

/// Why a request body is refused: an OFREP error code and the details.
type Refusal = (&'static str, String);

/// The targeting key of a request body, or why it is refused.
fn targeting_key(body: &[u8]) -> Result<String, Refusal> {
    let value: Json = serde_json::from_slice(body).map_err(|e| {
        (
            "PARSE_ERROR",
            format!(
                "the body is not JSON ({e}); send {{\"context\": {{\"targetingKey\": \"...\"}}}}"
            ),
        )
    })?;
    let Some(context) = value.get("context").and_then(Json::as_object) else {
        return Err((
            "INVALID_CONTEXT",
            "the body needs a `context` object: {\"context\": {\"targetingKey\": \"...\"}}".into(),
        ));
    };
    match context.get("targetingKey") {
        Some(Json::String(k)) if !k.is_empty() => Ok(k.clone()),
        Some(Json::String(_) | Json::Null) | None => Err((
            "TARGETING_KEY_MISSING",
            "the context needs a `targetingKey` (a user or account id): the warehouse's rollout share is taken by it".into(),
        )),
        Some(_) => Err((
            "INVALID_CONTEXT",
            "the context's `targetingKey` must be a string".into(),
        )),
    }
}

impl App {
    /// Evaluates a flag for a targeting key, and counts the read it names.
    fn evaluate(&self, flag: &Flag, key: &str) -> Evaluation {
        let side = flag.side(key);
        self.count_read(&flag.data_point, side);
        metrics()
            .flag_evaluations
            .get_or_create(&vec![
                ("flag", flag.data_point.clone()),
                ("value", side.name().to_owned()),
            ])
            .inc();
        let split = flag.state == FlagState::Warehouse && flag.rollout > 0 && flag.rollout < 100;
        let reports = self
            .points
            .iter()
            .find(|(p, _)| *p == flag.data_point)
            .map(|(_, c)| c.reports.join(","))
            .unwrap_or_default();
        let mut metadata = BTreeMap::new();
        metadata.insert("state", Json::from(flag.state.name()));
        metadata.insert("rollout", Json::from(flag.rollout));
        metadata.insert("since", Json::from(flag.since.clone()));
        metadata.insert("version", Json::from(flag.version));
        metadata.insert("reports", Json::from(reports));
        Evaluation {
            key: flag.data_point.clone(),
            value: side.name().to_owned(),
            variant: flag.state.name().to_owned(),
            reason: if split { "SPLIT" } else { "STATIC" }.to_owned(),
            metadata,
        }
    }
}

/// Evaluates one flag.
#[utoipa::path(
    post,
    path = "/ofrep/v1/evaluate/flags/{key}",
    tag = "OpenFeature",
    params(("key" = String, Path, description = "The flag: a data point (views, engagement, shares, sessions)")),
    request_body(content = EvaluationRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The evaluation", body = Evaluation),
        (status = 400, description = "The body or its context is wrong", body = EvaluationError),
        (status = 401, description = "A bearer token is required"),
        (status = 404, description = "No such flag", body = EvaluationError),
    ),
)]
pub async fn one(State(app): State<Arc<App>>, Path(key): Path<String>, body: Bytes) -> Response {
    let Some(flag) = app.flag(&key) else {
        let names: Vec<&str> = app.points.iter().map(|(p, _)| p.as_str()).collect();
        return failure(
            StatusCode::NOT_FOUND,
            Some(&key),
            "FLAG_NOT_FOUND",
            format!("`{key}` is not a flag; the flags are {}", names.join(", ")),
        );
    };
    let targeting = match targeting_key(&body) {
        Ok(k) => k,
        Err((code, details)) => return failure(StatusCode::BAD_REQUEST, Some(&key), code, details),
    };
    json(StatusCode::OK, &app.evaluate(&flag, &targeting))
}

/// Evaluates every flag; answers 304 when the flags are as the ETag the
/// client sends in If-None-Match says.
#[utoipa::path(
    post,
    path = "/ofrep/v1/evaluate/flags",
    tag = "OpenFeature",
    params(("If-None-Match" = Option<String>, Header, description = "The ETag of the last answer")),
    request_body(content = EvaluationRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Every flag's evaluation, with an ETag", body = BulkEvaluation),
        (status = 304, description = "Nothing changed since the ETag given"),
        (status = 400, description = "The body or its context is wrong", body = EvaluationError),
        (status = 401, description = "A bearer token is required"),
    ),
)]
pub async fn bulk(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let targeting = match targeting_key(&body) {
        Ok(k) => k,
        Err((code, details)) => return failure(StatusCode::BAD_REQUEST, None, code, details),
    };
    let (version, count) = app.version();
    let etag = format!(
        "\"{:016x}\"",
        xxhash_rust::xxh3::xxh3_64(format!("{version}\u{1f}{count}\u{1f}{targeting}").as_bytes())
    );
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\""));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
    }
    let flags = app
        .points
        .iter()
        .filter_map(|(p, _)| app.flag(p))
        .map(|f| app.evaluate(&f, &targeting))
        .collect();
    let mut r = json(StatusCode::OK, &BulkEvaluation { flags });
    r.headers_mut().insert(header::ETAG, etag_value);
    r
}
