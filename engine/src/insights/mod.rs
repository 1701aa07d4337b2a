//! Insights: windowed aggregates per group of events, in event time, with corrections
//! for late data (see `docs/decisions/027-insights.md`).
//!
//! `window` and `aggregate` are the I/O-free core: given events with their group, event
//! time and values, in arrival order, they decide which windows are complete and what
//! each result is. A property test holds them to a reference that sorts everything by
//! event time. `running` holds one insight's state in a worker; `resume` is what a
//! restart needs (where to replay from, which results are already written).

pub mod aggregate;
pub mod anomaly;
pub mod result;
pub(crate) mod resume;
pub(crate) mod running;
pub mod silence;
pub mod window;

pub use running::RESULTS_DEVICE;
pub use window::{Arrival, WindowResult, Windows};
