//! Cloud-to-device messages: send, purge, and the feedback services read.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use weir_storage::c2d::{AckMode, C2dError, C2dMessage};

use super::ApiState;
use super::error::ApiError;

/// Default and longest time a message waits for its device.
const DEFAULT_TTL_MS: i64 = 3_600_000;
const MAX_TTL_MS: i64 = 48 * 3_600_000;

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
    if body.len() > 64 * 1024 {
        return Err(ApiError::bad_request(
            "a cloud-to-device message may carry at most 64 KiB",
        ));
    }
    let now = weir_core::time::now_ms();
    let expiry_ms = match h(&headers, "iothub-expiry") {
        None => now + DEFAULT_TTL_MS,
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|_| ApiError::bad_request("iothub-expiry must be an RFC 3339 time"))?
            .timestamp_millis(),
    };
    if expiry_ms > now + MAX_TTL_MS {
        return Err(ApiError::bad_request(
            "iothub-expiry may be at most 48 hours ahead",
        ));
    }
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
    let message_id = match h(&headers, "iothub-messageid") {
        Some(m) => m.to_owned(),
        None => weir_storage::secret::random_hex(16).map_err(ApiError::internal)?,
    };
    let msg = C2dMessage {
        seq: 0,
        device_id: id.clone(),
        message_id,
        correlation_id: h(&headers, "iothub-correlationid").map(str::to_owned),
        content_type: h(&headers, header::CONTENT_TYPE.as_str()).map(str::to_owned),
        content_encoding: h(&headers, header::CONTENT_ENCODING.as_str()).map(str::to_owned),
        properties,
        body: C2dMessage::encode_body(&body),
        enqueued_ms: now,
        expiry_ms,
        ack,
        deliveries: 0,
    };
    // The properties travel in the MQTT topic, which holds at most 65535 bytes once
    // percent-encoded; refuse here rather than queue a message no device can receive.
    let topic = crate::hub::c2d::publish(&msg).topic;
    if topic.len() > usize::from(u16::MAX) {
        return Err(ApiError::bad_request(format!(
            "the message's properties take {} bytes in the device's MQTT topic; at most 65535 fit",
            topic.len()
        )));
    }
    let hub = Arc::clone(&s.hub);
    let result = tokio::task::spawn_blocking(move || {
        let queued = hub.c2d.enqueue(msg);
        if queued.is_ok() {
            hub.deliver_c2d(&id);
        }
        queued
    })
    .await
    .map_err(ApiError::internal)?;
    match result {
        Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(C2dError::QueueFull(d)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "DeviceMaximumQueueDepthExceeded",
            format!(
                "device {d} already has {} messages waiting",
                weir_storage::c2d::MAX_PENDING
            ),
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// `DELETE /devices/{id}/commands`: drops the device's waiting messages.
pub async fn purge(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = s.device(&id)?;
    let n = s
        .hub
        .c2d
        .purge(&id, &rec.generation_id)
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::OK,
        Json(json!({ "totalMessagesPurged": n, "deviceId": id })),
    )
        .into_response())
}

/// `GET /messages/serviceBound/feedback`: a batch of feedback records under a lock token
/// (`ETag` and `iothub-lockToken` headers), or 204 when there is none.
pub async fn feedback(State(s): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let batch = s.hub.c2d.feedback(100).map_err(ApiError::internal)?;
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
    match s.hub.c2d.complete_feedback(&token) {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "unknown or expired lock token",
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

pub async fn abandon_feedback(
    State(s): State<Arc<ApiState>>,
    Path(token): Path<String>,
) -> Result<StatusCode, ApiError> {
    if s.hub.c2d.abandon_feedback(&token) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "unknown or expired lock token",
        ))
    }
}
