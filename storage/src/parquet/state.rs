//! One endpoint in one worker's sink: its open files, its commit point, and whether it is
//! writing, waiting to retry, or catching up after a failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_core::{EndpointSpec, EndpointState as Health, WorkerHealth};

use super::file::OpenFile;

/// The first retry after a failure waits this long; each further failure doubles it.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

pub(super) fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Writing live deliveries.
    Live,
    /// Writing failed; deliveries are dropped (they stay in the log) until `retry_at`.
    Failed { attempts: u32, retry_at: Instant },
    /// Rewriting what was dropped, from the log; `replayed` is how far it has come. Until a
    /// commit succeeds (`proven`) a retry has not shown that the problem is gone.
    Resuming {
        attempts: u32,
        replayed: u64,
        proven: bool,
    },
}

pub(super) struct EndpointState {
    pub spec: Option<Arc<EndpointSpec>>,
    /// Per partition (indexed by partition): deliveries below this offset are in committed
    /// files, possibly of an earlier run with another worker count.
    pub committed: Vec<u64>,
    /// The lowest and highest of `committed` over this worker's partitions.
    pub committed_min: u64,
    pub committed_max: u64,
    /// Open files by partition hour.
    pub files: BTreeMap<i64, OpenFile>,
    pub rows: usize,
    pub opened: Option<Instant>,
    pub last_offset: Option<u64>,
    pub phase: Phase,
    /// The latest failure and when it happened (ms since the epoch).
    pub last_error: Option<(String, i64)>,
    pub failures: u64,
}

impl EndpointState {
    pub fn new(committed: Vec<u64>, partitions: &[u16]) -> EndpointState {
        let mut s = EndpointState {
            spec: None,
            committed,
            committed_min: 0,
            committed_max: 0,
            files: BTreeMap::new(),
            rows: 0,
            opened: None,
            last_offset: None,
            phase: Phase::Live,
            last_error: None,
            failures: 0,
        };
        s.recount(partitions);
        s
    }

    /// Recomputes the bounds of `committed` over `partitions`.
    pub fn recount(&mut self, partitions: &[u16]) {
        let owned = partitions.iter().map(|p| self.committed[usize::from(*p)]);
        self.committed_min = owned.clone().min().unwrap_or(0);
        self.committed_max = owned.max().unwrap_or(0);
    }

    /// Raises the committed offset of every one of `partitions` to at least `to`.
    pub fn raise(&mut self, partitions: &[u16], to: impl Fn(u16) -> u64) {
        for &p in partitions {
            let c = &mut self.committed[usize::from(p)];
            *c = (*c).max(to(p));
        }
        self.recount(partitions);
    }

    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    /// Every delivery to this endpoint below the returned offset is in its files (or was
    /// committed): what a commit may claim. `None` while failed.
    pub fn complete_below(&self, frontier: u64) -> Option<u64> {
        match self.phase {
            Phase::Live => Some(frontier),
            Phase::Resuming { replayed, .. } => Some(replayed),
            Phase::Failed { .. } => None,
        }
    }

    /// What this worker reports about the endpoint.
    pub fn health(&self) -> WorkerHealth {
        let committed = self.committed_min;
        let state = match self.phase {
            Phase::Live => Health::Healthy,
            Phase::Resuming { proven: true, .. } => Health::Degraded,
            Phase::Resuming { .. } | Phase::Failed { .. } => Health::Unhealthy,
        };
        WorkerHealth {
            state,
            committed,
            last_error: self.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_ms: self.last_error.as_ref().map(|(_, t)| *t),
            failures: self.failures,
        }
    }

    /// The attempts made so far in the current outage.
    pub fn attempts(&self) -> u32 {
        match self.phase {
            Phase::Live => 0,
            Phase::Failed { attempts, .. } | Phase::Resuming { attempts, .. } => attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let secs: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }
}
