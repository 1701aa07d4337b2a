//! Starting and stopping the dataflow workers.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use timely::dataflow::operators::Exchange;
use weir_core::feed::{device_hash, partition_of};
use weir_core::{Checkpoints, DeviceDirectory, Event, EventFeed, Ingest, Replica, SinkFactory};
use weir_rules::{Outcome, RuleSet};

use crate::cluster::{self, ClusterConfig};
use crate::context::{self, Lookup, Seed};
use crate::insights::resume::{CHECKPOINT, Progress, Resume};
use crate::metrics::EngineMetrics;
use crate::operators::{
    ApplyRegistry, Dedupe, InOffsetOrder, InsightSetup, Route, RouteSetup, RunInsights, SinkTo,
    feed_source,
};
use crate::replay::Replayer;
use crate::sinks::{Floors, SinkSet};

/// The live rule set; replacing it takes effect at the next batch in every worker.
pub type RulesHandle = Arc<ArcSwap<RuleSet>>;

/// Called for every routed event; `weir rules test` uses it to report decisions.
pub type TraceFn = Arc<dyn Fn(&Event, &RuleSet, &Outcome) + Send + Sync>;

/// What the engine may call out to besides its feed and sinks.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Reports every routing decision.
    pub trace: Option<TraceFn>,
    /// Where the engine writes the events it makes itself (the hub's ingest log): dead
    /// letters and insight results. Without it, endpoints with a dead-letter endpoint keep
    /// what they could not deliver, as others do, and insights compute nothing visible.
    pub log: Option<Arc<dyn Ingest>>,
    /// Where insights keep how far they have come, so a restart replays only what their
    /// state needs and writes no result twice. Without it, insights start empty.
    pub checkpoints: Option<Arc<dyn Checkpoints>>,
    /// Counters kept across starts of the engine (a cluster's dataflow restarts); new ones
    /// without.
    pub metrics: Option<Arc<EngineMetrics>>,
    /// In a cluster, this process's registry: every process's registry changes are applied
    /// to it (decision 039). Unused alone.
    pub replica: Option<Arc<dyn Replica>>,
    /// In a cluster, what this process tells the others for their live pages, and where
    /// theirs go. Unused alone.
    pub reports: Option<Arc<dyn cluster::Reports>>,
}

