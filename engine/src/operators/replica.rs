//! The registry replica, for a cluster (decision 039): registry changes read from this
//! process's log go to every process, where worker 0 applies every process's changes in
//! offset order once the frontier has passed them. What it has applied durably holds the
//! log's release like a sink's commit point, so a change is never released before every
//! process has it. Messages between processes (`Cluster` events) take the same way but are
//! handed over as they arrive.

use std::sync::Arc;
use std::time::Instant;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Filter};
use weir_core::{Event, EventSource, Replica};

use super::Events;
use crate::sinks::Floors;

pub(crate) trait ApplyRegistry {
    /// Takes the registry changes of this stream to every process; `applies`: this
    /// worker is the one of its process that applies them.
    fn apply_registry(self, replica: Arc<dyn Replica>, floors: Arc<Floors>, applies: bool);
}

impl ApplyRegistry for Events<'_> {
    fn apply_registry(self, replica: Arc<dyn Replica>, floors: Arc<Floors>, applies: bool) {
        let mut held: Vec<Arc<Event>> = Vec::new();
        let mut warned: Option<Instant> = None;
        self.filter(|e| matches!(e.source, EventSource::Registry | EventSource::Cluster))
            .broadcast()
            .sink(Pipeline, "ApplyRegistry", move |(input, frontier)| {
                input.for_each(|_, data| {
                    if applies {
                        for e in data.drain(..) {
                            if e.source == EventSource::Cluster {
                                replica.deliver(&e);
                            } else {
                                held.push(e);
                            }
                        }
                    }
                });
                let Some(through) = frontier.frontier().first().copied() else {
                    return;
                };
                if !applies {
                    return;
                }
                held.sort_by_key(|e| e.offset);
                let n = held.partition_point(|e| e.offset < through);
                match replica.apply(&held[..n], through) {
                    Ok(applied) => {
                        held.drain(..n);
                        floors.set_replica(applied);
                        warned = None;
                    }
                    Err(e) => {
                        // Held, and tried again at the next frontier; the log keeps them.
                        if warned.is_none_or(|t| t.elapsed().as_secs() >= 10) {
                            warned = Some(Instant::now());
                            tracing::error!(error = %e, "cannot apply the cluster's registry changes; retrying");
                        }
                    }
                }
            });
    }
}
