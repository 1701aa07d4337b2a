//! The engine: the only crate that touches timely dataflow.
//!
//! Gateways hand batches of events to [`Ingress`], which places each device on one worker
//! and applies backpressure through bounded queues. Each worker runs the same dataflow:
//!
//! ```text
//! ingress source ──exchange(device)──▶ route (rules, enrichments, typed columns) ──▶ sink
//!                                           └──▶ dead letters (counted, logged)
//! ```
//!
//! Timestamps are enqueued times in milliseconds; the source advances its capability with
//! the clock, so the frontier at the sink tells it which hours are complete.

mod engine;
pub mod harness;
mod ingress;
pub mod metrics;
mod operators;

pub use engine::{Engine, EngineConfig, EngineError, RulesHandle, TraceFn};
pub use ingress::{Ingress, IngressClosed};
pub use metrics::EngineMetrics;
