//! The per-worker Parquet sink: open files per endpoint and hour, and exactly-once commits.
//!
//! An endpoint's files are committed together, at an offset `hi` once every delivery
//! below `hi` (of this worker's partition) is in them: when the oldest is `max_age` old,
//! when a delivery for a later hour arrives, when one grows past `max_rows`/`max_bytes`,
//! when the rules change its columns, and on close. A commit finishes the files under
//! temporary names, records them in the worker's commit record, then renames them to
//! `part-w<worker>-<lo>-<hi>.parquet` (see `crate::commit`). After a restart, deliveries
//! below an endpoint's committed offset are skipped: nothing is archived twice.
//!
//! Any error while writing or committing an endpoint fails that endpoint alone: its open
//! files are dropped, its commit point stays where its data is durable, and its deliveries
//! are dropped (they stay in the ingest log, which keeps everything above the lowest
//! commit point). After a backoff it asks the engine to replay what it missed, and goes
//! live again once the replay has caught up (see `state.rs`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_core::time::{hour_floor, now_ms};
use weir_core::{
    Delivery, EndpointKind, EndpointSpec, EndpointState as Health, HealthBoard, ReplayRequest,
    Sink, SinkError, SinkFactory,
};

use super::config::ParquetConfig;
use super::file::{OpenFile, io};
use super::path::partition_dir;
use super::state::{EndpointState, Phase, backoff};
use crate::commit::{CommitStore, Recovery, WorkerCommit};
use crate::fsutil;

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

/// The lowest committed offset per worker, reported to whoever deletes log segments.
struct Floors {
    per_worker: Mutex<Vec<u64>>,
    report: Box<dyn Fn(u64) + Send + Sync>,
}

impl Floors {
    fn set(&self, worker: usize, floor: u64) {
        let Ok(mut v) = self.per_worker.lock() else {
            return;
        };
        if worker >= v.len() {
            v.resize(worker + 1, 0);
        }
        v[worker] = floor;
        if let Some(min) = v.iter().copied().min() {
            (self.report)(min);
        }
    }
}

pub struct ParquetSinkFactory {
    config: Arc<ParquetConfig>,
    metrics: Arc<ArchiveMetrics>,
    health: Arc<HealthBoard>,
    commits: Arc<CommitStore>,
    recovery: Arc<Recovery>,
    floors: Arc<Floors>,
}

impl ParquetSinkFactory {
    /// `recovery` is what the commit store found; `on_floor` learns the offset below which
    /// every worker has committed every endpoint; `health` hears how each endpoint fares.
    pub fn new(
        config: ParquetConfig,
        commits: CommitStore,
        recovery: Recovery,
        health: Arc<HealthBoard>,
        on_floor: impl Fn(u64) + Send + Sync + 'static,
    ) -> Self {
        ParquetSinkFactory {
            config: Arc::new(config),
            metrics: Arc::default(),
            health,
            commits: Arc::new(commits),
            recovery: Arc::new(recovery),
            floors: Arc::new(Floors {
                per_worker: Mutex::new(Vec::new()),
                report: Box::new(on_floor),
            }),
        }
    }

    pub fn metrics(&self) -> Arc<ArchiveMetrics> {
        Arc::clone(&self.metrics)
    }
}

impl SinkFactory for ParquetSinkFactory {
    fn open(&self, worker: usize, workers: usize) -> Result<Box<dyn Sink>, SinkError> {
        let previous = (self.recovery.workers == workers)
            .then(|| self.recovery.worker(worker).cloned())
            .flatten();
        let (frontier, known) = match &previous {
            Some(c) => (c.frontier, c.endpoints.clone()),
            None => (0, BTreeMap::new()),
        };
        if let Ok(mut v) = self.floors.per_worker.lock()
            && v.len() < workers
        {
            v.resize(workers, 0);
        }
        self.health.frontier(worker, frontier);
        Ok(Box::new(ParquetSink {
            config: Arc::clone(&self.config),
            metrics: Arc::clone(&self.metrics),
            health: Arc::clone(&self.health),
            commits: Arc::clone(&self.commits),
            floors: Arc::clone(&self.floors),
            worker,
            workers,
            frontier,
            watermark: frontier,
            recorded: frontier,
            last_record: Instant::now(),
            record_failing: false,
            endpoints: known
                .into_iter()
                .map(|(name, committed)| (name, EndpointState::new(committed)))
                .collect(),
            seq: 0,
            renames: Vec::new(),
        }))
    }
}

