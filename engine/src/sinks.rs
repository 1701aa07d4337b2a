//! The sinks of one worker, one per endpoint kind, and the log floor they allow.
//!
//! Each kind's sink gets the deliveries for its endpoints; the engine tells every sink how
//! far the input is complete, serves their replays, and lets the feed release what all
//! sinks of all workers have committed.

use std::sync::{Arc, Mutex};

use weir_core::{Delivery, EndpointSpec, EventFeed, ReplayRequest, Sink, SinkError, SinkFactory};

/// The lowest committed offset of every (worker, sink) of this process, and the feed to
/// tell. In a cluster the feed holds events of other processes' partitions too, so it is
/// released only below every process's floor as well (`peers`, shared by the dataflow).
pub(crate) struct Floors {
    floors: Mutex<Vec<u64>>,
    /// What the insights' stored checkpoint still needs (`u64::MAX`: nothing).
    insights: Mutex<u64>,
    /// Below what the registry replica has applied every process's changes (`u64::MAX`:
    /// no replica).
    replica: Mutex<u64>,
    workers: usize,
    sinks: usize,
    /// The last floor each other process reported; `u64::MAX` for this one.
    peers: Mutex<Vec<u64>>,
    /// Which processes said their log is closed (this one's slot: this process's own).
    closed: Mutex<Vec<bool>>,
    released: Mutex<u64>,
    feed: Arc<dyn EventFeed>,
    process: usize,
}

impl Floors {
    /// `insights` is what the insights need at the start (`u64::MAX` when they keep no
    /// checkpoint); `replica` what the registry replica does (`u64::MAX`: none).
    /// `processes` and `process`: the cluster and this process's place in it (1 and 0
    /// alone).
    pub(crate) fn new(
        workers: usize,
        sinks: usize,
        start: u64,
        (insights, replica): (u64, u64),
        feed: Arc<dyn EventFeed>,
        (processes, process): (usize, usize),
    ) -> Floors {
        feed.release(start);
        let mut peers = vec![start; processes.max(1)];
        if let Some(me) = peers.get_mut(process) {
            *me = u64::MAX;
        }
        Floors {
            floors: Mutex::new(vec![start; workers.max(1) * sinks.max(1)]),
            insights: Mutex::new(insights),
            replica: Mutex::new(replica),
            workers: workers.max(1),
            sinks: sinks.max(1),
            closed: Mutex::new(vec![false; processes.max(1)]),
            process,
            peers: Mutex::new(peers),
            released: Mutex::new(start),
            feed,
        }
    }

    /// This process's floor: its sinks', insights' and registry replica's lowest.
    pub(crate) fn local(&self) -> u64 {
        let sinks = self
            .floors
            .lock()
            .ok()
            .and_then(|v| v.iter().copied().min())
            .unwrap_or(0);
        sinks
            .min(self.insights.lock().map_or(0, |i| *i))
            .min(self.replica.lock().map_or(0, |r| *r))
    }

    /// This process's log is closed and read to its end.
    pub(crate) fn close_local(&self) {
        if let Ok(mut c) = self.closed.lock()
            && let Some(me) = c.get_mut(self.process)
        {
            *me = true;
        }
    }

    pub(crate) fn local_closed(&self) -> bool {
        self.closed
            .lock()
            .is_ok_and(|c| c.get(self.process).copied().unwrap_or(false))
    }

    /// Every process's log is closed: only then do the sources end. A source that ended
    /// while others run would let the cluster's frontier follow the others' clocks, and
    /// this process's next events could then fall below their commits.
    pub(crate) fn all_closed(&self) -> bool {
        self.closed.lock().is_ok_and(|c| c.iter().all(|x| *x))
    }

    /// Another process's floor, and whether its log is closed, as it reported them.
    pub(crate) fn set_peer(&self, process: usize, floor: u64, closed: bool) {
        if closed
            && let Ok(mut c) = self.closed.lock()
            && let Some(slot) = c.get_mut(process)
        {
            *slot = true;
        }
        let changed = match self.peers.lock() {
            Ok(mut p) => match p.get_mut(process) {
                Some(slot) if *slot != u64::MAX && *slot != floor => {
                    *slot = floor;
                    true
                }
                _ => false,
            },
            Err(_) => false,
        };
        if changed {
            self.release();
        }
    }

    /// `worker` is timely's index: timely numbers workers process by process, so modulo
    /// the thread count it is this process's slot.
    fn set(&self, worker: usize, sink: usize, floor: u64) {
        let Ok(mut v) = self.floors.lock() else {
            return;
        };
        let i = (worker % self.workers) * self.sinks + sink;
        if i >= v.len() || v[i] == floor {
            return;
        }
        v[i] = floor;
        drop(v);
        self.release();
    }

    pub(crate) fn set_insights(&self, floor: u64) {
        Self::set_one(&self.insights, floor);
        self.release();
    }

