//! Insights: windowed aggregates per group of events, in event time, with corrections
//! for late data (see `docs/decisions/027-insights.md`).
//!
//! `window` and `aggregate` are the I/O-free core: given events with their group, event
//! time and values, in arrival order, they decide which windows are complete and what
//! each result is. A property test holds them to a reference that sorts everything by
//! event time.

pub mod aggregate;
pub mod anomaly;
pub mod result;
pub mod silence;
pub mod window;

pub use window::{Arrival, WindowResult, Windows};
