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
}

pub type IngestFuture = Pin<Box<dyn Future<Output = Result<(), IngestError>> + Send + 'static>>;

/// Accepts events from gateways.
///
/// The returned future resolves once the batch is accepted as far as the implementation
/// promises (queued, or durable); a gateway acknowledges to the device only after that,
/// and while it waits it reads nothing more from that device, which is how backpressure
/// reaches the socket.
pub trait Ingest: Send + Sync + 'static {
    /// `batch` holds events from `device` only, in the order the device sent them.
    fn ingest(&self, device: &DeviceId, batch: Vec<Event>) -> IngestFuture;
}
