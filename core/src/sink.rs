//! The seam between the engine and storage.
//!
//! The engine owns one [`Sink`] per worker, created by a [`SinkFactory`] inside the worker
//! thread, so a sink needs no locking. Deliveries arrive in offset order per worker, and
//! the engine says how far it has come: after `advance(f)` every event of the worker's
//! partition with an offset below `f` has been delivered, which is what lets a sink commit
//! exactly the ranges it has completely written.
//!
//! A sink that cannot write an endpoint (a full disk, a broker that went away) drops that
//! endpoint's deliveries instead of buffering them: they are still in the ingest log, and
//! the endpoint's commit point stays where its data is durable. When it is time to retry,
//! the sink asks for a replay ([`Sink::replay_request`]) and the engine hands it the
//! endpoint's deliveries again from the log, chunk by chunk, until it has caught up.

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
    #[error("endpoint {endpoint}: {message}")]
    Unavailable { endpoint: String, message: String },
}

/// A failed endpoint is ready to try again: it needs the deliveries to `endpoint` of this
/// worker's events at offsets `from..to` (everything that arrived while it was down).
/// With `dead_letter`, they are not for the endpoint but for its dead-letter endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    pub endpoint: Arc<str>,
    pub from: u64,
    pub to: u64,
    pub dead_letter: Option<DeadLetterPass>,
}

/// Hand what the endpoint could not deliver in time to `target`: the deliveries of events
/// enqueued at or before `before_ms`, each marked with `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterPass {
    pub target: Arc<str>,
    pub before_ms: i64,
    pub reason: String,
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

    /// An endpoint that wants its missed deliveries again, if any.
    fn replay_request(&mut self) -> Option<ReplayRequest> {
        None
    }

    /// The input is exhausted: failed endpoints try once more now, whatever their backoff,
    /// so a clean stop archives what it can (what still fails waits in the log).
    fn retry_now(&mut self) {}

    /// Replayed deliveries for `endpoint` (as the current rules define it; `None` when
    /// they no longer do) of every event at offsets from the request's `from` up to
    /// `through`, in offset order.
    fn replay(
        &mut self,
        _endpoint: &str,
        _spec: Option<&Arc<EndpointSpec>>,
        _batch: Vec<Delivery>,
        _through: u64,
    ) -> Result<(), SinkError> {
        Ok(())
    }

    /// Of `batch`, deliveries to `endpoint` read for a dead-letter pass, removes those the
    /// endpoint has committed after all (partitions of a worker may be at different
    /// offsets), so only what it never delivered is handed on.
    fn uncommitted(&self, _endpoint: &str, _batch: &mut Vec<Delivery>) {}

    /// A dead-letter pass durably handed `count` deliveries of `endpoint` below `through`
    /// to its dead-letter endpoint: they count as committed now.
    fn dead_lettered(
        &mut self,
        _endpoint: &str,
        _count: u64,
        _through: u64,
    ) -> Result<(), SinkError> {
        Ok(())
    }

    /// Every endpoint of this sink has durably committed every delivery of this worker's
    /// partitions below this offset. The engine lets the log go below the minimum over all
    /// sinks and workers.
    fn floor(&self) -> u64;
}

/// The kind of a sink that takes every endpoint's deliveries (tools that capture what the
/// rules would send).
pub const ANY_KIND: &str = "*";

/// Creates one [`Sink`] per engine worker, for the endpoints of one kind.
pub trait SinkFactory: Send + Sync {
    /// The endpoint kind it writes (an endpoint's `type` in rules files), or [`ANY_KIND`].
    fn kind(&self) -> &'static str;

    /// The lowest offset any of its endpoints had committed at start-up, over every
    /// partition: the engine reads from there, so nothing uncommitted is missed.
    fn recovered_floor(&self) -> u64;

    /// The same over `partitions` only. A process of a cluster keeps the commit points of
    /// the partitions its workers own and nothing for the others.
    fn recovered_floor_of(&self, _partitions: &[u16]) -> u64 {
        self.recovered_floor()
    }

    fn open(&self, worker: usize, workers: usize) -> Result<Box<dyn Sink>, SinkError>;
}
