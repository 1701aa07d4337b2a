//! Errors in IoT Hub's shape: a status code and `{"Message": "ErrorCode:...;...", ...}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ArgumentInvalid", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "Message": format!("ErrorCode:{};{}", self.code, self.message),
            "ExceptionMessage": format!("{} ({})", self.message, self.code),
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<weir_storage::RegistryError> for ApiError {
    fn from(e: weir_storage::RegistryError) -> Self {
        use weir_storage::RegistryError as E;
        let msg = e.to_string();
        match e {
            E::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "DeviceNotFound", msg),
            E::PreconditionFailed { .. } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "PreconditionFailed", msg)
            }
            E::CertificateNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "CertificateNotFound", msg)
            }
            E::InvalidId(_)
            | E::IdMismatch { .. }
            | E::InvalidKey(_)
            | E::InvalidThumbprint(_)
            | E::NoThumbprint
            | E::InvalidCertificateName(_)
            | E::NoVerificationCode(_)
            | E::InvalidTags
            | E::InvalidParent { .. }
            | E::Twin(_) => ApiError::bad_request(msg),
            E::Storage(_) => {
                tracing::error!(error = %msg, "registry storage failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ServerError",
                    "the registry could not be updated",
                )
            }
        }
    }
}

impl From<weir_hub::HubError> for ApiError {
    fn from(e: weir_hub::HubError) -> Self {
        if let weir_hub::HubError::Registry(r) = e {
            return r.into();
        }
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed inside the hub");
        }
        ApiError::new(status, e.code(), e.to_string())
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such resource")
}
