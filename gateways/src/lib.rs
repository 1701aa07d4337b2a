//! Protocol gateways (MQTT over TCP, TLS, WebSocket and QUIC; AMQP 0-9-1 through RabbitMQ):
//! where devices connect, prove who they are and hand over events.
//!
//! A gateway ([`Gateway`]) authenticates against a [`weir_core::DeviceDirectory`], hands
//! events to a [`weir_core::Ingest`] and requests to [`weir_core::DeviceServices`], and
//! registers its connections in the [`weir_core::ConnectionRegistry`] shared by every
//! gateway; it knows nothing of the engine or of storage. Adding a protocol is a module
//! implementing [`Gateway`] plus a listener entry in the binary's configuration.

pub mod amqp;
pub mod context;
pub mod metrics;
pub mod mqtt;
pub mod quic;
pub mod quic_client;
pub mod ratelog;
pub mod sas;
pub mod throttle;
pub mod tls;
pub mod x509;

pub use context::{Admission, Gateway, GatewayContext};
pub use metrics::{GatewayMetrics, ProtocolMetrics};
pub use mqtt::{MqttConfig, MqttListener};
pub use quic::QuicListener;
