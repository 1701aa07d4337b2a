//! What gateways ask of the hub on a device's behalf.
//!
//! Telemetry goes through [`crate::Ingest`]; everything else a device does (twin requests,
//! method responses, acknowledging cloud-to-device messages, connecting) goes to
//! [`DeviceServices`]. The hub reaches devices through the
//! [`crate::connections::ConnectionRegistry`]. Every call returns a future: the hub does
//! its blocking work (the registry on disk) off the gateways' I/O threads itself.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::ids::DeviceId;

/// A refusal with the status code IoT Hub would answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ServiceError {
    pub status: u16,
    pub message: String,
}

impl ServiceError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ServiceError {
            status,
            message: message.into(),
        }
    }
}

/// What a service call returns.
pub type ServiceFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

fn ready<T: Send + 'static>(v: T) -> ServiceFuture<T> {
    Box::pin(std::future::ready(v))
}

/// What a gateway asks of the hub.
pub trait DeviceServices: Send + Sync + 'static {
    /// The twin as a device gets it: `{"desired": {.., "$version"}, "reported": {.., "$version"}}`.
    fn twin(&self, device: &DeviceId) -> ServiceFuture<Result<serde_json::Value, ServiceError>>;
    /// Applies a reported-properties merge patch; returns the new reported version.
    fn patch_reported(
        &self,
        device: &DeviceId,
        patch: Bytes,
    ) -> ServiceFuture<Result<u64, ServiceError>>;
    /// A device answered direct method request `rid`.
    fn method_response(&self, device: &DeviceId, rid: &str, status: i32, payload: Bytes);
    /// The device acknowledged the cloud-to-device message with this lock.
    fn c2d_acknowledged(&self, device: &DeviceId, lock: u64) -> ServiceFuture<()>;
    /// The subscriptions a persistent (clean session 0) session keeps across connections.
    fn stored_subscriptions(&self, device: &DeviceId) -> ServiceFuture<Vec<String>>;
    fn store_subscriptions(&self, device: &DeviceId, filters: Vec<String>) -> ServiceFuture<()>;
    /// The device's connection is up (after CONNACK and its subscriptions are known).
    fn connected(&self, device: &DeviceId) -> ServiceFuture<()>;
    fn disconnected(&self, device: &DeviceId) -> ServiceFuture<()>;
    /// The device subscribed to cloud-to-device messages: waiting ones can go out.
    fn c2d_ready(&self, device: &DeviceId) -> ServiceFuture<()>;
    /// An edge device's children, with their credentials and desired properties, for the
    /// edge to authenticate them while offline: a JSON array of Device documents.
    fn children(&self, edge: &DeviceId) -> ServiceFuture<Result<serde_json::Value, ServiceError>> {
        let _ = edge;
        ready(Err(ServiceError::new(
            404,
            "edge devices are not available",
        )))
    }
}

/// Services for gateways that run without a hub (tests, tools): twins and methods are
/// refused, nothing is stored.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoServices;

impl DeviceServices for NoServices {
    fn twin(&self, _device: &DeviceId) -> ServiceFuture<Result<serde_json::Value, ServiceError>> {
        ready(Err(ServiceError::new(404, "twins are not available")))
    }
    fn patch_reported(
        &self,
        _device: &DeviceId,
        _patch: Bytes,
    ) -> ServiceFuture<Result<u64, ServiceError>> {
        ready(Err(ServiceError::new(404, "twins are not available")))
    }
    fn method_response(&self, _device: &DeviceId, _rid: &str, _status: i32, _payload: Bytes) {}
    fn c2d_acknowledged(&self, _device: &DeviceId, _lock: u64) -> ServiceFuture<()> {
        ready(())
    }
    fn stored_subscriptions(&self, _device: &DeviceId) -> ServiceFuture<Vec<String>> {
        ready(Vec::new())
    }
    fn store_subscriptions(&self, _device: &DeviceId, _filters: Vec<String>) -> ServiceFuture<()> {
        ready(())
    }
    fn connected(&self, _device: &DeviceId) -> ServiceFuture<()> {
        ready(())
    }
    fn disconnected(&self, _device: &DeviceId) -> ServiceFuture<()> {
        ready(())
    }
    fn c2d_ready(&self, _device: &DeviceId) -> ServiceFuture<()> {
        ready(())
    }
}
