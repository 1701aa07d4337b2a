//! The per-worker Parquet sink: open files per endpoint and hour, and exactly-once commits.
//!
//! An endpoint's files are committed together, at an offset `hi` once every delivery
//! below `hi` (of this worker's partitions) is in them: when the oldest is `max_age` old,
//! when a delivery for a later hour arrives, when one grows past `max_rows`/`max_bytes`,
//! when the rules change its columns, and on close. A commit finishes the files under
//! temporary names, records the new offsets and the renames they imply in the commit store
//! (one transaction), then renames them to `part-w<W>of<N>-<lo>-<hi>.parquet` (see
//! `commit.rs`). After a restart, deliveries below an endpoint's committed offset for
//! their partition are skipped: nothing is archived twice, whatever the worker count was.
//!
//! Any error while writing or committing an endpoint fails that endpoint alone: its open
//! files are dropped, its commit point stays where its data is durable, and its deliveries
//! are dropped (they stay in the ingest log, which keeps everything above the lowest
//! commit point). After a backoff it asks the engine to replay what it missed, and goes
//! live again once the replay has caught up (see `state.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use weir_core::feed::{device_hash, partition_of};
use weir_core::recovery::{Candidate, first_request, retain_uncommitted};
use weir_core::time::{hour_floor, now_ms};
use weir_core::{Delivery, EndpointSpec, HealthBoard, ReplayRequest, Sink, SinkError};

use super::config::ParquetConfig;
use super::factory::ArchiveMetrics;
use super::file::OpenFile;
use super::path::partition_dir;
use super::state::EndpointState;
use crate::commit::CommitStore;

/// One worker's Parquet files.
pub struct ParquetSink {
    pub(super) config: Arc<ParquetConfig>,
    pub(super) metrics: Arc<ArchiveMetrics>,
    pub(super) health: Arc<HealthBoard>,
    pub(super) store: Arc<CommitStore>,
    pub(super) worker: usize,
    pub(super) workers: usize,
    /// The virtual partitions this worker owns.
    pub(super) partitions: Vec<u16>,
    /// Per partition (indexed by partition): the frontier as last recorded, which
    /// endpoints without their own entry have committed up to.
    pub(super) frontiers: Vec<u64>,
    /// Every delivery below this offset has been received.
    pub(super) frontier: u64,
    /// Every delivery below this offset has been received, counting those seen beyond the
    /// frontier: where a replay for a failed endpoint must reach before it goes live.
    pub(super) watermark: u64,
    /// The frontier in the last commit record written.
    pub(super) recorded: u64,
    /// The lowest committed offset as of the last record: what the log may let go below.
    pub(super) durable_floor: u64,
    pub(super) last_record: Instant,
    /// A delivery arrived since the last record: a record now may carry new commit points,
    /// not only a frontier the cluster's clock moved.
    pub(super) written: bool,
    /// The last attempt to write the commit record failed (logged once until it works).
    pub(super) record_failing: bool,
    pub(super) endpoints: HashMap<String, EndpointState>,
    pub(super) seq: u64,
    /// Committed files not yet renamed, or whose directory could not be synced after the
    /// rename, with the intent that records them: the store keeps the intent until both
    /// are done, so a restart finishes them instead of deleting them as strays.
    pub(super) renames: Vec<(u64, Vec<(PathBuf, PathBuf)>)>,
    /// Intents whose renames are done, cleared with the next record.
    pub(super) done_intents: Vec<u64>,
}

/// How often a sink that has been sent deliveries rewrites its commit record, so the log
/// can be trimmed.
pub(super) const RECORD_EVERY: Duration = Duration::from_secs(1);
/// How often a sink sent nothing rewrites it: in a cluster the frontier moves with the
/// clock while nothing arrives, and a record (two syncs) every second for that alone was
/// most of an idle process's disk writes.
pub(super) const IDLE_RECORD_EVERY: Duration = Duration::from_secs(5);

impl ParquetSink {
    fn open_file(&mut self, endpoint: &EndpointSpec, hour: i64) -> Result<OpenFile, SinkError> {
        let options = endpoint
            .kind
            .parquet()
            .ok_or_else(|| SinkError::Unsupported(endpoint.name.to_string()))?;
        let template = options.path.as_deref().unwrap_or(&self.config.default_path);
        let dir = self
            .config
            .root
            .join(&*endpoint.name)
            .join(partition_dir(template, hour));
        self.seq += 1;
        let name = format!(
            ".part-w{}-{}-{:06}.parquet.inprogress",
            self.worker,
            now_ms(),
            self.seq
        );
        OpenFile::create(&self.config, endpoint, dir, name)
    }

    /// A state for an endpoint this run has not seen: it has committed up to the frontier.
    pub(super) fn new_endpoint(&self) -> EndpointState {
        EndpointState::new(self.frontiers.clone(), &self.partitions)
    }

