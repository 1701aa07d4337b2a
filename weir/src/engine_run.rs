//! Building the engine's sinks and running it: once when this process runs alone; in a
//! cluster again after every failure (a process that died or restarted, an endpoint that
//! must replay), while this process's gateways keep accepting into its log.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use weir_core::{HealthBoard, SinkFactory};
use weir_engine::cluster::RESTART;
use weir_engine::{Engine, EngineConfig, EngineMetrics, Hooks, RulesHandle};
use weir_hub::Hub;
use weir_storage::commit::CommitStore;
use weir_storage::log::{LogFeed, LogIngest};
use weir_storage::parquet::ArchiveMetrics;
use weir_storage::{ParquetConfig, ParquetSinkFactory, Registry};

/// Everything the engine is started from, again at each restart.
pub struct EngineParts {
    pub config: EngineConfig,
    pub archive: ParquetConfig,
    pub commits: Arc<CommitStore>,
    pub health: Arc<HealthBoard>,
    pub uplink: Option<Arc<weir_brokers::upstream::Uplink>>,
    pub hub: Hub,
    pub rules: RulesHandle,
    pub registry: Arc<Registry>,
    pub feed: LogFeed,
    pub ingest: LogIngest,
    pub metrics: Arc<EngineMetrics>,
    pub archive_metrics: Arc<ArchiveMetrics>,
    pub runtime: tokio::runtime::Handle,
    /// This process's report to the others of its cluster, and theirs.
    pub reports: Arc<dyn weir_engine::cluster::Reports>,
}

/// The sink of one broker kind, its links on the hub's runtime.
fn broker<K: weir_brokers::Kind>(
    parts: &EngineParts,
    ctx: K::Context,
) -> anyhow::Result<Arc<dyn SinkFactory>> {
    let f = weir_brokers::factory::BrokerSinkFactory::<K>::new(
        parts.runtime.clone(),
        Arc::clone(&parts.commits),
        Arc::clone(&parts.health),
        Arc::new(ctx),
    )
    .with_context(|| format!("reading the {} endpoints' commit points", K::NAME))?;
    Ok(Arc::new(f))
}

impl EngineParts {
    /// Every sink kind, after recovering the archive: renames the last run committed are
    /// completed and files it had not committed are deleted (the log still has their rows).
    fn sinks(&self) -> anyhow::Result<Vec<Arc<dyn SinkFactory>>> {
        let parquet = ParquetSinkFactory::new(
            self.archive.clone(),
            Arc::clone(&self.commits),
            Arc::clone(&self.health),
        )
        .context("recovering the Parquet archive")?
        .with_metrics(Arc::clone(&self.archive_metrics));
        let archived = parquet.recovery();
        tracing::info!(
            archive_committed_to = parquet.recovered_floor(),
            renames_completed = archived.completed_renames,
            uncommitted_files_removed = archived.removed_temporaries,
            "archive recovered"
        );
        use weir_brokers::{actions, amqp, mqtt, upstream, webhook};
        Ok(vec![
            Arc::new(parquet),
            broker::<amqp::Amqp>(self, ())?,
            broker::<mqtt::Mqtt>(self, ())?,
            broker::<webhook::Webhook>(self, ())?,
            broker::<upstream::Upstream>(self, self.uplink.clone())?,
            broker::<actions::Method>(self, self.hub.clone())?,
            broker::<actions::C2d>(self, self.hub.clone())?,
        ])
    }

    fn start(&self) -> anyhow::Result<Engine> {
        let sinks = self.sinks()?;
        Ok(Engine::start(
            self.config.clone(),
            Arc::clone(&self.rules),
            self.registry.clone(),
            Arc::new(self.feed.clone()),
            sinks,
            Hooks {
                trace: None,
                log: Some(Arc::new(self.ingest.clone())),
                checkpoints: Some(Arc::clone(&self.commits) as Arc<dyn weir_core::Checkpoints>),
                metrics: Some(Arc::clone(&self.metrics)),
                replica: Some(Arc::new(weir_hub::RegistryReplica::new(self.hub.clone()))),
                reports: Some(Arc::clone(&self.reports)),
            },
        )?)
    }
}

