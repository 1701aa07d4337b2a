//! The seam between gateways and whatever accepts their events.

use std::future::Future;
use std::pin::Pin;

use crate::event::Event;
use crate::ids::DeviceId;

/// Why a batch was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the hub is shutting down")]
    ShuttingDown,
    #[error("the hub cannot store events: {0}")]
    Unavailable(String),
    #[error("a message of {size} bytes is larger than the {limit} bytes a log record holds")]
    TooLarge { size: usize, limit: usize },
}

/// Resolves once a batch is durable (as far as the configured fsync policy promises).
pub type AckFuture = Pin<Box<dyn Future<Output = Result<(), IngestError>> + Send + 'static>>;

/// Resolves once a batch is queued for storage, with the future of its durability.
pub type IngestFuture =
    Pin<Box<dyn Future<Output = Result<AckFuture, IngestError>> + Send + 'static>>;

/// Accepts events from gateways.
///
/// `ingest` resolves when the batch is queued; while it waits, the gateway reads nothing
/// more from that device, which is how backpressure reaches the socket. The [`AckFuture`]
/// it yields resolves when the batch is durable: a gateway acknowledges QoS 1 messages
/// only after that, and may drop it for QoS 0.
pub trait Ingest: Send + Sync + 'static {
    /// `batch` holds events from `device` only, in the order the device sent them.
    fn ingest(&self, device: &DeviceId, batch: Vec<Event>) -> IngestFuture;
}
