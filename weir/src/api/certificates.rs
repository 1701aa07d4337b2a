//! `/certificates`: CA certificates as IoT Hub registers them, with proof of possession.
//! `PUT` uploads one (unverified); `generateVerificationCode` issues a code; `verify`
//! takes a certificate signed by the CA's key whose subject CN is the code. Only verified
//! CAs authenticate `certificateAuthority` devices. Replacing or deleting a CA cuts the
//! connections that authenticated with it.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use weir_gateways::x509;
use weir_storage::{CaInfo, CaRecord};

use super::error::ApiError;
use super::{ApiState, if_match, with_etag};

fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// IoT Hub's CertificateDescription.
fn document(rec: &CaRecord) -> Value {
    let mut properties = json!({
        "subject": rec.subject,
        "expiry": time(rec.not_after),
        "thumbprint": rec.thumbprint,
        "isVerified": rec.verified,
        "created": rec.created,
        "updated": rec.updated,
        "certificate": rec.certificate,
    });
    if let Some(code) = &rec.verification_code {
        properties["verificationCode"] = json!(code);
    }
    json!({ "name": rec.name, "etag": rec.etag, "properties": properties })
}

fn respond(rec: &CaRecord) -> Response {
    with_etag(StatusCode::OK, document(rec), &rec.etag)
}

fn invalid(e: x509::X509Error) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "InvalidCertificate", e.to_string())
}

/// The certificate text at `path` in a JSON body.
fn certificate_field(body: &[u8], path: &[&str]) -> Result<Vec<u8>, ApiError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let text = path
        .iter()
        .try_fold(&doc, |v, p| v.get(p))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{} must be the certificate (PEM, or base64 of its DER)",
                path.join(".")
            ))
        })?;
    x509::decode_certificate(text).map_err(invalid)
}

fn now_secs() -> i64 {
    weir_core::time::now_secs()
}

pub async fn list(State(s): State<Arc<ApiState>>) -> Json<Value> {
    let all: Vec<Value> = s.registry.cas().iter().map(|c| document(c)).collect();
    Json(json!({ "value": all }))
}

fn find(s: &ApiState, name: &str) -> Result<Arc<CaRecord>, ApiError> {
    s.registry
        .ca(name)
        .ok_or_else(|| weir_storage::RegistryError::CertificateNotFound(name.to_owned()).into())
}

pub async fn show(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(respond(&*find(&s, &name)?))
}

/// Uploads (200) or replaces a CA certificate. Replacing needs `If-Match`, as for devices;
/// a different certificate must be verified again.
pub async fn put(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let der = certificate_field(&body, &["properties", "certificate"])?;
    let info = x509::check_ca(&der, now_secs()).map_err(invalid)?;
    let condition = if_match(&headers);
    let existing = s.registry.ca(&name);
    if existing.is_some() && condition.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CertificateAlreadyExists",
            format!(
                "certificate {name} already exists; send If-Match with its etag (or *) to replace it"
            ),
        ));
    }
    let (rec, _) = s.registry.put_ca(
        &name,
        &der,
        CaInfo {
            subject: info.subject,
            sha1: info.sha1,
            sha256: info.sha256,
            not_after: info.not_after,
        },
        condition,
    )?;
    if let Some(old) = existing
        && old.sha256 != rec.sha256
    {
        s.hub.withdraw_ca(&old);
    }
    Ok(respond(&rec))
}

pub async fn generate_code(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let code = weir_storage::secret::random_hex(16)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServerError",
                e.to_string(),
            )
        })?
        .to_uppercase();
    let rec = s
        .registry
        .set_verification_code(&name, code, if_match(&headers))?;
    Ok(respond(&rec))
}

/// Proof of possession: the body's certificate must be signed by the CA and name the
/// current verification code as its subject CN.
pub async fn verify(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let proof = certificate_field(&body, &["certificate"])?;
    let ca = find(&s, &name)?;
    let code = ca
        .verification_code
        .clone()
        .ok_or_else(|| weir_storage::RegistryError::NoVerificationCode(name.clone()))?;
    x509::check_verification(&ca.der(), &code, &proof, now_secs()).map_err(invalid)?;
    let rec = s
        .registry
        .mark_ca_verified(&name, &ca.sha256, &code, if_match(&headers))?;
    tracing::info!(certificate = %name, subject = %rec.subject, "CA certificate verified");
    Ok(respond(&rec))
}

pub async fn delete(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let rec = s.registry.delete_ca(&name, if_match(&headers))?;
    s.hub.withdraw_ca(&rec);
    Ok(StatusCode::NO_CONTENT)
}