/// The engine, running on its own thread.
pub struct Running {
    thread: JoinHandle<anyhow::Result<()>>,
    stopping: Arc<AtomicBool>,
    ended: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Running {
    /// Starts the engine. Alone, an error starting it is returned here; in a cluster the
    /// engine starts once every process has joined, on the engine's thread.
    pub fn start(parts: EngineParts) -> anyhow::Result<Running> {
        let stopping = Arc::new(AtomicBool::new(false));
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        let spawn = |run: Box<dyn FnOnce() -> anyhow::Result<()> + Send>| {
            std::thread::Builder::new()
                .name("weir-engine".into())
                .spawn(move || {
                    let outcome = run();
                    let _ = ended_tx.send(());
                    outcome
                })
        };
        let thread = if parts.config.cluster.is_none() {
            let engine = parts.start()?;
            spawn(Box::new(move || Ok(engine.join()?)))?
        } else {
            quiet_cascades();
            let stop = Arc::clone(&stopping);
            spawn(Box::new(move || supervise(&parts, &stop)))?
        };
        Ok(Running {
            thread,
            stopping,
            ended: Some(ended),
        })
    }

    /// Resolves when the engine ends by itself, before this process stops: it failed (or,
    /// in a cluster, cannot join it), and `join` says why. Pending forever once taken.
    pub async fn ended(&mut self) {
        match self.ended.take() {
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    }

    /// Says the log is about to close: an engine that ends now is not started again.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Waits for the engine to end (close the log first). Blocks.
    pub fn join(self) -> anyhow::Result<()> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?
    }
}

/// How long a cluster's dataflow must have run for a failure to count as new: a restart
/// after a shorter run waits longer first (1 s doubling to 30 s), so an endpoint that
/// keeps failing does not make the cluster replay without pause.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

fn supervise(parts: &EngineParts, stopping: &AtomicBool) -> anyhow::Result<()> {
    let mut backoff = Duration::from_secs(1);
    let joined = std::cell::Cell::new(false);
    loop {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let engine = parts.start()?;
            joined.set(true);
            tracing::info!("cluster dataflow running");
            engine.join().map_err(anyhow::Error::from)
        }));
        let failure = match outcome {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if mismatched(&e) => {
                // This process and one it dialled differ: before this process ever ran,
                // it stops (its settings may be the wrong ones); once it has run with the
                // cluster, it waits for the other to be started again as before.
                if !joined.get() {
                    return Err(e.context(
                        "this process cannot join its cluster; correct the setting named here on whichever process is wrong, then start it again",
                    ));
                }
                tracing::error!(error = %format!("{e:#}"), "a process of the cluster differs from this one; waiting for it to be started as before");
                format!("{e:#}")
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(payload) => text(&*payload),
        };
        if stopping.load(Ordering::SeqCst) {
            // Another process left first (or stopped alone): expected in a cluster's stop.
            tracing::info!(
                reason = %failure,
                "the cluster's dataflow ended while stopping; nothing is lost: the log is read again at the next start"
            );
            return Ok(());
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = Duration::from_secs(1);
        }
        tracing::warn!(
            error = %failure,
            retry_in_secs = backoff.as_secs(),
            "the cluster's dataflow stopped; this process keeps accepting into its log and rejoins when every process is back"
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn mismatched(e: &anyhow::Error) -> bool {
    use weir_engine::EngineError;
    use weir_engine::cluster::join::JoinError;
    matches!(
        e.downcast_ref::<EngineError>(),
        Some(EngineError::Join(JoinError::Mismatch(_)))
    )
}

fn text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a dataflow worker failed".into())
}

/// When one process of a cluster goes, every thread of every other process's dataflow
/// panics on purpose (timely's cascade): that is one warning each, not a backtrace each.
/// Any other panic is reported as usual.
fn quiet_cascades() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = text(info.payload());
            let cascade = [
                "timely communication error",
                "MergeQueue poisoned",
                "thread panic",
                RESTART,
            ]
            .iter()
            .any(|m| message.contains(m));
            if cascade {
                let thread = std::thread::current();
                tracing::warn!(
                    thread = thread.name().unwrap_or("?"),
                    "cluster dataflow: {message}"
                );
            } else {
                report(info);
            }
        }));
    });
}
