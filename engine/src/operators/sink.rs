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
use weir_core::{Delivery, EndpointSpec, ReplayRequest, SinkError};

use super::Routed;
use crate::metrics::EngineMetrics;
use crate::replay::Replayer;
use crate::sinks::SinkSet;

/// Events read per activation while replaying for a failed endpoint.
const REPLAY_CHUNK: usize = 8192;

#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Moved,
    Stuck,
}

/// Hands a sink one chunk of the replay it asked for.
fn serve_replay(
    sinks: &mut SinkSet,
    replayer: &mut Replayer,
    (sink, req): &(usize, ReplayRequest),
    report: &mut impl FnMut(Result<(), SinkError>),
    metrics: &EngineMetrics,
    warned: &mut Option<Instant>,
) -> Progress {
    match replayer.chunk(req, REPLAY_CHUNK) {
        Ok(chunk) => {
            EngineMetrics::add(&metrics.replayed, chunk.deliveries.len() as u64);
            let moved = chunk.through > req.from;
            report(sinks.replay(
                *sink,
                &req.endpoint,
                chunk.spec.as_ref(),
                chunk.deliveries,
                chunk.through,
            ));
            if moved {
                Progress::Moved
            } else {
                Progress::Stuck
            }
        }
        Err(e) => {
            report(Err(SinkError::Io {
                path: "ingest log".into(),
                source: std::io::Error::other(e.to_string()),
            }));
            if warned.is_none_or(|t| t.elapsed().as_secs() >= 10) {
                *warned = Some(Instant::now());
                tracing::error!(endpoint = %req.endpoint, error = %e, "cannot replay for a failed endpoint; retrying");
            }
            Progress::Stuck
        }
    }
}

pub(crate) trait SinkTo {
    /// Writes every delivery to the sink of its endpoint's kind, grouped by endpoint, calls
    /// `advance` as the frontier moves, and `close` with the source's final position once
    /// the input is exhausted.
    fn sink_to(
        self,
        sinks: SinkSet,
        replayer: Replayer,
        end: Rc<Cell<u64>>,
        tick: Duration,
        metrics: Arc<EngineMetrics>,
    );
}

impl SinkTo for Stream<'_, u64, Vec<Routed>> {
    fn sink_to(
        self,
        mut sinks: SinkSet,
        mut replayer: Replayer,
        end: Rc<Cell<u64>>,
        tick: Duration,
        metrics: Arc<EngineMetrics>,
    ) {
        let mut closed = false;
        let mut replay_warned: Option<Instant> = None;
        // Sinks log their endpoints' state changes; here failures are only counted.
        let errors = Arc::clone(&metrics);
        let mut report = move |r: Result<(), SinkError>| {
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
                        report(sinks.write(&endpoint, batch));
                    }
                    if closed {
                        return;
                    }
                    let Some(t) = frontier.frontier().iter().min().copied() else {
                        // Before the final commit, failed endpoints get one more chance to
                        // catch up, so a clean stop leaves as little as possible to replay.
                        sinks.retry_now();
                        while let Some(req) = sinks.replay_request() {
                            let progress = serve_replay(
                                &mut sinks,
                                &mut replayer,
                                &req,
                                &mut report,
                                &metrics,
                                &mut replay_warned,
                            );
                            if progress != Progress::Moved {
                                break;
                            }
                        }
                        closed = true;
                        sinks.close(end.get()).into_iter().for_each(&mut report);
                        return;
                    };
                    sinks.advance(t).into_iter().for_each(&mut report);
                    let Some(req) = sinks.replay_request() else {
                        activator.activate_after(tick);
                        return;
                    };
                    match serve_replay(
                        &mut sinks,
                        &mut replayer,
                        &req,
                        &mut report,
                        &metrics,
                        &mut replay_warned,
                    ) {
                        Progress::Moved => activator.activate(),
                        Progress::Stuck => activator.activate_after(tick),
                    }
                }
            },
        );
    }
}
