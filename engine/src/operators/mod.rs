//! The dataflow's operators, one per file, each as an extension trait on `Stream` (or a
//! constructor, for the source).

mod dedupe;
mod insights;
mod order;
mod replica;
mod route;
mod sample;
mod sink;
mod source;
mod wake;

pub(crate) use dedupe::{Dedupe, DedupeState};
pub(crate) use insights::{InsightSetup, RunInsights};
pub(crate) use order::InOffsetOrder;
pub(crate) use replica::ApplyRegistry;
pub(crate) use route::{Route, RouteSetup};
pub(crate) use sink::SinkTo;
pub(crate) use source::feed_source;
pub(crate) use wake::Wake;

use std::sync::Arc;

use timely::dataflow::Stream;
use weir_core::{Delivery, EndpointSpec, Event};

/// Events in the dataflow, shared: operators move pointers, and a sink's open file keeps
/// the event alive without a copy.
pub(crate) type Events<'s> = Stream<'s, u64, Vec<Arc<Event>>>;

/// An event on its way into one endpoint.
pub(crate) struct Routed {
    pub endpoint: Arc<EndpointSpec>,
    pub delivery: Delivery,
}
