//! The per-worker Parquet sink: open files per endpoint and hour, and exactly-once commits.
//!
//! An endpoint's files are committed together, at an offset `hi` once every delivery
//! below `hi` (of this worker's partition) is in them: when the oldest is `max_age` old,
//! when a delivery for a later hour arrives, when one grows past `max_rows`/`max_bytes`,
//! when the rules change its columns, and on close. A commit finishes the files under
//! temporary names, records them in the worker's commit record, then renames them to
//! `part-w<worker>-<lo>-<hi>.parquet` (see `crate::commit`). After a restart, deliveries
//! below an endpoint's committed offset are skipped: nothing is archived twice.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use weir_core::time::hour_floor;
use weir_core::{Delivery, EndpointKind, EndpointSpec, Sink, SinkError, SinkFactory};

use super::batch::{schema, to_batch};
use super::config::ParquetConfig;
use super::path::partition_dir;
use crate::commit::{CommitStore, Recovery, WorkerCommit};

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
    commits: Arc<CommitStore>,
    recovery: Arc<Recovery>,
    floors: Arc<Floors>,
}

impl ParquetSinkFactory {
    /// `recovery` is what the commit store found; `on_floor` learns the offset below which
    /// every worker has committed every endpoint.
    pub fn new(
        config: ParquetConfig,
        commits: CommitStore,
        recovery: Recovery,
        on_floor: impl Fn(u64) + Send + Sync + 'static,
    ) -> Self {
        ParquetSinkFactory {
            config: Arc::new(config),
            metrics: Arc::default(),
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
        std::fs::create_dir_all(&self.config.root).map_err(|e| io(&self.config.root, e))?;
        let previous = (self.recovery.workers == workers)
            .then(|| self.recovery.worker(worker).cloned())
            .flatten();
        let (frontier, known) = match &previous {
            Some(c) => (c.frontier, c.endpoints.clone()),
            None => (0, BTreeMap::new()),
        };
        {
            let Ok(mut v) = self.floors.per_worker.lock() else {
                return Err(io(
                    &self.config.root,
                    std::io::Error::other("floors poisoned"),
                ));
            };
            if v.len() < workers {
                v.resize(workers, 0);
            }
        }
        Ok(Box::new(ParquetSink {
            config: Arc::clone(&self.config),
            metrics: Arc::clone(&self.metrics),
            commits: Arc::clone(&self.commits),
            floors: Arc::clone(&self.floors),
            worker,
            workers,
            frontier,
            recorded: frontier,
            last_record: Instant::now(),
            endpoints: known
                .into_iter()
                .map(|(name, committed)| (name, EndpointState::new(committed)))
                .collect(),
            seq: 0,
            unrenamed: Vec::new(),
        }))
    }
}

fn io(path: &Path, source: std::io::Error) -> SinkError {
    SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn encode(endpoint: &EndpointSpec, e: impl std::fmt::Display) -> SinkError {
    SinkError::Encode {
        endpoint: endpoint.name.to_string(),
        message: e.to_string(),
    }
}

struct OpenFile {
    schema: SchemaRef,
    dir: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<File>,
    pending: Vec<Delivery>,
    rows: usize,
}

struct EndpointState {
    spec: Option<Arc<EndpointSpec>>,
    /// Deliveries below this offset are in committed files (possibly of an earlier run).
    committed: u64,
    /// Open files by partition hour.
    files: BTreeMap<i64, OpenFile>,
    rows: usize,
    opened: Option<Instant>,
    last_offset: Option<u64>,
    /// A write or commit failed: its data stays in the log until a restart.
    failed: bool,
}

impl EndpointState {
    fn new(committed: u64) -> EndpointState {
        EndpointState {
            spec: None,
            committed,
            files: BTreeMap::new(),
            rows: 0,
            opened: None,
            last_offset: None,
            failed: false,
        }
    }
}

/// One worker's Parquet files.
pub struct ParquetSink {
    config: Arc<ParquetConfig>,
    metrics: Arc<ArchiveMetrics>,
    commits: Arc<CommitStore>,
    floors: Arc<Floors>,
    worker: usize,
    workers: usize,
    /// Every delivery below this offset has been received.
    frontier: u64,
    /// The frontier in the last commit record written.
    recorded: u64,
    last_record: Instant,
    endpoints: HashMap<String, EndpointState>,
    seq: u64,
    /// Committed files whose rename failed; every later record lists them again, so the
    /// next start completes them instead of deleting them as strays.
    unrenamed: Vec<(PathBuf, PathBuf)>,
}

/// How often an idle sink rewrites its commit record so the log can be trimmed.
const RECORD_EVERY: Duration = Duration::from_secs(1);

impl ParquetSink {
    fn open_file(
        &mut self,
        endpoint: &Arc<EndpointSpec>,
        hour: i64,
    ) -> Result<OpenFile, SinkError> {
        let EndpointKind::Parquet { path } = &endpoint.kind;
        let template = path.as_deref().unwrap_or(&self.config.default_path);
        let dir = self
            .config
            .root
            .join(&*endpoint.name)
            .join(partition_dir(template, hour));
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        self.seq += 1;
        let tmp = dir.join(format!(
            ".part-w{}-{}-{:06}.parquet.inprogress",
            self.worker,
            weir_core::time::now_ms(),
            self.seq
        ));
        let file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let level = ZstdLevel::try_new(self.config.zstd_level).map_err(|e| encode(endpoint, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(128 * 1024))
            .set_max_row_group_bytes(Some(self.config.row_group_bytes))
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
            .build();
        let schema = schema(endpoint);
        let writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props))
            .map_err(|e| encode(endpoint, e))?;
        Ok(OpenFile {
            schema,
            dir,
            tmp,
            writer,
            pending: Vec::new(),
            rows: 0,
        })
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
            match finish(f, &spec, self.worker, lo, hi) {
                Ok(pair) => renames.push(pair),
                Err((e, tmp)) => {
                    let _ = std::fs::remove_file(tmp);
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(self.fail(name, e, &renames));
        }
        let Some(state) = self.endpoints.get_mut(name) else {
            return Ok(());
        };
        state.committed = hi;
        if let Err(e) = self.write_record(renames.clone()) {
            if let Some(s) = self.endpoints.get_mut(name) {
                s.committed = lo;
            }
            return Err(self.fail(name, e, &renames));
        }
        let mut dirs: Vec<&Path> = Vec::new();
        for (tmp, done) in &renames {
            if let Err(e) = std::fs::rename(tmp, done) {
                tracing::error!(error = %e, file = %done.display(), "renaming a committed file failed; it is retried at the next start");
                self.unrenamed.push((tmp.clone(), done.clone()));
            }
            if let Some(d) = done.parent()
                && !dirs.contains(&d)
            {
                dirs.push(d);
            }
        }
        for d in dirs {
            let _ = File::open(d).and_then(|f| f.sync_all());
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

    fn fail(&mut self, name: &str, e: SinkError, renames: &[(PathBuf, PathBuf)]) -> SinkError {
        for (tmp, _) in renames {
            let _ = std::fs::remove_file(tmp);
        }
        if let Some(s) = self.endpoints.get_mut(name) {
            s.failed = true;
            s.files.clear();
            s.rows = 0;
        }
        tracing::error!(
            endpoint = name,
            error = %e,
            "archiving to this endpoint stopped; its messages stay in the ingest log and are archived after a restart"
        );
        e
    }

    /// Writes the worker's commit record: the frontier, and every endpoint whose committed
    /// offset differs from it.
    fn write_record(&mut self, mut pending: Vec<(PathBuf, PathBuf)>) -> Result<(), SinkError> {
        self.unrenamed.retain(|(tmp, _)| tmp.exists());
        pending.extend(self.unrenamed.iter().cloned());
        let f = self.frontier;
        let endpoints: BTreeMap<String, u64> = self
            .endpoints
            .iter()
            .filter(|(_, s)| !s.files.is_empty() || s.failed || s.committed > f)
            .map(|(n, s)| (n.clone(), s.committed))
            .collect();
        let record = WorkerCommit {
            workers: self.workers,
            worker: self.worker,
            frontier: f,
            endpoints,
            pending,
        };
        self.commits
            .write(&record)
            .map_err(|e| io(Path::new("commits"), std::io::Error::other(e.to_string())))?;
        self.recorded = f;
        self.last_record = Instant::now();
        // Endpoints that caught up with the frontier no longer need their own entry.
        self.floors.set(self.worker, record.floor());
        Ok(())
    }

    /// Commits endpoints whose files are due; `hi` is what the frontier guarantees.
    fn commit_due(&mut self, hi: u64, all: bool) -> Result<(), SinkError> {
        let max_age = self.config.max_age;
        let due: Vec<String> = self
            .endpoints
            .iter()
            .filter(|(_, s)| !s.files.is_empty() && !s.failed)
            .filter(|(_, s)| all || s.opened.is_some_and(|t| t.elapsed() >= max_age))
            .filter(|(_, s)| s.last_offset.is_none_or(|o| o < hi))
            .map(|(n, _)| n.clone())
            .collect();
        let mut first_err = None;
        for name in &due {
            if let Err(e) = self.commit_endpoint(name, hi) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn flush_pending(f: &mut OpenFile, spec: &EndpointSpec) -> Result<(), SinkError> {
    if f.pending.is_empty() {
        return Ok(());
    }
    let batch = to_batch(&f.schema, spec, &f.pending).map_err(|e| encode(spec, e))?;
    f.writer.write(&batch).map_err(|e| encode(spec, e))?;
    f.pending.clear();
    Ok(())
}

/// Writes the footer and syncs; returns the temporary and final names.
fn finish(
    mut f: OpenFile,
    spec: &EndpointSpec,
    worker: usize,
    lo: u64,
    hi: u64,
) -> Result<(PathBuf, PathBuf), (SinkError, PathBuf)> {
    let tmp = f.tmp.clone();
    let run = |f: &mut OpenFile| -> Result<(), SinkError> {
        flush_pending(f, spec)?;
        for (k, v) in [
            ("weir.endpoint", spec.name.to_string()),
            ("weir.worker", worker.to_string()),
            ("weir.rows", f.rows.to_string()),
            ("weir.offset_lo", lo.to_string()),
            ("weir.offset_hi", hi.to_string()),
        ] {
            f.writer
                .append_key_value_metadata(KeyValue::new(k.into(), v));
        }
        f.writer.finish().map_err(|e| encode(spec, e))?;
        f.writer.inner().sync_all().map_err(|e| io(&f.tmp, e))
    };
    run(&mut f).map_err(|e| (e, tmp.clone()))?;
    let done = f
        .dir
        .join(format!("part-w{worker}-{lo:020}-{hi:020}.parquet"));
    Ok((tmp, done))
}

impl Sink for ParquetSink {
    fn write(
        &mut self,
        endpoint: &Arc<EndpointSpec>,
        batch: Vec<Delivery>,
    ) -> Result<(), SinkError> {
        let name = endpoint.name.to_string();
        let recorded = self.recorded;
        self.endpoints
            .entry(name.clone())
            .or_insert_with(|| EndpointState::new(recorded));
        let (batch_rows, max_rows, max_bytes) = (
            self.config.batch_rows,
            self.config.max_rows,
            self.config.max_bytes,
        );
        for d in batch {
            let offset = d.event.offset;
            let hour = hour_floor(d.event.enqueued_ms);
            let Some(state) = self.endpoints.get_mut(&name) else {
                continue;
            };
            if state.failed {
                continue;
            }
            if offset < state.committed {
                self.metrics
                    .rows_skipped_replay
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // Deliveries arrive in offset order, so everything below `offset` is written:
            // a change of columns or a later hour can commit right here.
            let columns_changed = state
                .spec
                .as_ref()
                .is_some_and(|s| !Arc::ptr_eq(s, endpoint) && **s != **endpoint);
            let later_hour = state.files.keys().next_back().is_some_and(|h| *h < hour);
            if columns_changed || later_hour {
                self.commit_endpoint(&name, offset)?;
            }
            let Some(state) = self.endpoints.get_mut(&name) else {
                continue;
            };
            state.spec = Some(Arc::clone(endpoint));
            if !state.files.contains_key(&hour) {
                let f = self.open_file(endpoint, hour)?;
                let Some(state) = self.endpoints.get_mut(&name) else {
                    continue;
                };
                state.files.insert(hour, f);
                state.opened.get_or_insert_with(Instant::now);
            }
            let Some(state) = self.endpoints.get_mut(&name) else {
                continue;
            };
            let Some(f) = state.files.get_mut(&hour) else {
                continue;
            };
            f.pending.push(d);
            f.rows += 1;
            state.rows += 1;
            state.last_offset = Some(offset);
            let mut full = false;
            if f.pending.len() >= batch_rows {
                flush_pending(f, endpoint)?;
                full = f.rows >= max_rows
                    || f.writer.bytes_written() + f.writer.in_progress_size() >= max_bytes;
            }
            if full {
                self.commit_endpoint(&name, offset + 1)?;
            }
        }
        Ok(())
    }

    fn advance(&mut self, frontier: u64) -> Result<(), SinkError> {
        self.frontier = self.frontier.max(frontier);
        let committed = self.commit_due(self.frontier, false);
        if self.recorded < self.frontier && self.last_record.elapsed() >= RECORD_EVERY {
            self.write_record(Vec::new())?;
        }
        committed
    }

    fn close(&mut self, end: u64) -> Result<(), SinkError> {
        self.frontier = self.frontier.max(end);
        let committed = self.commit_due(self.frontier, true);
        self.write_record(Vec::new())?;
        committed
    }
}
