//! Counters the engine keeps; the binary exposes them on `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct EngineMetrics {
    /// Events read from the log (in a cluster, from this process's log).
    pub events_in: AtomicU64,
    /// Events that reached at least one endpoint.
    pub events_routed: AtomicU64,
    /// Device messages that matched no route and had no fallback.
    pub events_unrouted: AtomicU64,
    /// Deliveries handed to sinks (one event can be delivered to several endpoints).
    pub deliveries: AtomicU64,
    /// Rule evaluation problems: malformed JSON bodies that routes needed, and similar.
    pub dead_letters: AtomicU64,
    /// Sink write or finalise failures.
    pub sink_errors: AtomicU64,
    /// Messages dropped as repeats of one already seen (same `$.mid`, or an MQTT
    /// retransmission of the same packet).
    pub duplicates: AtomicU64,
    /// Deliveries replayed from the log for endpoints recovering from a failure.
    pub replayed: AtomicU64,
    /// Deliveries an endpoint could not make within its `max_retry_secs`, written back to
    /// the log for its dead-letter endpoint.
    pub dead_lettered: AtomicU64,
    /// Samples insights took (an event counts once per insight it is for).
    pub insight_samples: AtomicU64,
    /// Insight results written to the log (each revision of each window and group).
    pub insight_results: AtomicU64,
    /// Events an insight took whose `time` was not an ISO 8601 string or epoch ms.
    pub insight_no_time: AtomicU64,
    /// Events later than their window's retention: counted, not merged.
    pub insight_too_late: AtomicU64,
    /// Late events an insight sent to its `late` endpoint instead of correcting a window.
    pub insight_late: AtomicU64,
    /// Workers whose dataflow is running (a gauge): what a stop waits for.
    pub workers_running: AtomicU64,
    /// Workers whose feed has ended since the engine started: the first step of a stop.
    pub sources_ended: AtomicU64,
    /// Workers whose sink has seen the end of its input and made its final commit.
    pub sinks_closed: AtomicU64,
    /// Events each route took, by route name (kept across rule reloads), plus
    /// `$fallback`.
    pub route_matches: Mutex<BTreeMap<Arc<str>, u64>>,
}

impl EngineMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Adds one batch's matches per route: one lock per batch, not per event.
    pub fn add_route_matches(&self, names: impl Iterator<Item = (Arc<str>, u64)>) {
        if let Ok(mut m) = self.route_matches.lock() {
            for (name, n) in names.filter(|(_, n)| *n > 0) {
                *m.entry(name).or_default() += n;
            }
        }
    }

    /// Every route's matches so far.
    pub fn route_matches(&self) -> Vec<(Arc<str>, u64)> {
        self.route_matches
            .lock()
            .map(|m| m.iter().map(|(k, v)| (Arc::clone(k), *v)).collect())
            .unwrap_or_default()
    }
}
