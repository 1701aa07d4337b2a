//! `/twins/{id}` (get, patch, replace) and `/twins/{id}/methods` (direct methods).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use weir_core::DeviceRecord;
use weir_storage::registry::twin_etag;

use super::error::ApiError;
use super::{ApiState, with_etag};

pub use weir_hub::documents::twin_json;

fn respond(s: &ApiState, rec: &DeviceRecord) -> Response {
    let body = twin_json(
        rec,
        s.hub.is_connected(&rec.device_id),
        s.hub.c2d_pending(&rec.device_id),
    );
    with_etag(StatusCode::OK, body, &twin_etag(rec))
}

pub async fn get(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = s.device(&id)?;
    Ok(respond(&s, &rec))
}

fn body_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

async fn change(
    s: Arc<ApiState>,
    id: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
    replace: bool,
) -> Result<Response, ApiError> {
    let doc = body_json(&body)?;
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let tags = doc.get("tags").filter(|t| !t.is_null()).cloned();
    let desired = doc
        .pointer("/properties/desired")
        .filter(|d| !d.is_null())
        .cloned()
        .map(|mut d| {
            // Services may echo the read-only parts back; they are not properties.
            if let Value::Object(m) = &mut d {
                m.remove("$metadata");
                m.remove("$version");
            }
            d
        });
    if doc.pointer("/properties/reported").is_some_and(|r| {
        !r.is_null()
            && r.as_object()
                .is_some_and(|m| m.keys().any(|k| !k.starts_with('$')))
    }) {
        return Err(ApiError::bad_request(
            "reported properties are set by the device, not through the service API",
        ));
    }
    let rec = s
        .hub
        .update_twin(&id, tags, desired, replace, if_match)
        .await?;
    Ok(respond(&s, &rec))
}

pub async fn patch(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    change(s, id, headers, body, false).await
}

pub async fn replace(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    change(s, id, headers, body, true).await
}

/// `POST /twins/{id}/methods`: 200 `{status, payload}`, 404 when the device is offline,
/// 504 when it does not answer within `responseTimeoutInSeconds` (5–300, default 30).
pub async fn invoke(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let doc = body_json(&body)?;
    let method = doc
        .get("methodName")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty() && !m.contains(['/', '#', '+', '?']))
        .ok_or_else(|| ApiError::bad_request("methodName is required and may not contain / # + ?"))?
        .to_owned();
    let timeout = match doc.get("responseTimeoutInSeconds") {
        None | Some(Value::Null) => 30,
        Some(v) => v
            .as_u64()
            .filter(|t| (5..=300).contains(t))
            .ok_or_else(|| {
                ApiError::bad_request("responseTimeoutInSeconds must be between 5 and 300")
            })?,
    };
    s.device(&id)?;
    let payload = doc.get("payload").cloned().unwrap_or(Value::Null);
    let (status, payload) = s
        .hub
        .invoke(&id, &method, &payload, Duration::from_secs(timeout))
        .await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "status": status, "payload": payload })),
    )
        .into_response())
}
