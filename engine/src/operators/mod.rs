//! The dataflow's operators, one per file, each as an extension trait on `Stream` (or a
//! constructor, for the source).

mod dedupe;
mod route;
mod sink;
mod source;

pub(crate) use dedupe::Dedupe;
pub(crate) use route::Route;
pub(crate) use sink::SinkTo;
pub(crate) use source::feed_source;

use std::sync::Arc;

use weir_core::{Delivery, EndpointSpec};

/// An event on its way into one endpoint.
pub(crate) struct Routed {
    pub endpoint: Arc<EndpointSpec>,
    pub delivery: Delivery,
}
