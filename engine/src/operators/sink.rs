//! The sink operator: hands deliveries to storage and tells it how far the input is complete.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use weir_core::{Delivery, EndpointSpec, Sink, SinkError};

use super::Routed;
use crate::metrics::EngineMetrics;

pub(crate) trait SinkTo {
    /// Writes every delivery to `sink`, grouped by endpoint, calls `advance` as the frontier
    /// moves, and `close` with the source's final position once the input is exhausted.
    fn sink_to(
        self,
        sink: Box<dyn Sink>,
        end: Rc<Cell<u64>>,
        tick: Duration,
        metrics: Arc<EngineMetrics>,
    );
}

impl SinkTo for Stream<'_, u64, Vec<Routed>> {
    fn sink_to(
        self,
        mut sink: Box<dyn Sink>,
        end: Rc<Cell<u64>>,
        tick: Duration,
        metrics: Arc<EngineMetrics>,
    ) {
        let mut closed = false;
        let mut last_error: Option<Instant> = None;
        let mut report = move |r: Result<(), SinkError>| {
            if let Err(e) = r {
                EngineMetrics::add(&metrics.sink_errors, 1);
                if last_error.is_none_or(|t| t.elapsed().as_secs() >= 5) {
                    last_error = Some(Instant::now());
                    tracing::error!(error = %e, "sink failed; the affected data stays in the ingest log");
                }
            }
        };
        let scope = self.scope();
        // The sink also runs on a timer, not only when data or the frontier moves: files
        // must be committed by age while the hub is idle.
        self.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            "Sink",
            move |_cap, info| {
                let activator = scope.activator_for(info.address.clone());
                move |(input, frontier), _output| {
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
                    activator.activate_after(tick);
                    match frontier.frontier().iter().min() {
                        Some(t) => report(sink.advance(*t)),
                        None => {
                            closed = true;
                            report(sink.close(end.get()));
                        }
                    }
                }
            },
        );
    }
}
