//! Service authentication: `Authorization: SharedAccessSignature sr={hub}&...&skn={policy}`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use weir_core::time::now_secs;
use weir_gateways::sas;

use super::ApiState;
use super::error::ApiError;

/// Shared access policies and their keys.
#[derive(Clone)]
pub struct ServiceKeys {
    pub policies: Vec<(String, String)>,
}

impl ServiceKeys {
    fn keys_for(&self, policy: &str) -> Vec<&str> {
        self.policies
            .iter()
            .filter(|(p, _)| p.eq_ignore_ascii_case(policy))
            .map(|(_, k)| k.as_str())
            .collect()
    }
}

fn unauthorized(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "IotHubUnauthorizedAccess", msg)
}

/// The hub's service API: any policy but the provisioning service's.
pub async fn require_service_token(
    State(state): State<Arc<ApiState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(&state, &req, |p| !p.eq_ignore_ascii_case(PROVISIONING))?;
    Ok(next.run(req).await)
}

/// The provisioning service's API: its own policy only.
pub async fn require_provisioning_token(
    State(state): State<Arc<ApiState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(&state, &req, |p| p.eq_ignore_ascii_case(PROVISIONING))?;
    Ok(next.run(req).await)
}

/// The provisioning service's shared access policy.
pub const PROVISIONING: &str = "provisioningserviceowner";

/// Verifies the request's service SAS token, signed with a key of a policy `allowed`
/// admits.
fn check(state: &ApiState, req: &Request, allowed: impl Fn(&str) -> bool) -> Result<(), ApiError> {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("missing Authorization header with a service SAS token"))?;
    verify(state, header, allowed)
}

/// The hub's service credential, for the dashboard: any policy but the provisioning
/// service's.
pub(super) fn verify_service(state: &ApiState, token: &str) -> Result<(), ApiError> {
    verify(state, token, |p| !p.eq_ignore_ascii_case(PROVISIONING))
}

/// Verifies a service SAS token signed with a key of a policy `allowed` admits.
fn verify(state: &ApiState, header: &str, allowed: impl Fn(&str) -> bool) -> Result<(), ApiError> {
    let token = sas::parse(header).map_err(|e| unauthorized(e.to_string()))?;
    let policy = token
        .skn
        .clone()
        .ok_or_else(|| unauthorized("the token names no shared access policy (skn)"))?;
    let keys = state.keys.keys_for(&policy);
    if keys.is_empty() || !allowed(&policy) {
        return Err(unauthorized(format!(
            "shared access policy {policy:?} is unknown or may not use this API"
        )));
    }
    if let Err(e) = sas::verify(&token, &state.hostname, &keys, now_secs()) {
        tracing::warn!(%policy, reason = %e, "service request refused");
        return Err(unauthorized(e.to_string()));
    }
    Ok(())
}
