//! The engine over several processes on timely's own cluster (decision 037).
//!
//! Every process reads its own ingest log and exchanges each event to the worker that owns
//! its partition, wherever that worker runs. Offsets follow a clock shared by the logs, so
//! the frontier means the same thing in every process. Two things cross processes besides
//! events: where reading starts (the lowest commit point of any process, agreed by a first
//! small dataflow) and how far each log may be released (the lowest floor of any process,
//! shared while it runs).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Inspect, Probe, ToStream};

use crate::sinks::Floors;

/// This process's place in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Index of this process in `hosts`.
    pub process: usize,
    /// `host:port` of every process's timely endpoint, in process order.
    pub hosts: Vec<String>,
}

/// Begins every panic that tears the cluster's dataflow down on purpose: timely's way to
/// stop a computation over processes is a failure that cascades to every peer.
pub const RESTART: &str = "weir cluster dataflow restarts";

impl ClusterConfig {
    pub(crate) fn timely(&self, threads: usize) -> timely::Config {
        timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads,
                process: self.process,
                addresses: self.hosts.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        }
    }

    pub fn processes(&self) -> usize {
        self.hosts.len()
    }
}

/// The lowest `floor` of every process: where each must start reading its log, since its
/// log holds events of every process's partitions. The first dataflow of every worker of
/// the cluster: worker 0 of each process sends its process's floor to every worker.
pub(crate) fn agree_floor(worker: &mut timely::worker::Worker, threads: usize, floor: u64) -> u64 {
    let lowest = Rc::new(Cell::new(floor));
    let seen = Rc::clone(&lowest);
    let mine: Vec<u64> = if worker.index().is_multiple_of(threads) {
        vec![floor]
    } else {
        Vec::new()
    };
    let probe = worker.dataflow::<u64, _, _>(move |scope| {
        let (probe, _) = mine
            .to_stream(scope)
            .broadcast()
            .inspect(move |f| seen.set(seen.get().min(*f)))
            .probe();
        probe
    });
    worker.step_while(|| !probe.done());
    lowest.get()
}

/// Shares floors while the dataflow runs: worker 0 of each process sends its process's
/// floor to every worker each `tick`, and every process releases its log only below the
/// lowest. With it goes whether the process's log is closed: sources end only once every
/// process's is. Stops once `ended` is set (this worker's input has ended).
pub(crate) fn share_floors(
    scope: Scope<'_, u64>,
    floors: Arc<Floors>,
    process: usize,
    first_of_process: bool,
    tick: Duration,
    ended: Rc<Cell<bool>>,
) {
    let floors_in = Arc::clone(&floors);
    source(scope, "FloorsOut", move |cap, info| {
        let activator = scope.activator_for(info.address.clone());
        // Worker 0 speaks for its process; the others have nothing to send.
        let mut cap = first_of_process.then_some(cap);
        move |output| {
            if ended.get() {
                cap = None;
            }
            let Some(c) = &cap else { return };
            output
                .session(c)
                .give((process, floors.local(), floors.local_closed()));
            activator.activate_after(tick);
        }
    })
    .container::<Vec<(usize, u64, bool)>>()
    .broadcast()
    .inspect(move |(p, f, closed)| floors_in.set_peer(*p, *f, *closed));
}
