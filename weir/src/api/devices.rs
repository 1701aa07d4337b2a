//! `/devices`: the registry in IoT Hub's Device shape.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use weir_core::{DeviceDirectory, DeviceRecord, DeviceStatus, Event, EventSource};
use weir_storage::DeviceUpsert;
use weir_storage::registry::Change;

use super::ApiState;
use super::error::ApiError;

const NEVER: &str = "0001-01-01T00:00:00Z";

/// The Device document IoT Hub returns (plus `tags`, Weir's extension).
pub fn device_json(rec: &DeviceRecord, connected: bool, c2d_pending: usize) -> Value {
    let (primary, secondary) = rec.sas_keys().unwrap_or_default();
    json!({
        "deviceId": rec.device_id,
        "moduleId": null,
        "generationId": rec.generation_id,
        "etag": rec.etag,
        "connectionState": if connected { "Connected" } else { "Disconnected" },
        "status": match rec.status { DeviceStatus::Enabled => "enabled", DeviceStatus::Disabled => "disabled" },
        "statusReason": rec.status_reason,
        "connectionStateUpdatedTime": NEVER,
        "statusUpdatedTime": rec.status_updated_time,
        "lastActivityTime": NEVER,
        "cloudToDeviceMessageCount": c2d_pending,
        "authentication": {
            "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary},
            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
            "type": "sas"
        },
        "capabilities": {"iotEdge": false},
        "tags": rec.tags,
    })
}

fn with_etag(rec: &DeviceRecord, body: Value, status: StatusCode) -> Response {
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", rec.etag)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

pub async fn list(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let top = match q.get("top") {
        Some(t) => Some(
            t.parse::<usize>()
                .map_err(|_| ApiError::bad_request("top must be a positive integer"))?,
        ),
        None => None,
    };
    let devices: Vec<Value> = s
        .registry
        .list(top)
        .iter()
        .map(|d| {
            device_json(
                d,
                s.gateway.is_connected(&d.device_id),
                s.hub.c2d.pending(&d.device_id),
            )
        })
        .collect();
    Ok(Json(Value::Array(devices)))
}

pub async fn show(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = s.device(&id)?;
    Ok(with_etag(
        &rec,
        device_json(&rec, s.gateway.is_connected(&id), s.hub.c2d.pending(&id)),
        StatusCode::OK,
    ))
}

fn if_match(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
}

fn string_field(v: &Value, path: &[&str]) -> Result<Option<String>, ApiError> {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return Ok(None),
        }
    }
    match cur {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(ApiError::bad_request(format!(
            "{} must be a string",
            path.join(".")
        ))),
    }
}

/// Create (200) or update a device. Updating an existing device needs `If-Match` (an
/// etag or `*`), as in IoT Hub; without it the request is refused with 409.
pub async fn put(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let doc: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?
    };
    if !doc.is_object() {
        return Err(ApiError::bad_request(
            "the body must be a Device JSON object",
        ));
    }
    if let Some(body_id) = string_field(&doc, &["deviceId"])?
        && body_id != id
    {
        return Err(weir_storage::RegistryError::IdMismatch {
            url: id,
            body: body_id,
        }
        .into());
    }
    if let Some(t) = string_field(&doc, &["authentication", "type"])?
        && !t.eq_ignore_ascii_case("sas")
    {
        return Err(ApiError::bad_request(format!(
            "authentication type {t:?} is not supported yet; use \"sas\""
        )));
    }
    let status = match string_field(&doc, &["status"])?.as_deref() {
        None => None,
        Some(s) if s.eq_ignore_ascii_case("enabled") => Some(DeviceStatus::Enabled),
        Some(s) if s.eq_ignore_ascii_case("disabled") => Some(DeviceStatus::Disabled),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status must be enabled or disabled, not {other:?}"
            )));
        }
    };
    let tags = match doc.get("tags") {
        None | Some(Value::Null) => None,
        Some(t) => Some(t.clone()),
    };
    let exists = s.registry.get(&id).is_some();
    let condition = if_match(&headers);
    if exists && condition.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "DeviceAlreadyExists",
            format!("device {id} already exists; send If-Match with its etag (or *) to update it"),
        ));
    }
    let req = DeviceUpsert {
        device_id: id.clone(),
        status,
        status_reason: string_field(&doc, &["statusReason"])?,
        primary_key: string_field(&doc, &["authentication", "symmetricKey", "primaryKey"])?,
        secondary_key: string_field(&doc, &["authentication", "symmetricKey", "secondaryKey"])?,
        tags,
    };
    let events = &s.hub.events;
    let (rec, created) = s
        .registry
        .upsert(req, condition, |c| change_events(events, c))?;
    events.staged.notify_one();
    if created {
        tracing::info!(device = %id, "device created");
    } else if s.hub.revalidate(&id) {
        tracing::info!(device = %id, "closed a connection the updated device no longer admits");
    }
    Ok(with_etag(
        &rec,
        device_json(&rec, s.gateway.is_connected(&id), s.hub.c2d.pending(&id)),
        StatusCode::OK,
    ))
}

pub async fn delete(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let events = &s.hub.events;
    let rec = s.registry.delete(&id, if_match(&headers), |rec| {
        let twin = super::twins::twin_json(rec, false, 0);
        events
            .event(
                &id,
                EventSource::DeviceLifecycleEvents,
                "deleteDeviceIdentity",
                twin,
            )
            .into_iter()
            .collect()
    })?;
    events.staged.notify_one();
    tracing::info!(device = %id, "device deleted");
    s.hub.revalidate(&id);
    if let Err(e) = s.hub.c2d.purge(&id, &rec.generation_id) {
        tracing::warn!(device = %id, error = %e, "cannot drop the deleted device's messages");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The hub events a create or update of a device causes: `createDeviceIdentity`;
/// `updateDeviceIdentity` when its status or keys changed; a twin change when its tags did.
fn change_events(events: &crate::hub::Events, c: Change<'_>) -> Vec<Event> {
    let id = c.new.device_id.as_str();
    let lifecycle = |op: &str| {
        let twin = super::twins::twin_json(c.new, false, 0);
        events.event(id, EventSource::DeviceLifecycleEvents, op, twin)
    };
    let Some(old) = c.old else {
        return lifecycle("createDeviceIdentity").into_iter().collect();
    };
    let mut out = Vec::new();
    if old.status != c.new.status
        || old.status_reason != c.new.status_reason
        || old.auth != c.new.auth
    {
        out.extend(lifecycle("updateDeviceIdentity"));
    }
    if old.tags != c.new.tags {
        let body = json!({ "version": c.new.twin_version, "tags": c.new.tags });
        out.extend(events.event(id, EventSource::TwinChangeEvents, "updateTwin", body));
    }
    out
}