    pub(crate) fn set_replica(&self, floor: u64) {
        Self::set_one(&self.replica, floor);
        self.release();
    }

    fn set_one(slot: &Mutex<u64>, floor: u64) {
        if let Ok(mut s) = slot.lock() {
            *s = floor;
        }
    }

    /// Lets the feed go below this process's floor and every other process's.
    fn release(&self) {
        let peers = self
            .peers
            .lock()
            .map_or(0, |p| p.iter().copied().min().unwrap_or(u64::MAX));
        let min = self.local().min(peers);
        if let Ok(mut released) = self.released.lock()
            && min > *released
        {
            *released = min;
            self.feed.release(min);
        }
    }
}

/// One worker's sinks.
pub(crate) struct SinkSet {
    worker: usize,
    sinks: Vec<(&'static str, Box<dyn Sink>)>,
    floors: Arc<Floors>,
    warned_kinds: Vec<String>,
}

impl SinkSet {
    pub(crate) fn open(
        factories: &[Arc<dyn SinkFactory>],
        worker: usize,
        workers: usize,
        floors: Arc<Floors>,
    ) -> Result<SinkSet, SinkError> {
        let sinks = factories
            .iter()
            .map(|f| f.open(worker, workers).map(|s| (f.kind(), s)))
            .collect::<Result<_, _>>()?;
        Ok(SinkSet {
            worker,
            sinks,
            floors,
            warned_kinds: Vec::new(),
        })
    }

    /// Hands deliveries to the sink of the endpoint's kind.
    pub(crate) fn write(
        &mut self,
        endpoint: &Arc<EndpointSpec>,
        batch: Vec<Delivery>,
    ) -> Result<(), SinkError> {
        let kind = endpoint.kind.sink();
        match self
            .sinks
            .iter_mut()
            .find(|(k, _)| *k == kind || *k == weir_core::sink::ANY_KIND)
        {
            Some((_, s)) => s.write(endpoint, batch),
            None => {
                if !self.warned_kinds.iter().any(|k| k == kind) {
                    self.warned_kinds.push(kind.to_owned());
                    tracing::error!(endpoint = %endpoint.name, kind, "no sink for this endpoint kind; its deliveries are dropped");
                }
                Err(SinkError::Unsupported(endpoint.name.to_string()))
            }
        }
    }

    pub(crate) fn advance(&mut self, frontier: u64) -> Vec<Result<(), SinkError>> {
        let out = self
            .sinks
            .iter_mut()
            .map(|(_, s)| s.advance(frontier))
            .collect();
        self.report_floors();
        out
    }

    pub(crate) fn close(&mut self, end: u64) -> Vec<Result<(), SinkError>> {
        let out = self.sinks.iter_mut().map(|(_, s)| s.close(end)).collect();
        self.report_floors();
        out
    }

    pub(crate) fn retry_now(&mut self) {
        self.sinks.iter_mut().for_each(|(_, s)| s.retry_now());
    }

    /// The first sink that wants a replay, and which one it is.
    pub(crate) fn replay_request(&mut self) -> Option<(usize, ReplayRequest)> {
        self.sinks
            .iter_mut()
            .enumerate()
            .find_map(|(i, (_, s))| s.replay_request().map(|r| (i, r)))
    }

    pub(crate) fn replay(
        &mut self,
        sink: usize,
        endpoint: &str,
        spec: Option<&Arc<EndpointSpec>>,
        batch: Vec<Delivery>,
        through: u64,
    ) -> Result<(), SinkError> {
        let r = match self.sinks.get_mut(sink) {
            Some((_, s)) => s.replay(endpoint, spec, batch, through),
            None => Ok(()),
        };
        self.report_floors();
        r
    }

    pub(crate) fn uncommitted(&self, sink: usize, endpoint: &str, batch: &mut Vec<Delivery>) {
        if let Some((_, s)) = self.sinks.get(sink) {
            s.uncommitted(endpoint, batch);
        }
    }

    pub(crate) fn dead_lettered(
        &mut self,
        sink: usize,
        endpoint: &str,
        count: u64,
        through: u64,
    ) -> Result<(), SinkError> {
        let r = match self.sinks.get_mut(sink) {
            Some((_, s)) => s.dead_lettered(endpoint, count, through),
            None => Ok(()),
        };
        self.report_floors();
        r
    }

    /// The lowest offset any endpoint of this worker has not committed: where a replay
    /// may start.
    pub(crate) fn floor(&self) -> u64 {
        self.sinks
            .iter()
            .map(|(_, s)| s.floor())
            .min()
            .unwrap_or(u64::MAX)
    }

    fn report_floors(&self) {
        for (i, (_, s)) in self.sinks.iter().enumerate() {
            self.floors.set(self.worker, i, s.floor());
        }
    }
}
