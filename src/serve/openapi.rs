//! `/openapi.json`: the API described from the handlers themselves.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value as Json;
use utoipa::OpenApi;

use super::{json, App};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cutover",
        description = "The analytics read API, routed by the cutover flags, and the flags over the OpenFeature Remote Evaluation Protocol. Read-only: flags change with `cutover flags set`."
    ),
    paths(
        super::reports::report,
        super::ofrep::one,
        super::ofrep::bulk,
        super::page::flags,
        super::page::flag,
        super::page::feed,
    ),
    components(schemas(
        super::ApiError,
        super::reports::Reports,
        super::ofrep::Evaluation,
        super::ofrep::EvaluationError,
        super::ofrep::EvaluationRequest,
        super::ofrep::EvaluationContext,
        super::ofrep::BulkEvaluation
    ))
)]
struct Api;

/// The OpenAPI document, its flag parameters narrowed to the data points
/// the DAG files declare (known only at run time).
pub async fn document(State(app): State<Arc<App>>) -> Response {
    let mut doc = serde_json::to_value(Api::openapi()).unwrap_or_default();
    let points: Vec<&str> = app.points.iter().map(|(p, _)| p.as_str()).collect();
    if let Some(paths) = doc.get_mut("paths").and_then(Json::as_object_mut) {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                let params = op.get_mut("parameters").and_then(Json::as_array_mut);
                for p in params.into_iter().flatten() {
                    if matches!(p["name"].as_str(), Some("key" | "data_point")) {
                        p["schema"] = serde_json::json!({ "type": "string", "enum": points });
                    }
                }
            }
        }
    }
    json(StatusCode::OK, &doc)
}
