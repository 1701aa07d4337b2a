//! The sink operator: hands deliveries to storage and tells it how far time has come.

use std::sync::Arc;
use std::time::Instant;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use weir_core::time::now_ms;
use weir_core::{Delivery, EndpointSpec, Sink, SinkError};

use super::Routed;
use crate::metrics::EngineMetrics;

pub(crate) trait SinkTo {
    /// Writes every delivery to `sink`, grouped by endpoint, and calls `advance` as the
    /// frontier moves and `close` once the input is exhausted.
    fn sink_to(self, sink: Box<dyn Sink>, metrics: Arc<EngineMetrics>);
}

impl SinkTo for Stream<'_, i64, Vec<Routed>> {
    fn sink_to(self, mut sink: Box<dyn Sink>, metrics: Arc<EngineMetrics>) {
        let mut closed = false;
        let mut last_error: Option<Instant> = None;
        let mut report = move |r: Result<(), SinkError>| {
            if let Err(e) = r {
                EngineMetrics::add(&metrics.sink_errors, 1);
                if last_error.is_none_or(|t| t.elapsed().as_secs() >= 5) {
                    last_error = Some(Instant::now());
                    tracing::error!(error = %e, "sink failed");
                }
            }
        };
        self.sink(Pipeline, "Sink", move |(input, frontier)| {
            let mut groups: Vec<(Arc<EndpointSpec>, Vec<Delivery>)> = Vec::new();
            input.for_each(|_cap, data| {
                for r in data.drain(..) {
                    match groups.iter_mut().find(|(e, _)| Arc::ptr_eq(e, &r.endpoint)) {
                        Some((_, batch)) => batch.push(r.delivery),
                        None => groups.push((r.endpoint, vec![r.delivery])),
                    }
                }
            });
            for (endpoint, batch) in groups {
                report(sink.write(&endpoint, batch));
            }
            if closed {
                return;
            }
            match frontier.frontier().iter().min() {
                Some(t) => report(sink.advance(*t, now_ms())),
                None => {
                    closed = true;
                    report(sink.close());
                }
            }
        });
    }
}