/// How long, and for how many messages per device, repeats are recognised.
#[derive(Debug, Clone, Copy)]
pub struct DedupeConfig {
    /// Messages whose enqueued times are further apart than this are never duplicates.
    pub window: Duration,
    /// Message ids remembered per device; the oldest are forgotten first.
    pub per_device: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window: Duration::from_secs(300),
            per_device: 4096,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Timely worker threads.
    pub workers: usize,
    /// How often an idle worker polls the feed and lets sinks roll aged files.
    pub tick: Duration,
    /// `None` turns duplicate detection off (rule tests do, to see every event).
    pub dedupe: Option<DedupeConfig>,
    /// Close every insight window once the feed has ended (rule tests over recorded
    /// events). A hub never does: its feed ends only when it stops.
    pub close_insights_at_end: bool,
    /// Run over several processes; `None`: this process alone.
    pub cluster: Option<ClusterConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tick: Duration::from_millis(200),
            dedupe: Some(DedupeConfig::default()),
            close_insights_at_end: false,
            cluster: None,
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
    #[error("cannot join the cluster: {0}")]
    Join(#[from] cluster::join::JoinError),
}

/// A running engine. It stops by itself once its feed is closed and read to the end.
pub struct Engine {
    guards: timely::communication::WorkerGuards<()>,
    metrics: Arc<EngineMetrics>,
}

impl Engine {
    /// Starts `config.workers` timely workers, each reading its partitions of `feed` and
    /// writing to one sink of each kind in `sinks`.
    ///
    /// Recovery is the engine's: it reads from the lowest offset any sink had committed
    /// (less a duplicate window, so repeats of committed messages are still recognised);
    /// sinks skip what they had committed; and the feed is released only below what every
    /// sink of every worker has committed since.
    ///
    /// In a cluster this blocks until every process has joined, and the lowest offset is
    /// every process's lowest.
    pub fn start(
        config: EngineConfig,
        rules: RulesHandle,
        directory: Arc<dyn DeviceDirectory>,
        feed: Arc<dyn EventFeed>,
        sinks: Vec<Arc<dyn SinkFactory>>,
        hooks: Hooks,
    ) -> Result<Engine, EngineError> {
        if config.workers == 0 {
            return Err(EngineError::NoWorkers);
        }
        let checkpoint = match &hooks.checkpoints {
            Some(store) => store
                .load(CHECKPOINT)
                .map_err(|e| EngineError::Start(e.to_string()))?,
            None => None,
        };
        let (processes, process) = config
            .cluster
            .as_ref()
            .map_or((1, 0), |c| (c.processes(), c.process));
        // The partitions this process's workers own: in a cluster its commit store has
        // nothing for the others (their owners bring theirs to the agreement).
        let owned = weir_core::feed::partitions_of_process(process, processes, config.workers);
        let sinks_floor = sinks
            .iter()
            .map(|s| s.recovered_floor_of(&owned))
            .min()
            .unwrap_or(0);
        let floor = checkpoint.map_or(sinks_floor, |c| c.floor.min(sinks_floor));
        // A registry replica needs every change it has not applied: they are in the logs.
        let replica = hooks.replica.clone().filter(|_| config.cluster.is_some());
        let replica_floor = replica.as_ref().map_or(u64::MAX, |r| r.applied());
        let floor = floor.min(replica_floor);
        let prepare = Prepare {
            checkpoint,
            feed: Arc::clone(&feed),
            directory: Arc::clone(&directory),
            dedupe: config.dedupe,
            workers: config.workers,
            sinks: sinks.len(),
            checkpoints: hooks.checkpoints.clone(),
            cluster: (processes, process),
            replica_floor,
        };
        let shared: Arc<OnceLock<Shared>> = Arc::default();
        let metrics = hooks.metrics.clone().unwrap_or_default();
        let worker_metrics = Arc::clone(&metrics);
        let (tick, dedupe, close_at_end) =
            (config.tick, config.dedupe, config.close_insights_at_end);
        let threads = config.workers;
        let in_cluster = config.cluster.is_some();
        let (allocators, guard) = match &config.cluster {
            Some(c) => c.allocators(threads)?,
            None => timely::CommunicationConfig::Process(threads)
                .try_build()
                .map_err(EngineError::Start)?,
        };
        let worker_config = timely::WorkerConfig::default();
        let guards = timely::execute::execute_from(allocators, guard, worker_config, move |worker| {
            let (index, peers) = (worker.index(), worker.peers());
            // This process's log, split over this process's workers; the exchange below
            // takes each event to the worker that owns its partition, in any process.
            let local = index % threads;
            let floor = if in_cluster {
                cluster::agree_floor(worker, threads, floor)
            } else {
                floor
            };
            let Shared {
                from,
                seed,
                resume,
                floors,
                progress,
            } = shared.get_or_init(|| prepare.start(floor)).clone();
            let reader = match feed.reader(local, threads, from) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot read the event feed; worker stops");
                    return;
                }
            };
            let sink = match SinkSet::open(&sinks, index, peers, Arc::clone(&floors)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot open sinks; worker stops");
                    return;
                }
            };
            // In a cluster what an endpoint missed is in every process's log: no replay
            // from this one (the sink restarts the dataflow instead).
            let mut replayer = (!in_cluster).then(|| {
                Replayer::new(
                    Arc::clone(&feed),
                    index,
                    peers,
                    Arc::clone(&rules),
                    Arc::clone(&directory),
                    dedupe,
                )
            });
            worker.dataflow::<u64, _, _>(|scope| {
                let (events, end) = feed_source(
                    scope,
                    reader,
                    &*feed,
                    tick,
                    Arc::clone(&worker_metrics),
                    in_cluster.then(|| Arc::clone(&floors)),
                );
                if let Some(r) = &replica {
                    events
                        .clone()
                        .apply_registry(Arc::clone(r), Arc::clone(&floors), local == 0);
                }
                // By virtual partition, as the feed splits them: a device stays on the
                // worker that owns its partition.
                let events = events.exchange(|e: &Arc<Event>| {
                    u64::from(partition_of(device_hash(e.device_id.as_str())))
                });
                let (events, end) = if in_cluster {
                    let (last, ended) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(false)));
                    cluster::share_floors(
                        scope,
                        Arc::clone(&floors),
                        hooks.reports.clone(),
                        (process, local == 0),
                        tick,
                        Rc::clone(&ended),
                    );
                    (events.in_offset_order(Rc::clone(&last), ended), last)
                } else {
                    (events, end)
                };
                let events = match dedupe {
                    Some(cfg) => events.dedupe(cfg, Arc::clone(&worker_metrics)),
                    None => events,
                };
                // Each device's tags by offset, next to the device's events.
                let context = context::arrange(events.clone());
                if let Some(r) = replayer.as_mut() {
                    r.read_context(Lookup::new(context.trace.clone(), Arc::clone(&seed)));
                }
                events.clone().insights(
                    context.clone(),
                    InsightSetup {
                    rules: Arc::clone(&rules),
                    directory: Arc::clone(&directory),
                    seed: Arc::clone(&seed),
                    log: hooks.log.clone(),
                    tick,
                    metrics: Arc::clone(&worker_metrics),
                    resume: Arc::clone(&resume),
                    progress: Arc::clone(&progress),
                    close_at_end,
                });
                events
                    .route(
                        context,
                        RouteSetup {
                            rules: Arc::clone(&rules),
                            directory: Arc::clone(&directory),
                            seed: Arc::clone(&seed),
                            trace: hooks.trace.clone(),
                            metrics: Arc::clone(&worker_metrics),
                        },
                    )
                    .sink_to(
                        sink,
                        replayer,
                        hooks.log.clone(),
                        end,
                        tick,
                        Arc::clone(&worker_metrics),
                    );
            });
            EngineMetrics::add(&worker_metrics.workers_running, 1);
            while worker.step_or_park(None) {}
            worker_metrics.workers_running.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        })
        .map_err(EngineError::Start)?;
        Ok(Engine { guards, metrics })
    }

    pub fn metrics(&self) -> Arc<EngineMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Waits for the workers to finish: close the feed first. Blocks.
    pub fn join(self) -> Result<(), EngineError> {
        for r in self.guards.join() {
            r.map_err(EngineError::Worker)?;
        }
        Ok(())
    }
}

