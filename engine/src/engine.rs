//! Starting and stopping the dataflow workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use timely::dataflow::operators::Exchange;
use tokio::sync::mpsc;
use weir_core::{DeviceDirectory, Event, SinkFactory};
use weir_rules::{Outcome, RuleSet};

use crate::ingress::{Ingress, WorkerQueue, device_hash};
use crate::metrics::EngineMetrics;
use crate::operators::{Route, SinkTo, ingress_source};

/// The live rule set; replacing it takes effect at the next batch in every worker.
pub type RulesHandle = Arc<ArcSwap<RuleSet>>;

/// Called for every routed event; `weir rules test` uses it to report decisions.
pub type TraceFn = Arc<dyn Fn(&Event, &RuleSet, &Outcome) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Timely worker threads.
    pub workers: usize,
    /// Batches each worker's ingress queue holds before senders wait.
    pub queue_batches: usize,
    /// How often an idle worker advances its clock, letting sinks roll and finalise files.
    pub tick: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            queue_batches: 1024,
            tick: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine.workers must be at least 1")]
    NoWorkers,
    #[error("cannot start the dataflow workers: {0}")]
    Start(String),
    #[error("a dataflow worker failed: {0}")]
    Worker(String),
}

/// A running engine.
pub struct Engine {
    ingress: Ingress,
    shutdown: Arc<AtomicBool>,
    guards: Option<timely::communication::WorkerGuards<()>>,
    metrics: Arc<EngineMetrics>,
}

impl Engine {
    /// Starts `config.workers` timely workers, each running the routing dataflow.
    pub fn start(
        config: EngineConfig,
        rules: RulesHandle,
        directory: Arc<dyn DeviceDirectory>,
        sinks: Arc<dyn SinkFactory>,
        trace: Option<TraceFn>,
    ) -> Result<Engine, EngineError> {
        if config.workers == 0 {
            return Err(EngineError::NoWorkers);
        }
        let mut receivers = Vec::new();
        let mut queues = Vec::new();
        for _ in 0..config.workers {
            let (tx, rx) = mpsc::channel(config.queue_batches.max(1));
            receivers.push(Some(rx));
            queues.push(WorkerQueue {
                tx,
                activator: OnceLock::new(),
            });
        }
        let queues: Arc<[WorkerQueue]> = queues.into();
        let receivers = Arc::new(Mutex::new(receivers));
        let shutdown = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(EngineMetrics::default());

        let worker_queues = Arc::clone(&queues);
        let worker_shutdown = Arc::clone(&shutdown);
        let worker_metrics = Arc::clone(&metrics);
        let tick = config.tick;
        let guards = timely::execute(timely::Config::process(config.workers), move |worker| {
            let index = worker.index();
            let rx = receivers
                .lock()
                .ok()
                .and_then(|mut r| r.get_mut(index).and_then(Option::take));
            let Some(rx) = rx else {
                tracing::error!(
                    worker = index,
                    "engine worker started without an ingress queue"
                );
                return;
            };
            let sink = match sinks.open(index) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot open sinks; worker stops");
                    return;
                }
            };
            let queue = &worker_queues[index];
            worker.dataflow::<i64, _, _>(|scope| {
                ingress_source(
                    scope,
                    rx,
                    &queue.activator,
                    Arc::clone(&worker_shutdown),
                    tick,
                    Arc::clone(&worker_metrics),
                )
                .exchange(|e: &Event| device_hash(&e.device_id))
                .route(
                    Arc::clone(&rules),
                    Arc::clone(&directory),
                    trace.clone(),
                    Arc::clone(&worker_metrics),
                )
                .sink_to(sink, Arc::clone(&worker_metrics));
            });
            while worker.step_or_park(None) {}
        })
        .map_err(EngineError::Start)?;

        Ok(Engine {
            ingress: Ingress { queues },
            shutdown,
            guards: Some(guards),
            metrics,
        })
    }

    /// The handle gateways send events through.
    pub fn ingress(&self) -> Ingress {
        self.ingress.clone()
    }

    pub fn metrics(&self) -> Arc<EngineMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Stops accepting events, lets the workers drain what is queued, finalises sinks and
    /// waits for the workers. Blocks; call it from a blocking context.
    pub fn shutdown(mut self) -> Result<(), EngineError> {
        self.shutdown.store(true, Ordering::SeqCst);
        for q in self.ingress.queues.iter() {
            if let Some(a) = q.activator.get() {
                let _ = a.activate();
            }
        }
        let Some(guards) = self.guards.take() else {
            return Ok(());
        };
        for r in guards.join() {
            r.map_err(EngineError::Worker)?;
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Without an explicit shutdown the workers would wait for events forever.
        self.shutdown.store(true, Ordering::SeqCst);
        for q in self.ingress.queues.iter() {
            if let Some(a) = q.activator.get() {
                let _ = a.activate();
            }
        }
    }
}