/// One worker's Parquet files.
pub struct ParquetSink {
    config: Arc<ParquetConfig>,
    metrics: Arc<ArchiveMetrics>,
    health: Arc<HealthBoard>,
    commits: Arc<CommitStore>,
    floors: Arc<Floors>,
    worker: usize,
    workers: usize,
    /// Every delivery below this offset has been received.
    frontier: u64,
    /// Every delivery below this offset has been received, counting those seen beyond the
    /// frontier: where a replay for a failed endpoint must reach before it goes live.
    watermark: u64,
    /// The frontier in the last commit record written.
    recorded: u64,
    last_record: Instant,
    /// The last attempt to write the commit record failed (logged once until it works).
    record_failing: bool,
    endpoints: HashMap<String, EndpointState>,
    seq: u64,
    /// Committed files not yet renamed, or whose directory could not be synced after the
    /// rename: every record lists them until both are done, so a restart finishes them
    /// instead of deleting them as strays.
    renames: Vec<(PathBuf, PathBuf)>,
}

/// How often an idle sink rewrites its commit record so the log can be trimmed.
const RECORD_EVERY: Duration = Duration::from_secs(1);

impl ParquetSink {
    fn open_file(&mut self, endpoint: &EndpointSpec, hour: i64) -> Result<OpenFile, SinkError> {
        let EndpointKind::Parquet { path } = &endpoint.kind;
        let template = path.as_deref().unwrap_or(&self.config.default_path);
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
        if offset < state.committed {
            self.metrics
                .rows_skipped_replay
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
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

    /// Commits `name`'s open files: every delivery to it below `hi` is in them.
    fn commit_endpoint(&mut self, name: &str, hi: u64) -> Result<(), SinkError> {
        let Some(state) = self.endpoints.get_mut(name) else {
            return Ok(());
        };
        if state.files.is_empty() {
            state.committed = state.committed.max(hi);
            return Ok(());
        }
        let lo = state.committed;
        let Some(spec) = state.spec.clone() else {
            return Ok(());
        };
        let files = std::mem::take(&mut state.files);
        let rows = std::mem::take(&mut state.rows);
        state.opened = None;
        let mut renames = Vec::new();
        let mut failure = None;
        for (_, f) in files {
            let tmp = f.tmp.clone();
            match failure {
                None => match f.finish(&spec, self.worker, lo, hi) {
                    Ok(pair) => renames.push(pair),
                    Err(e) => {
                        remove_quietly(&tmp);
                        failure = Some(e);
                    }
                },
                Some(_) => remove_quietly(&tmp),
            }
        }
        if let Some(e) = failure {
            renames.iter().for_each(|(tmp, _)| remove_quietly(tmp));
            return Err(e);
        }
        if let Some(s) = self.endpoints.get_mut(name) {
            s.committed = hi;
        }
        if let Err(e) = self.write_record(renames.clone()) {
            if let Some(s) = self.endpoints.get_mut(name) {
                s.committed = lo;
            }
            renames.iter().for_each(|(tmp, _)| remove_quietly(tmp));
            return Err(e);
        }
        // The record is the commit point: from here the files are part of the archive
        // even if renaming them has to wait for a later record or the next start.
        self.renames.extend(renames.iter().cloned());
        self.finish_renames();
        if let Some(s) = self.endpoints.get_mut(name)
            && let Phase::Resuming { proven, .. } = &mut s.phase
        {
            *proven = true;
        }
        self.metrics
            .rows_committed
            .fetch_add(rows as u64, Ordering::Relaxed);
        self.metrics
            .files_committed
            .fetch_add(renames.len() as u64, Ordering::Relaxed);
        if let Ok(mut by) = self.metrics.rows_by_endpoint.lock() {
            *by.entry(name.to_string()).or_default() += rows as u64;
        }
        self.publish(name);
        tracing::debug!(
            endpoint = name,
            lo,
            hi,
            rows,
            files = renames.len(),
            "committed parquet files"
        );
        Ok(())
    }

    /// Renames committed files and syncs their directories; what fails stays listed in
    /// every commit record and is tried again after the next one.
    fn finish_renames(&mut self) {
        let mut left = Vec::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (tmp, done) in std::mem::take(&mut self.renames) {
            if tmp.exists()
                && let Err(e) = std::fs::rename(&tmp, &done)
            {
                tracing::warn!(error = %e, file = %done.display(), "renaming a committed file failed; retried after the next commit and at start-up");
                left.push((tmp, done));
                continue;
            }
            if let Some(d) = done.parent()
                && !dirs.iter().any(|x| x == d)
            {
                dirs.push(d.to_path_buf());
            }
            left.push((tmp, done));
        }
        let unsynced: Vec<PathBuf> = dirs
            .into_iter()
            .filter(|d| match fsutil::sync_dir(d) {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(error = %e, dir = %d.display(), "syncing a directory after renames failed; retried after the next commit");
                    true
                }
            })
            .collect();
        left.retain(|(tmp, done)| {
            tmp.exists()
                || done
                    .parent()
                    .is_some_and(|d| unsynced.iter().any(|u| u == d))
        });
        self.renames = left;
    }

    /// Marks `name` failed at its last commit: drops its open files and, until its retry,
    /// its deliveries. Returns the error for the caller to pass on.
    fn fail(&mut self, name: &str, e: SinkError) -> SinkError {
        let Some(s) = self.endpoints.get_mut(name) else {
            return e;
        };
        for f in std::mem::take(&mut s.files).into_values() {
            remove_quietly(&f.tmp);
        }
        s.rows = 0;
        s.opened = None;
        s.last_offset = None;
        let attempts = s.attempts() + 1;
        let wait = backoff(attempts);
        s.phase = Phase::Failed {
            attempts,
            retry_at: Instant::now() + wait,
        };
        s.failures += 1;
        s.last_error = Some((e.to_string(), now_ms()));
        tracing::debug!(endpoint = name, worker = self.worker, attempts, error = %e, retry_in = ?wait, "endpoint write failed");
        self.publish(name);
        e
    }

    /// Tells the health board about `name`; logs when that changes the endpoint's state.
    fn publish(&self, name: &str) {
        let Some(s) = self.endpoints.get(name) else {
            return;
        };
        let health = s.health(self.recorded);
        let error = health.last_error.clone().unwrap_or_default();
        let Some((before, after)) = self.health.report(self.worker, name, health) else {
            return;
        };
        match after {
            Health::Unhealthy => tracing::error!(
                endpoint = name,
                error = %error,
                "endpoint is unhealthy: its messages stay in the ingest log and it is retried with backoff (at most every 30 s)"
            ),
            Health::Degraded => tracing::warn!(
                endpoint = name,
                "endpoint is writing again and catching up on what it missed"
            ),
            Health::Healthy => tracing::info!(
                endpoint = name,
                was = before.as_str(),
                "endpoint is healthy again"
            ),
        }
    }

    /// Writes the worker's commit record: the frontier, and every endpoint whose committed
    /// offset differs from it.
    fn write_record(&mut self, mut pending: Vec<(PathBuf, PathBuf)>) -> Result<(), SinkError> {
        pending.extend(self.renames.iter().cloned());
        let f = self.frontier;
        let endpoints: BTreeMap<String, u64> = self
            .endpoints
            .iter()
            .filter(|(_, s)| !s.files.is_empty() || !s.is_live() || s.committed > f)
            .map(|(n, s)| (n.clone(), s.committed))
            .collect();
        let record = WorkerCommit {
            workers: self.workers,
            worker: self.worker,
            frontier: f,
            endpoints,
            pending,
        };
        if let Err(e) = self.commits.write(&record) {
            if !self.record_failing {
                self.record_failing = true;
                tracing::error!(worker = self.worker, error = %e, "cannot write the archive's commit record; nothing is committed (the ingest log keeps the data) until it can be");
            }
            return Err(io(
                std::path::Path::new("commits"),
                std::io::Error::other(e.to_string()),
            ));
        }
        if self.record_failing {
            self.record_failing = false;
            tracing::info!(
                worker = self.worker,
                "the archive's commit record is written again"
            );
        }
        self.recorded = f;
        self.last_record = Instant::now();
        // Endpoints that caught up with the frontier no longer need their own entry.
        self.floors.set(self.worker, record.floor());
        self.health.frontier(self.worker, f);
        let names: Vec<String> = self.endpoints.keys().cloned().collect();
        names.iter().for_each(|n| self.publish(n));
        Ok(())
    }

    /// Commits endpoints whose files are due: each up to what it has completely written.
    fn commit_due(&mut self, all: bool) -> Result<(), SinkError> {
        let max_age = self.config.max_age;
        let frontier = self.frontier;
        let due: Vec<(String, u64)> = self
            .endpoints
            .iter()
            .filter(|(_, s)| !s.files.is_empty())
            .filter(|(_, s)| all || s.opened.is_some_and(|t| t.elapsed() >= max_age))
            .filter_map(|(n, s)| {
                let hi = s.complete_below(frontier)?;
                s.last_offset
                    .is_none_or(|o| o < hi)
                    .then(|| (n.clone(), hi))
            })
            .collect();
        let mut first_err = None;
        for (name, hi) in due {
            if let Err(e) = self.commit_endpoint(&name, hi) {
                first_err.get_or_insert(self.fail(&name, e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn remove_quietly(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::debug!(error = %e, file = %path.display(), "cannot remove an uncommitted file; it is removed at the next start");
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
        }
        let name = endpoint.name.to_string();
        let recorded = self.recorded;
        let live = self
            .endpoints
            .entry(name.clone())
            .or_insert_with(|| EndpointState::new(recorded))
            .is_live();
        if !live {
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
        if self.recorded < self.frontier && self.last_record.elapsed() >= RECORD_EVERY {
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
        committed
    }

    fn retry_now(&mut self) {
        let now = Instant::now();
        for s in self.endpoints.values_mut() {
            if let Phase::Failed { retry_at, .. } = &mut s.phase {
                *retry_at = now;
            }
        }
    }

    fn replay_request(&mut self) -> Option<ReplayRequest> {
        let now = Instant::now();
        let watermark = self.watermark;
        let mut caught_up = Vec::new();
        let mut request = None;
        let mut retrying = None;
        for (name, s) in self.endpoints.iter_mut() {
            match s.phase {
                Phase::Resuming { replayed, .. } if replayed >= watermark => {
                    s.phase = Phase::Live;
                    caught_up.push(name.clone());
                }
                Phase::Resuming { replayed, .. } => {
                    request = Some((name.clone(), replayed));
                    break;
                }
                Phase::Failed { attempts, retry_at } if retry_at <= now => {
                    s.phase = Phase::Resuming {
                        attempts,
                        replayed: s.committed,
                        proven: false,
                    };
                    tracing::debug!(endpoint = %name, worker = self.worker, attempts, from = s.committed, "retrying a failed endpoint");
                    retrying = Some(name.clone());
                    request = Some((name.clone(), s.committed));
                    break;
                }
                _ => {}
            }
        }
        caught_up
            .iter()
            .chain(&retrying)
            .for_each(|n| self.publish(n));
        let (name, from) = request?;
        Some(ReplayRequest {
            endpoint: Arc::from(name),
            from,
            to: watermark.max(from),
        })
    }

    fn replay(
        &mut self,
        endpoint: &str,
        spec: Option<&Arc<EndpointSpec>>,
        batch: Vec<Delivery>,
        through: u64,
    ) -> Result<(), SinkError> {
        let Some(Phase::Resuming { replayed, .. }) = self.endpoints.get(endpoint).map(|s| s.phase)
        else {
            return Ok(());
        };
        if through < replayed {
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
            && let Phase::Resuming { replayed, .. } = &mut s.phase
        {
            *replayed = through;
            // Nothing can arrive between this chunk and here: if it reached everything
            // seen, the endpoint is live for what comes next. (Checking only before the
            // next chunk would never succeed under steady load.)
            if through >= watermark {
                s.phase = Phase::Live;
                self.publish(endpoint);
            }
        }
        Ok(())
    }
}
