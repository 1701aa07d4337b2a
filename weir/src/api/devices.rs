//! `/devices`: the registry in IoT Hub's Device shape.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use weir_core::{DeviceDirectory, DeviceRecord, DeviceStatus};
use weir_storage::{AuthType, DeviceUpsert};

use super::error::ApiError;
use super::{ApiState, if_match, with_etag};

pub use weir_hub::documents::device_json;

fn with_etag_of(rec: &DeviceRecord, body: Value, status: StatusCode) -> Response {
    with_etag(status, body, &rec.etag)
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
                s.hub.is_connected(&d.device_id),
                s.hub.c2d_pending(&d.device_id),
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
    Ok(with_etag_of(
        &rec,
        device_json(&rec, s.hub.is_connected(&id), s.hub.c2d_pending(&id)),
        StatusCode::OK,
    ))
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
    let auth_type = match string_field(&doc, &["authentication", "type"])? {
        None => None,
        Some(t) => Some(AuthType::parse(&t).ok_or_else(|| {
            ApiError::bad_request(format!(
                "authentication type {t:?} must be sas, selfSigned or certificateAuthority"
            ))
        })?),
    };
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
    let iot_edge = match &doc["capabilities"]["iotEdge"] {
        Value::Null => None,
        Value::Bool(b) => Some(*b),
        _ => {
            return Err(ApiError::bad_request(
                "capabilities.iotEdge must be true or false",
            ));
        }
    };
    let parent = match &doc["parentScopes"] {
        Value::Null => None,
        Value::Array(a) if a.is_empty() => Some(None),
        Value::Array(a) if a.len() == 1 => {
            let scope = a[0].as_str().ok_or_else(|| {
                ApiError::bad_request("parentScopes must hold one device scope string")
            })?;
            let edge = weir_hub::documents::scope_device(scope, |d| s.registry.get(d).is_some())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "parentScopes names {scope:?}, which is not the deviceScope of an existing IoT Edge device (ms-azure-iot-edge://<edge id>)"
                    ))
                })?;
            Some(Some(edge))
        }
        _ => {
            return Err(ApiError::bad_request(
                "parentScopes must be a list of at most one device scope",
            ));
        }
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
        auth_type,
        primary_thumbprint: string_field(
            &doc,
            &["authentication", "x509Thumbprint", "primaryThumbprint"],
        )?,
        secondary_thumbprint: string_field(
            &doc,
            &["authentication", "x509Thumbprint", "secondaryThumbprint"],
        )?,
        thumbprints_given: doc["authentication"]["x509Thumbprint"].is_object(),
        tags,
        iot_edge,
        parent,
    };
    let (rec, _created) = s.hub.put_device(req, condition.map(str::to_owned)).await?;
    Ok(with_etag_of(
        &rec,
        device_json(&rec, s.hub.is_connected(&id), s.hub.c2d_pending(&id)),
        StatusCode::OK,
    ))
}

pub async fn delete(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    s.hub
        .delete_device(&id, if_match(&headers).map(str::to_owned))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
