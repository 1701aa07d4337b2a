//! The provisioning service's API (IoT DPS service API subset, spec §10.2), behind the
//! `provisioningserviceowner` policy: individual enrollments, enrollment groups and
//! registration states; `GET /provisioning` (Weir's) tells the ID scope.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use weir_storage::dps::{DpsError, Enrollment, Kind};

use super::error::ApiError;
use super::{ApiState, if_match, with_etag};
use crate::dps::Dps;

impl From<DpsError> for ApiError {
    fn from(e: DpsError) -> Self {
        let msg = e.to_string();
        match e {
            DpsError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "NotFound", msg),
            DpsError::PreconditionFailed { .. } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "PreconditionFailed", msg)
            }
            DpsError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "Conflict", msg),
            DpsError::Storage(_) => {
                tracing::error!(error = %msg, "provisioning storage failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ServerError",
                    "the provisioning service could not be updated",
                )
            }
        }
    }
}

fn service(s: &ApiState) -> Result<&Dps, ApiError> {
    s.dps.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the provisioning service is off (`dps.enabled`)",
        )
    })
}

pub async fn info(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let dps = service(&s)?;
    Ok(Json(json!({
        "idScope": weir_core::Provisioning::id_scope(dps),
        "serviceHostName": s.hostname,
        "linkedHubs": dps.hubs(),
    })))
}

/// Fills what IoT DPS fills in: the id from the URL, generated symmetric keys.
fn prepare(kind: Kind, id: &str, body: &[u8]) -> Result<Enrollment, ApiError> {
    let mut doc: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    if !doc.is_object() || !doc["attestation"].is_object() {
        return Err(ApiError::bad_request(
            "the body must be an enrollment: a JSON object with an attestation object",
        ));
    }
    let field = match kind {
        Kind::Individual => "registrationId",
        Kind::Group => "enrollmentGroupId",
    };
    match doc.get(field).and_then(Value::as_str) {
        Some(given) if given != id => {
            return Err(ApiError::bad_request(format!(
                "{field} {given:?} does not match the URL's {id:?}"
            )));
        }
        _ => doc[field] = json!(id),
    }
    weir_core::ids::validate(id).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))?;
    let attestation = &mut doc["attestation"];
    match attestation["type"].as_str() {
        Some("symmetricKey") => {
            match &attestation["symmetricKey"] {
                Value::Object(_) => {}
                Value::Null => attestation["symmetricKey"] = json!({}),
                _ => {
                    return Err(ApiError::bad_request(
                        "attestation.symmetricKey must be an object",
                    ));
                }
            }
            for k in ["primaryKey", "secondaryKey"] {
                if attestation["symmetricKey"][k]
                    .as_str()
                    .is_none_or(str::is_empty)
                {
                    let key = weir_storage::secret::generate_key().map_err(|e| {
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "ServerError",
                            e.to_string(),
                        )
                    })?;
                    attestation["symmetricKey"][k] = json!(key);
                }
            }
        }
        Some("x509") => {
            if crate::dps::attest::certificates(
                &serde_json::from_value(doc.clone())
                    .map_err(|e| ApiError::bad_request(format!("not an enrollment: {e}")))?,
            )
            .is_empty()
            {
                return Err(ApiError::bad_request(
                    "an x509 attestation needs a certificate (x509.clientCertificates.primary.certificate, or signingCertificates for a group)",
                ));
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "attestation.type {other:?} must be symmetricKey or x509"
            )));
        }
    }
    let e: Enrollment = serde_json::from_value(doc)
        .map_err(|e| ApiError::bad_request(format!("not an enrollment: {e}")))?;
    crate::dps::allocate::check_custom(&e).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(e)
}

async fn put(
    s: &ApiState,
    kind: Kind,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let dps = service(s)?;
    let e = prepare(kind, id, body)?;
    let (stored, _) = dps
        .inner
        .store
        .put_enrollment(kind, id, e, if_match(headers))?;
    let etag = stored.etag.clone();
    let body = serde_json::to_value(&stored).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // A disabled enrollment takes its devices' access away (`dps.revoke`).
    if !stored.is_enabled() {
        dps.revoke(kind, id).await;
    }
    Ok(with_etag(StatusCode::OK, body, &etag))
}

async fn get(s: &ApiState, kind: Kind, id: &str) -> Result<Response, ApiError> {
    let e = service(s)?
        .inner
        .store
        .enrollment(kind, id)?
        .ok_or_else(|| DpsError::NotFound(id.to_owned()))?;
    let etag = e.etag.clone();
    let body = serde_json::to_value(&e).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(with_etag(StatusCode::OK, body, &etag))
}

async fn delete(
    s: &ApiState,
    kind: Kind,
    id: &str,
    headers: &HeaderMap,
) -> Result<StatusCode, ApiError> {
    let dps = service(s)?;
    dps.inner
        .store
        .delete_enrollment(kind, id, if_match(headers))?;
    dps.revoke(kind, id).await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn put_enrollment(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    put(&s, Kind::Individual, &id, &headers, &body).await
}

pub async fn get_enrollment(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    get(&s, Kind::Individual, &id).await
}

pub async fn delete_enrollment(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    delete(&s, Kind::Individual, &id, &headers).await
}

pub async fn put_group(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    put(&s, Kind::Group, &id, &headers, &body).await
}

pub async fn get_group(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    get(&s, Kind::Group, &id).await
}

pub async fn delete_group(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    delete(&s, Kind::Group, &id, &headers).await
}

pub async fn get_registration(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = service(&s)?
        .inner
        .store
        .registration(&id)?
        .ok_or_else(|| DpsError::NotFound(id.clone()))?;
    let etag = r.etag.clone();
    Ok(with_etag(
        StatusCode::OK,
        crate::dps::operation(&r)["registrationState"].clone(),
        &etag,
    ))
}

pub async fn delete_registration(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    service(&s)?
        .inner
        .store
        .delete_registration(&id, if_match(&headers))?;
    Ok(StatusCode::NO_CONTENT)
}
