//! Endpoint health, as IoT Hub names it: what each sink worker reports about each endpoint,
//! and the summary an operator sees (`GET /endpoints`, `/metrics`).
//!
//! Several workers write to the same endpoint (each its partition of the devices), so an
//! endpoint is as healthy as its least healthy worker and has committed what all of them
//! have committed.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// `healthy`: writing. `unhealthy`: the last attempt to write failed; it is retried with
/// backoff and the data waits in the ingest log. `degraded`: writing again after a failure
/// and catching up with what accumulated meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EndpointState {
    Healthy,
    Degraded,
    Unhealthy,
}

impl EndpointState {
    pub const ALL: [EndpointState; 3] = [
        EndpointState::Healthy,
        EndpointState::Degraded,
        EndpointState::Unhealthy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Healthy => "healthy",
            EndpointState::Degraded => "degraded",
            EndpointState::Unhealthy => "unhealthy",
        }
    }
}

/// One worker's view of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerHealth {
    pub state: EndpointState,
    /// Every delivery of this worker's partition below this offset is durably written.
    pub committed: u64,
    /// The most recent failure, kept after recovery so operators can see what happened.
    pub last_error: Option<String>,
    /// Milliseconds since the epoch of that failure.
    pub last_error_ms: Option<i64>,
    /// Failed attempts so far.
    pub failures: u64,
    /// Deliveries handed to the dead-letter endpoint so far.
    pub dead_lettered: u64,
}

/// An endpoint over all workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHealth {
    pub state: EndpointState,
    pub committed: u64,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    pub failures: u64,
    pub dead_lettered: u64,
}

#[derive(Default)]
struct Worker {
    /// Endpoints this worker has not heard of have committed up to here.
    frontier: u64,
    endpoints: BTreeMap<String, WorkerHealth>,
}

/// Shared by every sink worker and whoever reports on endpoints.
#[derive(Default)]
pub struct HealthBoard {
    workers: Mutex<Vec<Worker>>,
}

impl HealthBoard {
    /// Records `worker`'s view of `endpoint`. Returns the endpoint's overall state before
    /// and after when this changed it, so the caller can log each change once.
    pub fn report(
        &self,
        worker: usize,
        endpoint: &str,
        health: WorkerHealth,
    ) -> Option<(EndpointState, EndpointState)> {
        let Ok(mut w) = self.workers.lock() else {
            return None;
        };
        let before = overall_state(&w, endpoint);
        if w.len() <= worker {
            w.resize_with(worker + 1, Worker::default);
        }
        w[worker].endpoints.insert(endpoint.to_owned(), health);
        let after = overall_state(&w, endpoint);
        (before != after).then_some((before, after))
    }

    /// `worker` has committed every endpoint it has no entry for up to `frontier`.
    pub fn frontier(&self, worker: usize, frontier: u64) {
        if let Ok(mut w) = self.workers.lock() {
            if w.len() <= worker {
                w.resize_with(worker + 1, Worker::default);
            }
            w[worker].frontier = frontier;
        }
    }

    /// Every endpoint any worker reported, by name.
    pub fn endpoints(&self) -> BTreeMap<String, EndpointHealth> {
        let Ok(w) = self.workers.lock() else {
            return BTreeMap::new();
        };
        let names: std::collections::BTreeSet<&String> =
            w.iter().flat_map(|x| x.endpoints.keys()).collect();
        names
            .into_iter()
            .filter_map(|n| summary(&w, n).map(|h| (n.clone(), h)))
            .collect()
    }

    /// The lowest frontier of any worker: what an endpoint no worker has written yet has
    /// committed.
    pub fn floor(&self) -> u64 {
        self.workers
            .lock()
            .ok()
            .and_then(|w| w.iter().map(|x| x.frontier).min())
            .unwrap_or(0)
    }

    /// One endpoint; `None` when no worker has reported it yet.
    pub fn endpoint(&self, name: &str) -> Option<EndpointHealth> {
        summary(&self.workers.lock().ok()?, name)
    }
}

fn overall_state(w: &[Worker], endpoint: &str) -> EndpointState {
    w.iter()
        .filter_map(|x| x.endpoints.get(endpoint))
        .map(|h| h.state)
        .max()
        .unwrap_or(EndpointState::Healthy)
}

fn summary(w: &[Worker], endpoint: &str) -> Option<EndpointHealth> {
    let mut out: Option<EndpointHealth> = None;
    for worker in w {
        let (state, committed, err, err_ms, failures, dead) = match worker.endpoints.get(endpoint) {
            Some(h) => (
                h.state,
                h.committed,
                h.last_error.as_ref(),
                h.last_error_ms,
                h.failures,
                h.dead_lettered,
            ),
            None => (EndpointState::Healthy, worker.frontier, None, None, 0, 0),
        };
        let o = out.get_or_insert(EndpointHealth {
            state,
            committed,
            last_error: None,
            last_error_ms: None,
            failures: 0,
            dead_lettered: 0,
        });
        o.state = o.state.max(state);
        o.dead_lettered += dead;
        o.committed = o.committed.min(committed);
        o.failures += failures;
        if err_ms > o.last_error_ms {
            o.last_error = err.cloned();
            o.last_error_ms = err_ms;
        }
    }
    out.filter(|_| w.iter().any(|x| x.endpoints.contains_key(endpoint)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(state: EndpointState, committed: u64, err: Option<(&str, i64)>) -> WorkerHealth {
        WorkerHealth {
            state,
            committed,
            last_error: err.map(|e| e.0.to_owned()),
            last_error_ms: err.map(|e| e.1),
            failures: u64::from(err.is_some()),
            dead_lettered: 0,
        }
    }

    #[test]
    fn an_endpoint_is_as_healthy_as_its_worst_worker() {
        let b = HealthBoard::default();
        b.frontier(0, 100);
        b.frontier(1, 90);
        assert_eq!(b.report(0, "a", h(EndpointState::Healthy, 100, None)), None);
        assert_eq!(
            b.endpoint("a").map(|e| e.committed),
            Some(90),
            "worker 1 is at 90"
        );
        assert_eq!(
            b.report(1, "a", h(EndpointState::Unhealthy, 40, Some(("disk", 5)))),
            Some((EndpointState::Healthy, EndpointState::Unhealthy))
        );
        assert_eq!(
            b.report(0, "a", h(EndpointState::Degraded, 100, Some(("older", 1)))),
            None,
            "still unhealthy overall"
        );
        let a = b.endpoint("a").expect("a");
        assert_eq!(
            (a.state, a.committed, a.last_error.as_deref(), a.failures),
            (EndpointState::Unhealthy, 40, Some("disk"), 2)
        );
        assert_eq!(
            b.report(1, "a", h(EndpointState::Healthy, 95, Some(("disk", 5)))),
            Some((EndpointState::Unhealthy, EndpointState::Degraded))
        );
        assert!(b.endpoint("b").is_none());
        assert_eq!(b.endpoints().len(), 1);
    }
}
