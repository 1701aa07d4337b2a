//! Why a hub operation was refused, with the HTTP status IoT Hub answers with.

use weir_core::ServiceError;
use weir_core::twin::TwinError;
use weir_storage::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Invalid(String),
    #[error("device {0} already has {max} messages waiting", max = weir_storage::c2d::MAX_PENDING)]
    QueueFull(String),
    #[error("device {0} is not connected and listening for direct methods")]
    NotOnline(String),
    #[error("device {device} did not answer {method} within {secs} s")]
    Timeout {
        device: String,
        method: String,
        secs: u64,
    },
    #[error("{0}")]
    Internal(String),
}

impl HubError {
    pub fn internal(e: impl std::fmt::Display) -> HubError {
        HubError::Internal(e.to_string())
    }

    /// The HTTP status IoT Hub gives this refusal.
    pub fn status(&self) -> u16 {
        match self {
            HubError::Registry(RegistryError::NotFound(_)) => 404,
            HubError::Registry(RegistryError::PreconditionFailed { .. }) => 412,
            HubError::Registry(RegistryError::Storage(_)) | HubError::Internal(_) => 500,
            HubError::Registry(_) | HubError::Invalid(_) => 400,
            HubError::QueueFull(_) => 403,
            HubError::NotOnline(_) => 404,
            HubError::Timeout { .. } => 504,
        }
    }

    /// IoT Hub's error code for it.
    pub fn code(&self) -> &'static str {
        match self {
            HubError::Registry(RegistryError::NotFound(_)) => "DeviceNotFound",
            HubError::Registry(RegistryError::PreconditionFailed { .. }) => "PreconditionFailed",
            HubError::Registry(RegistryError::Storage(_)) | HubError::Internal(_) => "ServerError",
            HubError::Registry(_) | HubError::Invalid(_) => "ArgumentInvalid",
            HubError::QueueFull(_) => "DeviceMaximumQueueDepthExceeded",
            HubError::NotOnline(_) => "DeviceNotOnline",
            HubError::Timeout { .. } => "GatewayTimeout",
        }
    }
}

/// The refusal a device gets for a twin request.
pub(crate) fn service_error(e: HubError) -> ServiceError {
    let status = match &e {
        HubError::Registry(RegistryError::Twin(TwinError::TooLarge { .. })) => 400,
        HubError::Registry(RegistryError::Storage(_)) => {
            return ServiceError::new(500, "the registry could not be updated");
        }
        other => other.status(),
    };
    ServiceError::new(status, e.to_string())
}
