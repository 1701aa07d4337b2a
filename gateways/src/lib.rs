//! Protocol gateways: where devices connect, prove who they are and hand over events.
//!
//! A gateway authenticates against a [`weir_core::DeviceDirectory`] and hands events to a
//! [`weir_core::Ingest`]; it knows nothing of the engine or of storage.

pub mod metrics;
pub mod mqtt;
pub mod ratelog;
pub mod sas;
pub mod tls;

pub use metrics::GatewayMetrics;
pub use mqtt::{MqttConfig, MqttGateway};
