//! Sinks that deliver to message brokers: RabbitMQ over AMQP 0-9-1 (`amqp` endpoints).
//!
//! Unlike the Parquet archive these deliver at least once: a broker cannot take part in
//! Weir's commit, so what was sent but not confirmed before a failure is sent again, with
//! its ingest offset in a header for consumers to recognise.

pub mod amqp;
pub mod template;

use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use weir_core::{EndpointKind, OptionError};

/// The endpoint kinds this crate writes, for checking rules files.
#[derive(Debug, Default, Clone, Copy)]
pub struct Catalog;

impl weir_core::EndpointCatalog for Catalog {
    fn kinds(&self) -> Vec<&'static str> {
        vec![amqp::KIND]
    }

    fn endpoint(
        &self,
        kind: &str,
        options: &Map<String, Value>,
    ) -> Result<EndpointKind, OptionError> {
        match kind {
            amqp::KIND => amqp::options::options(options),
            other => Err(OptionError::new(
                None,
                format!("unknown endpoint type {other:?}"),
                None,
            )),
        }
    }
}

/// Where an endpoint of a broker sink stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Live,
    /// Publishing failed; deliveries are dropped (they stay in the log) until `retry_at`.
    Failed {
        attempts: u32,
        retry_at: Instant,
    },
    /// Reconnected; publishing what was missed, from the log, up to `replayed`.
    Resuming {
        attempts: u32,
        replayed: u64,
    },
}

/// The first retry after a failure waits a second; each further failure doubles it, up to
/// thirty seconds (as for Parquet endpoints).
pub(crate) fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    Duration::from_secs(1)
        .saturating_mul(1 << doublings)
        .min(Duration::from_secs(30))
}
