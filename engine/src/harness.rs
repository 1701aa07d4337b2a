//! Runs a fixed list of events through the real dataflow and captures what comes out.
//!
//! `weir rules test` uses this to show what rules do to recorded events, and tests use it
//! to compare the engine with the reference evaluator. Events get offsets 0, 1, 2, ... in
//! the order given; results are keyed by that index.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use weir_core::ingest::AckFuture;
use weir_core::{
    Delivery, DeviceDirectory, DeviceId, EndpointSpec, Event, EventSource, Ingest, IngestFuture,
    Sink, SinkError, SinkFactory,
};
use weir_rules::RuleSet;

use crate::engine::{Engine, EngineConfig, EngineError, Hooks, TraceFn};
use crate::memory::MemoryFeed;

/// The routing decision for one event, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The event's position in the input (its offset).
    pub offset: u64,
    pub routes: Vec<String>,
    pub endpoints: Vec<String>,
    pub fallback: bool,
}

/// What the sinks received.
#[derive(Debug, Clone)]
pub struct Captured {
    pub endpoint: Arc<EndpointSpec>,
    pub delivery: Delivery,
}

#[derive(Debug, Default)]
pub struct HarnessOutput {
    /// One per event that was not dropped as a duplicate, sorted by offset.
    pub traces: Vec<Trace>,
    /// Sorted by event offset, then endpoint name.
    pub deliveries: Vec<Captured>,
    /// What insights wrote (results and late letters), in the order written.
    pub insights: Vec<Event>,
}

/// Stands in for the ingest log: keeps what the engine writes, except clock ticks.
#[derive(Default)]
struct CaptureLog(Mutex<Vec<Event>>);

impl Ingest for CaptureLog {
    fn ingest(&self, _device: &DeviceId, batch: Vec<Event>) -> IngestFuture {
        if let Ok(mut v) = self.0.lock() {
            v.extend(batch.into_iter().filter(|e| e.source != EventSource::Clock));
        }
        Box::pin(async { Ok(Box::pin(async { Ok(()) }) as AckFuture) })
    }
}

type Shared = Arc<Mutex<Vec<Captured>>>;

struct CaptureFactory(Shared);
struct CaptureSink(Shared);

impl SinkFactory for CaptureFactory {
    fn kind(&self) -> &'static str {
        weir_core::sink::ANY_KIND
    }
    fn recovered_floor(&self) -> u64 {
        0
    }
    fn open(&self, _worker: usize, _workers: usize) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(CaptureSink(Arc::clone(&self.0))))
    }
}

impl Sink for CaptureSink {
    fn write(
        &mut self,
        endpoint: &Arc<EndpointSpec>,
        batch: Vec<Delivery>,
    ) -> Result<(), SinkError> {
        if let Ok(mut v) = self.0.lock() {
            v.extend(batch.into_iter().map(|delivery| Captured {
                endpoint: Arc::clone(endpoint),
                delivery,
            }));
        }
        Ok(())
    }
    fn advance(&mut self, _frontier: u64) -> Result<(), SinkError> {
        Ok(())
    }
    fn close(&mut self, _end: u64) -> Result<(), SinkError> {
        Ok(())
    }
    fn floor(&self) -> u64 {
        0
    }
}

/// Runs `events` through an engine with `workers` workers and returns what happened.
pub fn run(
    events: Vec<Event>,
    rules: RuleSet,
    directory: Arc<dyn DeviceDirectory>,
    workers: usize,
) -> Result<HarnessOutput, EngineError> {
    let captured: Shared = Arc::default();
    let log: Arc<CaptureLog> = Arc::default();
    let traces: Arc<Mutex<Vec<Trace>>> = Arc::default();
    let trace_sink = Arc::clone(&traces);
    let trace: TraceFn = Arc::new(move |e, rules, outcome| {
        let t = Trace {
            offset: e.offset,
            routes: outcome
                .routes
                .iter()
                .map(|&i| rules.routes[i].name.to_string())
                .collect(),
            endpoints: outcome
                .endpoints
                .iter()
                .map(|&i| rules.endpoints[i].name.to_string())
                .collect(),
            fallback: outcome.fallback,
        };
        if let Ok(mut v) = trace_sink.lock() {
            v.push(t);
        }
    });
    let feed = MemoryFeed::new(workers, 1 << 16);
    let config = EngineConfig {
        workers,
        tick: Duration::from_millis(20),
        dedupe: None,
        close_insights_at_end: true,
        cluster: None,
    };
    let engine = Engine::start(
        config,
        Arc::new(ArcSwap::from_pointee(rules)),
        directory,
        Arc::new(feed.clone()),
        vec![Arc::new(CaptureFactory(Arc::clone(&captured)))],
        Hooks {
            trace: Some(trace),
            log: Some(Arc::clone(&log) as Arc<dyn Ingest>),
            checkpoints: None,
            metrics: None,
            replica: None,
            reports: None,
        },
    )?;
    let pushed = feed.push(events);
    feed.close();
    engine.join()?;
    pushed.map_err(|e| EngineError::Worker(e.to_string()))?;
    let mut out = HarnessOutput {
        traces: std::mem::take(
            &mut *traces
                .lock()
                .map_err(|e| EngineError::Worker(e.to_string()))?,
        ),
        deliveries: std::mem::take(
            &mut *captured
                .lock()
                .map_err(|e| EngineError::Worker(e.to_string()))?,
        ),
        insights: std::mem::take(
            &mut *log
                .0
                .lock()
                .map_err(|e| EngineError::Worker(e.to_string()))?,
        ),
    };
    out.traces.sort_by_key(|t| t.offset);
    out.deliveries.sort_by(|a, b| {
        (a.delivery.event.offset, &a.endpoint.name)
            .cmp(&(b.delivery.event.offset, &b.endpoint.name))
    });
    Ok(out)
}
