//! The seam between the engine and storage.
//!
//! The engine owns one [`Sink`] per worker, created by a [`SinkFactory`] inside the worker
//! thread, so a sink needs no locking. Deliveries arrive in offset order per worker, and
//! the engine says how far it has come: after `advance(f)` every event of the worker's
//! partition with an offset below `f` has been delivered, which is what lets a sink commit
//! exactly the ranges it has completely written.

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
    /// Accepts deliveries for one endpoint, in offset order.
    fn write(
        &mut self,
        endpoint: &Arc<EndpointSpec>,
        batch: Vec<Delivery>,
    ) -> Result<(), SinkError>;

    /// Every event of this worker's partition with an offset below `frontier` has been
    /// delivered; the sink may roll, finalise and commit files.
    fn advance(&mut self, frontier: u64) -> Result<(), SinkError>;

    /// The input is exhausted at `end`: finalise and commit everything.
    fn close(&mut self, end: u64) -> Result<(), SinkError>;
}

/// Creates one [`Sink`] per engine worker.
pub trait SinkFactory: Send + Sync {
    fn open(&self, worker: usize, workers: usize) -> Result<Box<dyn Sink>, SinkError>;
}
