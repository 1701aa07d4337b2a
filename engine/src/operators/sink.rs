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
use weir_core::{DeadLetterPass, Delivery, EndpointSpec, Ingest, ReplayRequest, SinkError};

use super::Routed;
use crate::metrics::EngineMetrics;
use crate::replay::{Chunk, Replayer};
use crate::sinks::SinkSet;
use crate::{append, deadletter};

/// Deliveries handed to a sink in one write. Growing one vector for all of an
/// activation's deliveries (tens of thousands under load) reallocated megabytes, and the
/// kernel's zeroing of fresh pages took a tenth of a worker's time. A group starts empty
/// (a quiet activation has a few deliveries); after a full chunk the next is sized for one.
const WRITE_CHUNK: usize = 1024;

/// Events read per activation while replaying for a failed endpoint.
const REPLAY_CHUNK: usize = 8192;

#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Moved,
    Stuck,
}

impl Progress {
    fn of(moved: bool) -> Progress {
        if moved {
            Progress::Moved
        } else {
            Progress::Stuck
        }
    }
}

/// What serving a replay needs besides the sinks.
struct Replays {
    replayer: Replayer,
    /// Where dead letters go (the hub's ingest log).
    log: Option<Arc<dyn Ingest>>,
    metrics: Arc<EngineMetrics>,
    /// When a replay last failed and was logged (at most every 10 s).
    warned: Option<Instant>,
}

impl Replays {
    fn new(
        replayer: Replayer,
        log: Option<Arc<dyn Ingest>>,
        metrics: Arc<EngineMetrics>,
    ) -> Replays {
        Replays {
            replayer,
            log,
            metrics,
            warned: None,
        }
    }

    fn warn(&mut self, endpoint: &str, what: &str, error: &dyn std::fmt::Display) {
        if self.warned.is_none_or(|t| t.elapsed().as_secs() >= 10) {
            self.warned = Some(Instant::now());
            tracing::error!(endpoint, error = %error, "{what}; retrying");
        }
    }

    /// Hands a sink one chunk of the replay it asked for.
    fn serve(
        &mut self,
        sinks: &mut SinkSet,
        (sink, req): &(usize, ReplayRequest),
        report: &mut impl FnMut(Result<(), SinkError>),
    ) -> Progress {
        let chunk = match self.replayer.chunk(req, REPLAY_CHUNK) {
            Ok(chunk) => chunk,
            Err(e) => {
                report(Err(SinkError::Io {
                    path: "ingest log".into(),
                    source: std::io::Error::other(e.to_string()),
                }));
                self.warn(&req.endpoint, "cannot replay for a failed endpoint", &e);
                return Progress::Stuck;
            }
        };
        let moved = Progress::of(chunk.through > req.from);
        if let Some(pass) = &req.dead_letter {
            return self.dead_letter(sinks, *sink, req, pass, chunk, report);
        }
        EngineMetrics::add(&self.metrics.replayed, chunk.deliveries.len() as u64);
        report(sinks.replay(
            *sink,
            &req.endpoint,
            chunk.spec.as_ref(),
            chunk.deliveries,
            chunk.through,
        ));
        moved
    }

    /// Writes a chunk's deliveries back to the log as dead letters, then lets the endpoint
    /// commit past them.
    fn dead_letter(
        &mut self,
        sinks: &mut SinkSet,
        sink: usize,
        req: &ReplayRequest,
        pass: &DeadLetterPass,
        chunk: Chunk,
        report: &mut impl FnMut(Result<(), SinkError>),
    ) -> Progress {
        let Some(ingest) = self.log.clone() else {
            // Nowhere to write them: the endpoint keeps them, as one without a dead letter.
            report(sinks.dead_lettered(sink, &req.endpoint, 0, req.from));
            return Progress::Stuck;
        };
        let mut batch = chunk.deliveries;
        sinks.uncommitted(sink, &req.endpoint, &mut batch);
        let letters: Vec<_> = batch
            .iter()
            .map(|d| deadletter::letter(d, &req.endpoint, pass))
            .collect();
        let count = letters.len() as u64;
        if !letters.is_empty()
            && let Err(e) = append::durably(&*ingest, letters)
        {
            self.warn(
                &req.endpoint,
                "cannot write dead letters to the ingest log",
                &e,
            );
            report(sinks.dead_lettered(sink, &req.endpoint, 0, req.from));
            return Progress::Stuck;
        }
        if count > 0 {
            tracing::warn!(endpoint = %req.endpoint, dead_letter = %pass.target, count, reason = %pass.reason, "handed undeliverable messages to the dead-letter endpoint");
        }
        EngineMetrics::add(&self.metrics.dead_lettered, count);
        report(sinks.dead_lettered(sink, &req.endpoint, count, chunk.through));
        Progress::of(chunk.through > req.from)
    }
}

