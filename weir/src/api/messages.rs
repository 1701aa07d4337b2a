//! Cloud-to-device messages: send, purge, and the feedback services read.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use weir_hub::NewC2dMessage;
use weir_storage::c2d::AckMode;

use super::ApiState;
use super::error::ApiError;

fn h<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// `POST /devices/{id}/messages/deviceBound`: the body is the payload; headers carry
/// `Content-Type`, `Content-Encoding`, `iothub-messageid`, `iothub-correlationid`,
/// `iothub-expiry` (RFC 3339), `iothub-ack` and `iothub-app-<name>` properties.
pub async fn send(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    s.device(&id)?;
    let expiry_ms = match h(&headers, "iothub-expiry") {
        None => None,
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|_| ApiError::bad_request("iothub-expiry must be an RFC 3339 time"))?
                .timestamp_millis(),
        ),
    };
    let ack = match h(&headers, "iothub-ack") {
        None => AckMode::None,
        Some(a) => AckMode::parse(a).ok_or_else(|| {
            ApiError::bad_request("iothub-ack must be none, positive, negative or full")
        })?,
    };
    let properties: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("iothub-app-")?;
            Some((name.to_owned(), v.to_str().ok()?.to_owned()))
        })
        .collect();
    s.hub
        .send_c2d(NewC2dMessage {
            device_id: id,
            message_id: h(&headers, "iothub-messageid").map(str::to_owned),
            correlation_id: h(&headers, "iothub-correlationid").map(str::to_owned),
            content_type: h(&headers, header::CONTENT_TYPE.as_str()).map(str::to_owned),
            content_encoding: h(&headers, header::CONTENT_ENCODING.as_str()).map(str::to_owned),
            properties,
            payload: bytes::Bytes::from(body.to_vec()),
            expiry_ms,
            ack,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /devices/{id}/commands`: drops the device's waiting messages.
pub async fn purge(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let n = s.hub.purge_c2d(&id).await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "totalMessagesPurged": n, "deviceId": id })),
    )
        .into_response())
}

/// `GET /messages/serviceBound/feedback`: a batch of feedback records under a lock token
/// (`ETag` and `iothub-lockToken` headers), or 204 when there is none.
pub async fn feedback(State(s): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let batch = s.hub.feedback(100).await?;
    let Some((token, records)) = batch else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let mut resp = (StatusCode::OK, Json(records)).into_response();
    if let Ok(v) = HeaderValue::from_str(&token) {
        resp.headers_mut().insert("iothub-locktoken", v.clone());
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

pub async fn complete_feedback(
    State(s): State<Arc<ApiState>>,
    Path(token): Path<String>,
) -> Result<StatusCode, ApiError> {
    if s.hub.complete_feedback(token).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "unknown or expired lock token",
        ))
    }
}

pub async fn abandon_feedback(
    State(s): State<Arc<ApiState>>,
    Path(token): Path<String>,
) -> Result<StatusCode, ApiError> {
    if s.hub.abandon_feedback(&token) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "unknown or expired lock token",
        ))
    }
}