    /// Writes one delivery into `name`'s files, committing first when the delivery shows
    /// that everything before it is written (a later hour, changed columns) and after when
    /// a file is full.
    fn accept(
        &mut self,
        name: &str,
        endpoint: &Arc<EndpointSpec>,
        d: Delivery,
    ) -> Result<(), SinkError> {
        let offset = d.event.offset;
        let hour = hour_floor(d.event.enqueued_ms);
        let Some(state) = self.endpoints.get_mut(name) else {
            return Ok(());
        };
        if offset < state.committed_max {
            let p = partition_of(device_hash(d.event.device_id.as_str()));
            if offset < state.committed[usize::from(p)] {
                self.metrics
                    .rows_skipped_replay
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        // Deliveries arrive in offset order, so everything below `offset` is written: a
        // change of columns or a later hour can commit right here.
        let columns_changed = state
            .spec
            .as_ref()
            .is_some_and(|s| !Arc::ptr_eq(s, endpoint) && **s != **endpoint);
        let later_hour = state.files.keys().next_back().is_some_and(|h| *h < hour);
        if columns_changed || later_hour {
            self.commit_endpoint(name, offset)?;
        }
        let needs_file = self
            .endpoints
            .get(name)
            .is_some_and(|s| !s.files.contains_key(&hour));
        let opened = if needs_file {
            Some(self.open_file(endpoint, hour)?)
        } else {
            None
        };
        let (batch_rows, max_rows, max_bytes) = (
            self.config.batch_rows,
            self.config.max_rows,
            self.config.max_bytes,
        );
        let Some(state) = self.endpoints.get_mut(name) else {
            return Ok(());
        };
        state.spec = Some(Arc::clone(endpoint));
        if let Some(f) = opened {
            state.files.insert(hour, f);
            state.opened.get_or_insert_with(Instant::now);
        }
        let Some(f) = state.files.get_mut(&hour) else {
            return Ok(());
        };
        f.pending.push(d);
        f.rows += 1;
        state.rows += 1;
        state.last_offset = Some(offset);
        if f.pending.len() >= batch_rows {
            f.flush(endpoint)?;
            if f.rows >= max_rows || f.size() >= max_bytes {
                self.commit_endpoint(name, offset + 1)?;
            }
        }
        Ok(())
    }
}

impl Sink for ParquetSink {
    fn write(
        &mut self,
        endpoint: &Arc<EndpointSpec>,
        batch: Vec<Delivery>,
    ) -> Result<(), SinkError> {
        // Whatever happens to this batch, it has arrived: a replay must reach past it.
        if let Some(max) = batch.iter().map(|d| d.event.offset).max() {
            self.watermark = self.watermark.max(max + 1);
            self.written = true;
        }
        let name = endpoint.name.to_string();
        if !self.endpoints.contains_key(&name) {
            let fresh = self.new_endpoint();
            self.endpoints.insert(name.clone(), fresh);
        }
        if let Some(s) = self.endpoints.get_mut(&name)
            && s.dead_letter != endpoint.dead_letter
        {
            s.dead_letter.clone_from(&endpoint.dead_letter);
        }
        if !self
            .endpoints
            .get(&name)
            .is_some_and(EndpointState::is_live)
        {
            return Ok(());
        }
        for d in batch {
            if let Err(e) = self.accept(&name, endpoint, d) {
                return Err(self.fail(&name, e));
            }
        }
        Ok(())
    }

    fn advance(&mut self, frontier: u64) -> Result<(), SinkError> {
        self.frontier = self.frontier.max(frontier);
        self.watermark = self.watermark.max(self.frontier);
        let committed = self.commit_due(false);
        let every = if self.written {
            RECORD_EVERY
        } else {
            IDLE_RECORD_EVERY
        };
        if self.recorded < self.frontier && self.last_record.elapsed() >= every {
            self.write_record(Vec::new())?;
            self.finish_renames();
        }
        committed
    }

    fn close(&mut self, end: u64) -> Result<(), SinkError> {
        self.frontier = self.frontier.max(end);
        let committed = self.commit_due(true);
        self.write_record(Vec::new())?;
        self.finish_renames();
        if !self.done_intents.is_empty() {
            self.write_record(Vec::new())?;
        }
        committed
    }

    fn retry_now(&mut self) {
        self.endpoints
            .values_mut()
            .for_each(|s| s.recovery.retry_now());
    }

    fn floor(&self) -> u64 {
        self.durable_floor
    }

    fn replay_request(&mut self) -> Option<ReplayRequest> {
        let candidates = self.endpoints.iter_mut().map(|(name, s)| Candidate {
            name,
            recovery: &mut s.recovery,
            committed_min: s.committed_min,
            policy: s.dead_letter.as_ref(),
        });
        let (request, changed) = first_request(candidates, self.watermark);
        changed.iter().for_each(|n| self.publish(n));
        request
    }

    fn uncommitted(&self, endpoint: &str, batch: &mut Vec<Delivery>) {
        if let Some(s) = self.endpoints.get(endpoint) {
            retain_uncommitted(batch, &s.committed);
        }
    }

    fn dead_lettered(&mut self, endpoint: &str, count: u64, through: u64) -> Result<(), SinkError> {
        let parts = self.partitions.clone();
        let Some(s) = self.endpoints.get_mut(endpoint) else {
            return Ok(());
        };
        let moved = through > s.committed_min;
        s.raise(&parts, |_| through);
        s.recovery.dead_lettered(count, moved);
        if moved {
            // The letters are durable in the log: record the new commit point now, so a
            // restart does not hand them on again.
            self.write_record(Vec::new())?;
        }
        self.publish(endpoint);
        Ok(())
    }

    fn replay(
        &mut self,
        endpoint: &str,
        spec: Option<&Arc<EndpointSpec>>,
        batch: Vec<Delivery>,
        through: u64,
    ) -> Result<(), SinkError> {
        if self
            .endpoints
            .get(endpoint)
            .and_then(|s| s.recovery.replayed_to())
            .is_none_or(|r| through < r)
        {
            return Ok(());
        }
        if let Some(spec) = spec {
            for d in batch {
                if let Err(e) = self.accept(endpoint, spec, d) {
                    return Err(self.fail(endpoint, e));
                }
            }
        }
        let watermark = self.watermark;
        if let Some(s) = self.endpoints.get_mut(endpoint)
            && s.recovery.replayed(through, watermark)
        {
            self.publish(endpoint);
        }
        Ok(())
    }
}
