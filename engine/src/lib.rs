//! The engine: the only crate that touches timely dataflow.
//!
//! Each worker reads its partition of an [`weir_core::EventFeed`] (the hub's durable log)
//! and runs the same dataflow:
//!
//! ```text
//! feed source ──exchange(device)──▶ dedupe ──▶ route (rules, enrichments, typed columns) ──▶ sink
//! ```
//!
//! Timestamps are log offsets. The frontier at the sink tells it which offsets are
//! complete, which is what its exactly-once commits are built on.

mod append;
pub mod cluster;
pub(crate) mod context;
pub mod deadletter;
mod engine;
pub mod harness;
pub mod insights;
pub mod memory;
pub mod metrics;
mod operators;
mod replay;
mod sinks;

pub use engine::{DedupeConfig, Engine, EngineConfig, EngineError, Hooks, RulesHandle, TraceFn};
pub use memory::{CloseOnDrop, MemoryFeed};
pub use metrics::EngineMetrics;
