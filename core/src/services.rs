//! What gateways ask of the hub on a device's behalf, and how the hub reaches a device.
//!
//! Telemetry goes through [`crate::Ingest`]; everything else a device does (twin requests,
//! method responses, acknowledging cloud-to-device messages, connecting) goes to
//! [`DeviceServices`]. The hub answers and pushes through a [`DeviceLink`].

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

/// A PUBLISH the hub sends a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePublish {
    pub topic: String,
    pub payload: Bytes,
    /// 0 for responses and notifications; 1 for cloud-to-device messages.
    pub qos: u8,
    /// Set on cloud-to-device messages: handed back in
    /// [`DeviceServices::c2d_acknowledged`] when the device acknowledges.
    pub lock: Option<u64>,
}

/// The features a device turns on by subscribing (spec §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    Methods,
    CloudToDevice,
    TwinResponses,
    DesiredPatches,
}

/// How the hub reaches connected devices.
pub trait DeviceLink: Send + Sync + 'static {
    /// Queues a publish for the device's current connection; false when it has none.
    fn send(&self, device: &str, publish: DevicePublish) -> bool;
    /// True when the device is connected and subscribed to `feature`.
    fn subscribed(&self, device: &str, feature: Feature) -> bool;
    fn is_connected(&self, device: &str) -> bool;
    /// The device's registry record changed (or it was deleted): close its connections
    /// that the record no longer admits. Returns once they have been told to close; true
    /// when one was.
    fn revalidate(&self, device: &str) -> bool;
}

/// What a gateway asks of the hub. Calls may block briefly (they touch the registry);
/// gateways make them off their I/O threads.
pub trait DeviceServices: Send + Sync + 'static {
    /// The twin as a device gets it: `{"desired": {.., "$version"}, "reported": {.., "$version"}}`.
    fn twin(&self, device: &DeviceId) -> Result<serde_json::Value, ServiceError>;
    /// Applies a reported-properties merge patch; returns the new reported version.
    fn patch_reported(&self, device: &DeviceId, patch: &[u8]) -> Result<u64, ServiceError>;
    /// A device answered direct method request `rid`.
    fn method_response(&self, device: &DeviceId, rid: &str, status: i32, payload: Bytes);
    /// The device acknowledged the cloud-to-device message with this lock.
    fn c2d_acknowledged(&self, device: &DeviceId, lock: u64);
    /// The subscriptions a persistent (clean session 0) session keeps across connections.
    fn stored_subscriptions(&self, device: &DeviceId) -> Vec<String>;
    fn store_subscriptions(&self, device: &DeviceId, filters: &[String]);
    /// The device's connection is up (after CONNACK and its subscriptions are known).
    fn connected(&self, device: &DeviceId);
    fn disconnected(&self, device: &DeviceId);
    /// The device subscribed to cloud-to-device messages: waiting ones can go out.
    fn c2d_ready(&self, device: &DeviceId);
}

/// Services for gateways that run without a hub (tests, tools): twins and methods are
/// refused, nothing is stored.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoServices;

impl DeviceServices for NoServices {
    fn twin(&self, _device: &DeviceId) -> Result<serde_json::Value, ServiceError> {
        Err(ServiceError::new(404, "twins are not available"))
    }
    fn patch_reported(&self, _device: &DeviceId, _patch: &[u8]) -> Result<u64, ServiceError> {
        Err(ServiceError::new(404, "twins are not available"))
    }
    fn method_response(&self, _device: &DeviceId, _rid: &str, _status: i32, _payload: Bytes) {}
    fn c2d_acknowledged(&self, _device: &DeviceId, _lock: u64) {}
    fn stored_subscriptions(&self, _device: &DeviceId) -> Vec<String> {
        Vec::new()
    }
    fn store_subscriptions(&self, _device: &DeviceId, _filters: &[String]) {}
    fn connected(&self, _device: &DeviceId) {}
    fn disconnected(&self, _device: &DeviceId) {}
    fn c2d_ready(&self, _device: &DeviceId) {}
}