/// What every worker of this process shares, made once the start floor is known.
#[derive(Clone)]
struct Shared {
    from: u64,
    seed: Arc<Seed>,
    resume: Arc<Resume>,
    floors: Arc<Floors>,
    progress: Arc<Progress>,
}

/// The inputs of [`Shared`].
struct Prepare {
    checkpoint: Option<weir_core::Checkpoint>,
    feed: Arc<dyn EventFeed>,
    directory: Arc<dyn DeviceDirectory>,
    dedupe: Option<DedupeConfig>,
    workers: usize,
    sinks: usize,
    checkpoints: Option<Arc<dyn Checkpoints>>,
    cluster: (usize, usize),
    replica_floor: u64,
}

impl Prepare {
    /// Reads from `floor` (less a duplicate window), seeds the device context there and
    /// resumes insights from their checkpoint.
    fn start(&self, floor: u64) -> Shared {
        let feed = &self.feed;
        let resume = Arc::new(match self.checkpoint {
            Some(c) => Resume::scan(&**feed, c),
            None => Resume::fresh(),
        });
        let from = match self.dedupe {
            Some(d) => feed.offset_before(floor, d.window),
            None => floor,
        };
        tracing::info!(floor, from, "engine starts reading the log");
        let seed = Arc::new(Seed::build(&**feed, from, &*self.directory));
        let floors = Arc::new(Floors::new(
            self.workers,
            self.sinks,
            floor,
            (
                match (&self.checkpoints, self.checkpoint) {
                    (None, _) => u64::MAX,
                    (Some(_), c) => c.map_or(floor, |c| c.floor),
                },
                self.replica_floor,
            ),
            Arc::clone(feed),
            self.cluster,
        ));
        let progress = Arc::new(Progress::new(
            self.workers,
            self.checkpoints.clone(),
            Arc::clone(&floors),
        ));
        Shared {
            from,
            seed,
            resume,
            floors,
            progress,
        }
    }
}
