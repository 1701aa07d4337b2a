//! Creates each worker's Parquet sink, after finishing what the last run left half done.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use weir_core::feed::{PARTITIONS, partitions_of};
use weir_core::{HealthBoard, Sink, SinkError, SinkFactory};

use super::config::ParquetConfig;
use super::file::io;
use super::sink::ParquetSink;
use super::state::EndpointState;
use crate::commit::{CommitStore, Committed};

/// The sink kind, as rules files name it and the commit store keys it.
pub const KIND: &str = "parquet";

/// Archive counters, shared by all workers' sinks.
#[derive(Debug, Default)]
pub struct ArchiveMetrics {
    /// Rows in committed (visible) files.
    pub rows_committed: AtomicU64,
    pub files_committed: AtomicU64,
    /// Deliveries skipped because an earlier run had already committed them.
    pub rows_skipped_replay: AtomicU64,
    /// Rows in committed files, per endpoint (updated once per commit, so a lock is fine).
    pub rows_by_endpoint: Mutex<BTreeMap<String, u64>>,
}

/// What a run did at start-up to leave the archive consistent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveRecovery {
    /// Committed files whose rename the last run did not get to.
    pub completed_renames: usize,
    /// Temporary files no commit names: written after the last commit, now deleted.
    pub removed_temporaries: usize,
}

pub struct ParquetSinkFactory {
    config: Arc<ParquetConfig>,
    metrics: Arc<ArchiveMetrics>,
    health: Arc<HealthBoard>,
    store: Arc<CommitStore>,
    committed: Committed,
    recovery: ArchiveRecovery,
}

/// The renames a commit implies, as stored in its intent.
pub(super) fn encode_renames(renames: &[(PathBuf, PathBuf)]) -> Vec<u8> {
    serde_json::to_vec(renames).unwrap_or_default()
}

fn temporaries(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            temporaries(&p, out);
        } else if p.to_string_lossy().ends_with(".inprogress") {
            out.push(p);
        }
    }
}

impl ParquetSinkFactory {
    /// Finishes the renames the last run committed but did not complete, deletes every
    /// other temporary file (written after the last commit: the log still has its rows),
    /// and reads what is committed. `health` hears how each endpoint fares.
    pub fn new(
        config: ParquetConfig,
        store: Arc<CommitStore>,
        health: Arc<HealthBoard>,
    ) -> Result<Self, SinkError> {
        let store_err = |e: crate::commit::CommitError| {
            io(Path::new("commits"), std::io::Error::other(e.to_string()))
        };
        let mut recovery = ArchiveRecovery::default();
        let intents = store.intents(KIND).map_err(store_err)?;
        let mut done = Vec::new();
        for (seq, bytes) in intents {
            let renames: Vec<(PathBuf, PathBuf)> =
                serde_json::from_slice(&bytes).unwrap_or_default();
            for (tmp, dst) in renames {
                if tmp.exists() {
                    std::fs::rename(&tmp, &dst).map_err(|e| io(&dst, e))?;
                    if let Some(d) = dst.parent() {
                        crate::fsutil::sync_dir(d).map_err(|e| io(d, e))?;
                    }
                    recovery.completed_renames += 1;
                }
            }
            done.push(seq);
        }
        store.forget_intents(KIND, &done).map_err(store_err)?;
        let mut strays = Vec::new();
        temporaries(&config.root, &mut strays);
        for t in strays {
            std::fs::remove_file(&t).map_err(|e| io(&t, e))?;
            recovery.removed_temporaries += 1;
        }
        let committed = store.snapshot(KIND).map_err(store_err)?;
        Ok(ParquetSinkFactory {
            config: Arc::new(config),
            metrics: Arc::default(),
            health,
            store,
            committed,
            recovery,
        })
    }

    pub fn metrics(&self) -> Arc<ArchiveMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Counts into `metrics` (kept across restarts of a cluster's dataflow).
    pub fn with_metrics(mut self, metrics: Arc<ArchiveMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn recovery(&self) -> ArchiveRecovery {
        self.recovery
    }
}

impl SinkFactory for ParquetSinkFactory {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn recovered_floor(&self) -> u64 {
        self.committed.floor()
    }

    fn recovered_floor_of(&self, partitions: &[u16]) -> u64 {
        self.committed.floor_of(partitions)
    }

    fn open(&self, worker: usize, workers: usize) -> Result<Box<dyn Sink>, SinkError> {
        let partitions = partitions_of(worker, workers);
        let frontiers = self.committed.frontier.clone();
        let start = partitions
            .iter()
            .map(|p| frontiers[usize::from(*p)])
            .min()
            .unwrap_or(0);
        let endpoints: HashMap<String, EndpointState> = self
            .committed
            .endpoints
            .keys()
            .map(|name| {
                let committed = (0..PARTITIONS)
                    .map(|p| self.committed.committed(name, p))
                    .collect();
                (name.clone(), EndpointState::new(committed, &partitions))
            })
            .collect();
        self.health.frontier(worker, start);
        Ok(Box::new(ParquetSink {
            config: Arc::clone(&self.config),
            metrics: Arc::clone(&self.metrics),
            health: Arc::clone(&self.health),
            store: Arc::clone(&self.store),
            worker,
            workers,
            durable_floor: partitions
                .iter()
                .map(|p| {
                    endpoints
                        .values()
                        .map(|s| s.committed[usize::from(*p)])
                        .chain([frontiers[usize::from(*p)]])
                        .min()
                        .unwrap_or(0)
                })
                .min()
                .unwrap_or(0),
            partitions,
            frontiers,
            frontier: start,
            watermark: start,
            recorded: start,
            last_record: Instant::now(),
            written: false,
            record_failing: false,
            endpoints,
            seq: 0,
            renames: Vec::new(),
            done_intents: Vec::new(),
        }))
    }
}