pub(crate) trait SinkTo {
    /// Writes every delivery to the sink of its endpoint's kind, grouped by endpoint, calls
    /// `advance` as the frontier moves, and `close` with the source's final position once
    /// the input is exhausted. Without a `replayer` (in a cluster, where what an endpoint
    /// missed is in every process's log) an endpoint that asks for a replay restarts the
    /// cluster's dataflow, which reads every log again from the commit points.
    fn sink_to(
        self,
        sinks: SinkSet,
        replayer: Option<Replayer>,
        log: Option<Arc<dyn Ingest>>,
        end: Rc<Cell<u64>>,
        tick: Duration,
        metrics: Arc<EngineMetrics>,
    );
}

impl SinkTo for Stream<'_, u64, Vec<Routed>> {
    fn sink_to(
        self,
        mut sinks: SinkSet,
        replayer: Option<Replayer>,
        log: Option<Arc<dyn Ingest>>,
        end: Rc<Cell<u64>>,
        tick: Duration,
        metrics: Arc<EngineMetrics>,
    ) {
        let mut closed = false;
        let mut replays = replayer.map(|r| Replays::new(r, log, Arc::clone(&metrics)));
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
                let mut wake = super::Wake::new(scope.activator_for(info.address.clone()), tick);
                move |(input, frontier), _output| {
                    let mut groups: Vec<(Arc<EndpointSpec>, Vec<Delivery>)> = Vec::new();
                    input.for_each(|_cap, data| {
                        for r in data.drain(..) {
                            let i = match groups.iter().position(|(e, _)| Arc::ptr_eq(e, &r.endpoint)) {
                                Some(i) => i,
                                None => {
                                    groups.push((r.endpoint, Vec::new()));
                                    groups.len() - 1
                                }
                            };
                            let (endpoint, batch) = &mut groups[i];
                            batch.push(r.delivery);
                            if batch.len() == WRITE_CHUNK {
                                let full = std::mem::replace(batch, Vec::with_capacity(WRITE_CHUNK));
                                report(sinks.write(endpoint, full));
                            }
                        }
                    });
                    for (endpoint, batch) in groups {
                        if !batch.is_empty() {
                            report(sinks.write(&endpoint, batch));
                        }
                    }
                    if closed {
                        return;
                    }
                    let Some(t) = frontier.frontier().iter().min().copied() else {
                        // Before the final commit, failed endpoints get one more chance to
                        // catch up, so a clean stop leaves as little as possible to replay.
                        if let Some(replays) = replays.as_mut() {
                            sinks.retry_now();
                            while let Some(req) = sinks.replay_request() {
                                let progress = replays.serve(&mut sinks, &req, &mut report);
                                if progress != Progress::Moved {
                                    break;
                                }
                            }
                        }
                        closed = true;
                        EngineMetrics::add(&metrics.sinks_closed, 1);
                        sinks.close(end.get()).into_iter().for_each(&mut report);
                        return;
                    };
                    sinks.advance(t).into_iter().for_each(&mut report);
                    let Some(replays) = replays.as_mut() else {
                        if let Some((_, req)) = sinks.replay_request() {
                            // Timely stops a computation over processes by a failure
                            // that reaches every peer; the hub starts it again.
                            panic!(
                                "{}: endpoint {} missed deliveries, which are in every process's log",
                                crate::cluster::RESTART,
                                req.endpoint
                            );
                        }
                        wake.later();
                        return;
                    };
                    replays.replayer.done_below(sinks.floor());
                    let Some(req) = sinks.replay_request() else {
                        wake.later();
                        return;
                    };
                    match replays.serve(&mut sinks, &req, &mut report) {
                        Progress::Moved => wake.now(),
                        Progress::Stuck => wake.later(),
                    }
                }
            },
        );
    }
}
