//! One endpoint in one worker's sink: its open files, its commit point, and whether it is
//! writing, waiting to retry, or catching up after a failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use weir_core::recovery::Recovery;
use weir_core::{DeadLetterPolicy, EndpointSpec, WorkerHealth};

use super::file::OpenFile;

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
    pub recovery: Recovery,
    /// The endpoint's dead-letter policy as the rules last said.
    pub dead_letter: Option<DeadLetterPolicy>,
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
            recovery: Recovery::default(),
            dead_letter: None,
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
        self.recovery.is_live()
    }

    /// What this worker reports about the endpoint.
    pub fn health(&self) -> WorkerHealth {
        self.recovery.health(self.committed_min)
    }
}
