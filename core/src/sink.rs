//! The seam between the engine and storage.
//!
//! The engine owns one [`Sink`] per worker, created by a [`SinkFactory`] inside the worker
//! thread, so a sink needs no locking. The engine promises frontier order: after
//! `advance(t)` it never writes a delivery whose event has `enqueued_ms < t` unless that
//! event reached the worker late, in which case the sink must still accept it (it may
//! start a new file in an already finalised partition).

use std::sync::Arc;

use crate::endpoint::{Delivery, EndpointSpec};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("I/O error at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding error for endpoint {endpoint}: {message}")]
    Encode { endpoint: String, message: String },
    #[error("endpoint {0} is of a kind this sink does not handle")]
    Unsupported(String),
}

/// Receives routed deliveries in one worker.
pub trait Sink {
    /// Accepts deliveries for one endpoint.
    fn write(
        &mut self,
        endpoint: &Arc<EndpointSpec>,
        batch: Vec<Delivery>,
    ) -> Result<(), SinkError>;

    /// Tells the sink no more events with `enqueued_ms < frontier_ms` are expected and that
    /// wall-clock time is `now_ms`, so it can finalise partitions and roll aged files.
    fn advance(&mut self, frontier_ms: i64, now_ms: i64) -> Result<(), SinkError>;

    /// The input is exhausted: finalise everything.
    fn close(&mut self) -> Result<(), SinkError>;
}

/// Creates one [`Sink`] per engine worker.
pub trait SinkFactory: Send + Sync {
    fn open(&self, worker: usize) -> Result<Box<dyn Sink>, SinkError>;
}
