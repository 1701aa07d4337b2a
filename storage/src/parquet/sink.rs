//! The per-worker Parquet sink: open files, rolling, atomic finalisation.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use weir_core::time::{hour_floor, now_ms};
use weir_core::{Delivery, EndpointKind, EndpointSpec, Sink, SinkError, SinkFactory};

use super::batch::{schema, to_batch};
use super::config::ParquetConfig;
use super::path::partition_dir;

/// Archive counters, shared by all workers' sinks.
#[derive(Debug, Default)]
pub struct ArchiveMetrics {
    /// Rows in finalised (visible) files.
    pub rows_committed: AtomicU64,
    pub files_committed: AtomicU64,
    /// Rows in finalised files, per endpoint (updated once per file, so a lock is fine).
    pub rows_by_endpoint: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

pub struct ParquetSinkFactory {
    config: Arc<ParquetConfig>,
    metrics: Arc<ArchiveMetrics>,
}

impl ParquetSinkFactory {
    pub fn new(config: ParquetConfig) -> Self {
        ParquetSinkFactory {
            config: Arc::new(config),
            metrics: Arc::default(),
        }
    }

    pub fn metrics(&self) -> Arc<ArchiveMetrics> {
        Arc::clone(&self.metrics)
    }
}

impl SinkFactory for ParquetSinkFactory {
    fn open(&self, worker: usize) -> Result<Box<dyn Sink>, SinkError> {
        std::fs::create_dir_all(&self.config.root).map_err(|e| io(&self.config.root, e))?;
        Ok(Box::new(ParquetSink {
            config: Arc::clone(&self.config),
            metrics: Arc::clone(&self.metrics),
            worker,
            files: HashMap::new(),
            seq: 0,
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
    endpoint: Arc<EndpointSpec>,
    schema: SchemaRef,
    hour: i64,
    dir: PathBuf,
    tmp: PathBuf,
    done: PathBuf,
    writer: ArrowWriter<File>,
    pending: Vec<Delivery>,
    rows: usize,
    min_ms: i64,
    max_ms: i64,
    opened: Instant,
}

/// One worker's Parquet files.
pub struct ParquetSink {
    config: Arc<ParquetConfig>,
    metrics: Arc<ArchiveMetrics>,
    worker: usize,
    /// Open files by endpoint name and partition hour.
    files: HashMap<(Arc<str>, i64), OpenFile>,
    seq: u64,
}

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
        let stem = format!("part-{}-w{}-{:06}", now_ms(), self.worker, self.seq);
        let tmp = dir.join(format!(".{stem}.parquet.inprogress"));
        let done = dir.join(format!("{stem}.parquet"));
        let file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let level = ZstdLevel::try_new(self.config.zstd_level).map_err(|e| encode(endpoint, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(128 * 1024))
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
            .build();
        let schema = schema(endpoint);
        let writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props))
            .map_err(|e| encode(endpoint, e))?;
        Ok(OpenFile {
            endpoint: Arc::clone(endpoint),
            schema,
            hour,
            dir,
            tmp,
            done,
            writer,
            pending: Vec::new(),
            rows: 0,
            min_ms: i64::MAX,
            max_ms: i64::MIN,
            opened: Instant::now(),
        })
    }

    /// Finalises the files `pick` selects.
    fn finalise_where(&mut self, pick: impl Fn(&OpenFile) -> bool) -> Result<(), SinkError> {
        let keys: Vec<(Arc<str>, i64)> = self
            .files
            .iter()
            .filter(|(_, f)| pick(f))
            .map(|(k, _)| k.clone())
            .collect();
        let mut first_err = None;
        for k in keys {
            if let Some(f) = self.files.remove(&k)
                && let Err(e) = finalise(f, self.worker, &self.metrics)
            {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn flush_pending(f: &mut OpenFile) -> Result<(), SinkError> {
    if f.pending.is_empty() {
        return Ok(());
    }
    let batch = to_batch(&f.schema, &f.endpoint, &f.pending).map_err(|e| encode(&f.endpoint, e))?;
    f.writer.write(&batch).map_err(|e| encode(&f.endpoint, e))?;
    f.pending.clear();
    Ok(())
}

/// Writes the footer, syncs, and renames the file into view.
fn finalise(mut f: OpenFile, worker: usize, metrics: &ArchiveMetrics) -> Result<(), SinkError> {
    flush_pending(&mut f)?;
    for (k, v) in [
        ("weir.endpoint", f.endpoint.name.to_string()),
        ("weir.worker", worker.to_string()),
        ("weir.rows", f.rows.to_string()),
        ("weir.min_enqueued_ms", f.min_ms.to_string()),
        ("weir.max_enqueued_ms", f.max_ms.to_string()),
    ] {
        f.writer
            .append_key_value_metadata(KeyValue::new(k.into(), v));
    }
    f.writer.finish().map_err(|e| encode(&f.endpoint, e))?;
    f.writer.inner().sync_all().map_err(|e| io(&f.tmp, e))?;
    std::fs::rename(&f.tmp, &f.done).map_err(|e| io(&f.done, e))?;
    File::open(&f.dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(&f.dir, e))?;
    metrics
        .rows_committed
        .fetch_add(f.rows as u64, Ordering::Relaxed);
    metrics.files_committed.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut by) = metrics.rows_by_endpoint.lock() {
        *by.entry(f.endpoint.name.to_string()).or_default() += f.rows as u64;
    }
    tracing::debug!(file = %f.done.display(), rows = f.rows, "parquet file finalised");
    Ok(())
}

impl Sink for ParquetSink {
    fn write(
        &mut self,
        endpoint: &Arc<EndpointSpec>,
        batch: Vec<Delivery>,
    ) -> Result<(), SinkError> {
        let mut rows = batch.into_iter().peekable();
        while let Some(first) = rows.next() {
            // Deliveries arrive in enqueue order, so they come in runs of one hour.
            let hour = hour_floor(first.event.enqueued_ms);
            let key = (Arc::clone(&endpoint.name), hour);
            let reloaded = self
                .files
                .get(&key)
                .is_some_and(|f| !Arc::ptr_eq(&f.endpoint, endpoint) && f.endpoint != *endpoint);
            // A reloaded rule set may change an endpoint's columns: start a new file.
            if reloaded && let Some(f) = self.files.remove(&key) {
                finalise(f, self.worker, &self.metrics)?;
            }
            if !self.files.contains_key(&key) {
                let f = self.open_file(endpoint, hour)?;
                self.files.insert(key.clone(), f);
            }
            let (batch_rows, max_rows, max_bytes) = (
                self.config.batch_rows,
                self.config.max_rows,
                self.config.max_bytes,
            );
            let Some(f) = self.files.get_mut(&key) else {
                continue;
            };
            let mut next = Some(first);
            let mut full = false;
            while let Some(d) = next.take() {
                f.min_ms = f.min_ms.min(d.event.enqueued_ms);
                f.max_ms = f.max_ms.max(d.event.enqueued_ms);
                f.pending.push(d);
                f.rows += 1;
                if f.pending.len() >= batch_rows {
                    flush_pending(f)?;
                    if f.rows >= max_rows
                        || f.writer.bytes_written() + f.writer.in_progress_size() >= max_bytes
                    {
                        full = true;
                        break;
                    }
                }
                next = rows.next_if(|d| hour_floor(d.event.enqueued_ms) == hour);
            }
            if full && let Some(f) = self.files.remove(&key) {
                finalise(f, self.worker, &self.metrics)?;
            }
        }
        Ok(())
    }

    fn advance(&mut self, frontier_ms: i64, _now_ms: i64) -> Result<(), SinkError> {
        let max_age = self.config.max_age;
        self.finalise_where(|f| f.hour + 3_600_000 <= frontier_ms || f.opened.elapsed() >= max_age)
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.finalise_where(|_| true)
    }
}

impl Drop for ParquetSink {
    fn drop(&mut self) {
        if !self.files.is_empty() {
            tracing::warn!(
                open = self.files.len(),
                "parquet sink dropped with open files; finalising"
            );
            if let Err(e) = self.close() {
                tracing::error!(error = %e, "could not finalise parquet files");
            }
        }
    }
}
