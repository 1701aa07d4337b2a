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

pub mod join;

/// What `timely::execute::execute_from` starts workers from.
pub(crate) type Allocators = (
    Vec<timely::communication::allocator::AllocatorBuilder>,
    Box<dyn std::any::Any + Send>,
);

/// This process's place in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Index of this process in `hosts`.
    pub process: usize,
    /// `host:port` of every process's timely endpoint, in process order.
    pub hosts: Vec<String>,
}

/// Spare 1 MiB buffers kept per connection to a peer, per direction.
const SPARE_BUFFERS: usize = 1;

/// Begins every panic that tears the cluster's dataflow down on purpose: timely's way to
/// stop a computation over processes is a failure that cascades to every peer.
pub const RESTART: &str = "weir cluster dataflow restarts";

impl ClusterConfig {
    /// Joins every other process (see [`join`]) and builds timely's allocators over the
    /// connections: what `timely::execute` would build from a `Cluster` config, after
    /// Weir's own hello instead of timely's.
    pub(crate) fn allocators(&self, threads: usize) -> Result<Allocators, join::JoinError> {
        use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
        use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
        let sockets = join::connect(&join::Hello::new(self.process, &self.hosts, threads))?;
        let mut hooks = timely::communication::Hooks::default();
        // Each connection to a peer writes through 1 MiB buffers; a burst (a connect storm's
        // events) can leave several of them spare, and timely keeps every spare one for
        // good unless told otherwise. One spare per buffer is enough to reuse under steady
        // load; the rest go back to the allocator.
        hooks.refill.limit = Some(SPARE_BUFFERS);
        let local =
            ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone());
        let (builders, guard) =
            initialize_networking_from_sockets(local, sockets, self.process, threads, hooks)
                .map_err(join::JoinError::Network)?;
        Ok((
            builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
            Box::new(guard),
        ))
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

/// What each process tells the others about itself for their live pages, once a second
/// while the cluster's dataflow runs (a process not heard from lately is down or
/// cut off). The text is opaque to the engine.
pub trait Reports: Send + Sync {
    /// This process's report.
    fn local(&self) -> String;
    /// Another process's latest report.
    fn peer(&self, process: usize, report: String);
}

const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Shares floors while the dataflow runs: worker 0 of each process sends its process's
/// floor to every worker each `tick`, and every process releases its log only below the
/// lowest. With it goes whether the process's log is closed: sources end only once every
/// process's is, and the process's report once a second. Stops once `ended` is set (this
/// worker's input has ended).
pub(crate) fn share_floors(
    scope: Scope<'_, u64>,
    floors: Arc<Floors>,
    reports: Option<Arc<dyn Reports>>,
    (process, first_of_process): (usize, bool),
    tick: Duration,
    ended: Rc<Cell<bool>>,
) {
    let floors_in = Arc::clone(&floors);
    let reports_in = reports.clone().filter(|_| first_of_process);
    source(scope, "FloorsOut", move |cap, info| {
        let mut wake = crate::operators::Wake::new(scope.activator_for(info.address.clone()), tick);
        // Worker 0 speaks for its process; the others have nothing to send.
        let mut cap = first_of_process.then_some(cap);
        let mut reported: Option<std::time::Instant> = None;
        move |output| {
            if ended.get() {
                cap = None;
            }
            let Some(c) = &cap else { return };
            let report = match &reports {
                Some(r) if reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY) => {
                    reported = Some(std::time::Instant::now());
                    r.local()
                }
                _ => String::new(),
            };
            output
                .session(c)
                .give((process, floors.local(), floors.local_closed(), report));
            wake.later();
        }
    })
    .container::<Vec<(usize, u64, bool, String)>>()
    .broadcast()
    .inspect(move |(p, f, closed, report)| {
        floors_in.set_peer(*p, *f, *closed);
        // One worker per process keeps the reports.
        if let Some(r) = &reports_in
            && *p != process
            && !report.is_empty()
        {
            r.peer(*p, report.clone());
        }
    });
}
