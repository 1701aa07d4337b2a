//! The sink operator: hands deliveries to storage, tells it how far the input is complete,
//! and serves the replays of endpoints that failed and are trying again.

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
use crate::replay::Replayer;

/// Events read per activation while replaying for a failed endpoint.
const REPLAY_CHUNK: usize = 8192;

pub(crate) trait SinkTo {
    /// Writes every delivery to `sink`, grouped by endpoint, calls `advance` as the frontier
    /// moves, and `close` with the source's final position once the input is exhausted.
    fn sink_to(
        self,
        sink: Box<dyn Sink>,
        replayer: Replayer,
        end: Rc<Cell<u64>>,
        tick: Duration,
        metrics: Arc<EngineMetrics>,
    );
}

impl SinkTo for Stream<'_, u64, Vec<Routed>> {
    fn sink_to(
        self,
        mut sink: Box<dyn Sink>,
        mut replayer: Replayer,
        end: Rc<Cell<u64>>,
        tick: Duration,
        metrics: Arc<EngineMetrics>,
    ) {
        let mut closed = false;
        let mut replay_warned: Option<Instant> = None;
        // The sink logs its endpoints' state changes; here failures are only counted.
        let errors = Arc::clone(&metrics);
        let report = move |r: Result<(), SinkError>| {
            if r.is_err() {
                EngineMetrics::add(&errors.sink_errors, 1);
            }
        };
        let scope = self.scope();
        // The sink also runs on a timer, not only when data or the frontier moves: files
        // must be committed by age while the hub is idle, and failed endpoints retried.
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
                    match frontier.frontier().iter().min() {
                        Some(t) => report(sink.advance(*t)),
                        None => {
                            closed = true;
                            report(sink.close(end.get()));
                            return;
                        }
                    }
                    let Some(req) = sink.replay_request() else {
                        activator.activate_after(tick);
                        return;
                    };
                    match replayer.chunk(&req, REPLAY_CHUNK) {
                        Ok(chunk) => {
                            EngineMetrics::add(&metrics.replayed, chunk.deliveries.len() as u64);
                            report(sink.replay(
                                &req.endpoint,
                                chunk.spec.as_ref(),
                                chunk.deliveries,
                                chunk.through,
                            ));
                            if chunk.through > req.from {
                                activator.activate();
                            } else {
                                activator.activate_after(tick);
                            }
                        }
                        Err(e) => {
                            report(Err(SinkError::Io {
                                path: "ingest log".into(),
                                source: std::io::Error::other(e.to_string()),
                            }));
                            if replay_warned.is_none_or(|t| t.elapsed().as_secs() >= 10) {
                                replay_warned = Some(Instant::now());
                                tracing::error!(endpoint = %req.endpoint, error = %e, "cannot replay for a failed endpoint; retrying");
                            }
                            activator.activate_after(tick);
                        }
                    }
                }
            },
        );
    }
}
