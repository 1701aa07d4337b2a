//! The ingest log: where every accepted event becomes durable before it is acknowledged,
//! and where the engine reads from.
//!
//! * Gateways append through [`LogIngest`] (the [`weir_core::Ingest`] seam). One writer
//!   thread assigns offsets and enqueued times, frames records into the active segment and
//!   syncs them under the [`FsyncPolicy`]; only then are the appends acknowledged.
//! * Engine workers read through [`LogFeed`] (the [`weir_core::EventFeed`] seam), each its
//!   partition, never past what is durable.
//! * Sinks report how far they have committed; segments wholly below that (and older than
//!   the duplicate window) are deleted. A disk budget holds new appends when reached.
//! * Opening the log truncates a torn or corrupt tail of the newest segment.

mod ingest;
mod reader;
mod segment;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use ingest::LogIngest;
pub use reader::{LogFeed, LogReader};
pub use segment::{HEADER, MAX_RECORD, frame, scan};

/// The log format this version writes: records carry the stable device hash of
/// `weir_core::feed::device_hash` (format 1 carried a hash that was not stable).
pub const FORMAT: u32 = 2;
const FORMAT_FILE: &str = "FORMAT";

/// What a log directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Nothing yet, or the current format.
    Current,
    /// Format 1 segments holding records up to `end`.
    Legacy { end: u64 },
    /// Written by a newer Weir.
    Newer(u32),
}

/// Reads the format of the log in `dir` without opening it.
pub fn format(dir: &Path) -> Result<Format, LogError> {
    match std::fs::read_to_string(dir.join(FORMAT_FILE)) {
        Ok(text) => {
            let v: u32 = text.trim().parse().unwrap_or(0);
            return Ok(match v {
                FORMAT => Format::Current,
                v if v > FORMAT => Format::Newer(v),
                _ => Format::Legacy {
                    end: legacy_end(dir)?,
                },
            });
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(dir, e)),
        Err(_) => {}
    }
    let segments = if dir.exists() {
        segment::list(dir).map_err(|e| io_err(dir, e))?
    } else {
        Vec::new()
    };
    if segments.is_empty() {
        return Ok(Format::Current);
    }
    Ok(Format::Legacy {
        end: legacy_end(dir)?,
    })
}

fn legacy_end(dir: &Path) -> Result<u64, LogError> {
    let segments = segment::list(dir).map_err(|e| io_err(dir, e))?;
    let Some((base, path)) = segments.last() else {
        return Ok(0);
    };
    let scan = segment::scan(path, *base).map_err(|e| io_err(path, e))?;
    Ok(scan.end.next)
}

/// Replaces a format-1 log whose every record has been archived by an empty current-format
/// log that continues at `end` (offsets keep growing: archives name files by offset).
pub fn upgrade_legacy(dir: &Path, end: u64) -> Result<(), LogError> {
    for (_, path) in segment::list(dir).map_err(|e| io_err(dir, e))? {
        std::fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
    }
    let path = dir.join(segment::file_name(end));
    crate::fsutil::create_private(&path).map_err(|e| io_err(&path, e))?;
    crate::secret::write_private(&dir.join(FORMAT_FILE), format!("{FORMAT}\n").as_bytes())
        .map_err(|e| io_err(dir, e))?;
    segment::sync_dir(dir).map_err(|e| io_err(dir, e))
}

/// When appends are synced to disk before they are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Group commit: appends that arrive together (within `max_delay`) share one
    /// `fdatasync`; each is acknowledged after it. Loses nothing acknowledged.
    Batch,
    /// One `fdatasync` per append request. Loses nothing acknowledged; slower.
    Always,
    /// Never sync: acknowledged once written to the OS. Survives a crash of Weir
    /// (`kill -9`), not of the machine: a power loss can lose what the kernel had not
    /// yet written back (typically up to 30 s of messages).
    Never,
}

impl FsyncPolicy {
    pub fn parse(s: &str) -> Option<FsyncPolicy> {
        match s {
            "batch" => Some(FsyncPolicy::Batch),
            "always" => Some(FsyncPolicy::Always),
            "never" => Some(FsyncPolicy::Never),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Under `Batch`, how long the writer may wait for more appends before syncing.
    pub max_delay: Duration,
    /// Roll to a new segment past this size.
    pub segment_bytes: u64,
    /// Total size of all segments; beyond it appends are held until sinks catch up.
    pub budget_bytes: u64,
    /// Append requests queued before gateways wait.
    pub queue: usize,
    /// Keep segments this long after they are committed, so duplicate detection can be
    /// rebuilt after a restart (ignored when the budget is reached).
    pub keep: Duration,
    /// In a cluster, offsets follow the clock (decision 037); alone, they are dense.
    pub clock: Option<ClusterClock>,
}

/// Process `process` of `processes`: its offsets are `now_µs · processes + process` or the
/// previous offset plus `processes`, whichever is larger. Offsets of different processes
/// never collide, and all move with time, also where nothing arrives, so the frontier of
/// a dataflow reading every process's log keeps moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterClock {
    pub process: u64,
    pub processes: u64,
}

impl ClusterClock {
    /// The first offset of this process at or after `floor` and the wall clock.
    pub fn at_least(&self, floor: u64) -> u64 {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let n = self.processes.max(1);
        let t = floor.max(us.saturating_mul(n));
        let r = t % n;
        let p = self.process % n;
        let up = if r <= p { p - r } else { n - r + p };
        t.saturating_add(up)
    }
}

impl LogConfig {
    pub fn new(dir: PathBuf) -> LogConfig {
        LogConfig {
            dir,
            fsync: FsyncPolicy::Batch,
            max_delay: Duration::from_millis(2),
            segment_bytes: 64 * 1024 * 1024,
            budget_bytes: 4 * 1024 * 1024 * 1024,
            queue: 1024,
            keep: Duration::from_secs(300),
            clock: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("ingest log I/O error at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> LogError {
    LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct LogMetrics {
    pub appends: AtomicU64,
    pub records: AtomicU64,
    pub bytes_written: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_micros: AtomicU64,
    pub write_errors: AtomicU64,
    /// Times appends were held because the disk budget was reached.
    pub held: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub corrupt_records: AtomicU64,
    /// Current total size of the segments.
    pub disk_bytes: AtomicU64,
}

#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub base: u64,
    pub path: PathBuf,
    pub bytes: u64,
    /// When the last record was appended (ms since the epoch).
    pub last_write_ms: i64,
}

/// State shared by the writer, the readers and the handles.
pub(crate) struct Shared {
    pub dir: PathBuf,
    /// The offset after the last durable record.
    pub durable_end: AtomicU64,
    /// No record will be appended below this; at least `durable_end`. Under a cluster
    /// clock the writer raises it with time while idle.
    pub promise: AtomicU64,
    pub segments: RwLock<Vec<SegmentInfo>>,
    /// Offsets below this are committed by every sink.
    pub retain_floor: AtomicU64,
    /// Set when the writer has stopped; readers then finish at `durable_end`.
    pub closed: AtomicBool,
    pub stopping: AtomicBool,
    /// The last append failed (a full disk, an I/O error): publishes are being refused.
    pub write_failing: AtomicBool,
    /// Failed appends so far. Bytes past `durable_end` a reader buffered before one are
    /// not what the log holds after it (the retry goes to a fresh segment or over them),
    /// so a reader that sees this move reopens where it is.
    pub failed_writes: AtomicU64,
    /// Tests only: the next append writes its bytes and then fails, and the bytes stay in
    /// the file (as when cutting them off fails too).
    #[cfg(test)]
    pub fail_next_write: AtomicBool,
    pub wakers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    pub metrics: LogMetrics,
}

impl Shared {
    pub fn wake(&self) {
        if let Ok(w) = self.wakers.lock() {
            w.iter().for_each(|f| f());
        }
    }

    /// Index of the segment holding `offset` (the last one whose base is not above it).
    pub fn segment_for(segs: &[SegmentInfo], offset: u64) -> Option<usize> {
        segs.iter().rposition(|s| s.base <= offset)
    }
}

/// What opening the log found and repaired.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub segments: usize,
    /// The offset after the last record.
    pub end: u64,
    pub first: u64,
    /// Bytes cut from the newest segment because they were torn or corrupt.
    pub truncated_bytes: u64,
    pub last_enqueued_ms: i64,
}

/// The open log: a writer thread plus shared state.
pub struct Log {
    shared: Arc<Shared>,
    tx: Option<flume::Sender<writer::Append>>,
    writer: Option<JoinHandle<()>>,
}

fn mtime_ms(p: &Path) -> i64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

impl Log {
    /// Opens (or creates) the log in `config.dir`, repairing a torn tail, and starts the
    /// writer thread.
    pub fn open(config: LogConfig) -> Result<(Log, Recovered), LogError> {
        let dir = config.dir.clone();
        crate::fsutil::create_dir_durable(&dir).map_err(|e| io_err(&dir, e))?;
        crate::fsutil::restrict(&dir).map_err(|e| io_err(&dir, e))?;
        let mut found = segment::list(&dir).map_err(|e| io_err(&dir, e))?;
        let mut rec = Recovered::default();
        if found.is_empty() {
            let path = dir.join(segment::file_name(0));
            crate::fsutil::create_private(&path).map_err(|e| io_err(&path, e))?;
            crate::secret::write_private(&dir.join(FORMAT_FILE), format!("{FORMAT}\n").as_bytes())
                .map_err(|e| io_err(&dir, e))?;
            segment::sync_dir(&dir).map_err(|e| io_err(&dir, e))?;
            found.push((0, path));
        }
        for (_, path) in &found {
            crate::fsutil::restrict(path).map_err(|e| io_err(path, e))?;
        }
        let mut segments: Vec<SegmentInfo> = found
            .iter()
            .map(|(base, path)| SegmentInfo {
                base: *base,
                path: path.clone(),
                bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
                last_write_ms: mtime_ms(path),
            })
            .collect();
        let last = segments.len() - 1;
        let tail = &mut segments[last];
        let scan = segment::scan(&tail.path, tail.base).map_err(|e| io_err(&tail.path, e))?;
        if scan.valid_bytes < scan.file_bytes {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&tail.path)
                .map_err(|e| io_err(&tail.path, e))?;
            f.set_len(scan.valid_bytes)
                .map_err(|e| io_err(&tail.path, e))?;
            f.sync_all().map_err(|e| io_err(&tail.path, e))?;
            rec.truncated_bytes = scan.file_bytes - scan.valid_bytes;
            tracing::warn!(
                segment = %tail.path.display(),
                dropped_bytes = rec.truncated_bytes,
                kept_records = scan.records,
                "ingest log: cut a torn or corrupt tail from the newest segment (never acknowledged: acknowledgements follow the sync)"
            );
        }
        tail.bytes = scan.valid_bytes;
        rec.end = scan.end.next;
        rec.last_enqueued_ms = scan.last_enqueued_ms.unwrap_or(tail.last_write_ms);
        rec.first = segments[0].base;
        rec.segments = segments.len();
        let disk: u64 = segments.iter().map(|s| s.bytes).sum();
        let shared = Arc::new(Shared {
            dir,
            durable_end: AtomicU64::new(rec.end),
            promise: AtomicU64::new(rec.end),
            segments: RwLock::new(segments),
            retain_floor: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            write_failing: AtomicBool::new(false),
            failed_writes: AtomicU64::new(0),
            #[cfg(test)]
            fail_next_write: AtomicBool::new(false),
            wakers: Mutex::new(Vec::new()),
            metrics: LogMetrics::default(),
        });
        shared.metrics.disk_bytes.store(disk, Ordering::Relaxed);
        let (tx, rx) = flume::bounded(config.queue.max(1));
        let writer = writer::Writer::start(
            config,
            Arc::clone(&shared),
            rx,
            scan.end,
            rec.last_enqueued_ms,
        )?;
        Ok((
            Log {
                shared,
                tx: Some(tx),
                writer: Some(writer),
            },
            rec,
        ))
    }

    /// Where gateways append.
    pub fn ingest(&self) -> LogIngest {
        LogIngest::new(self.tx.clone())
    }

    /// What the engine reads.
    pub fn feed(&self) -> LogFeed {
        LogFeed::new(Arc::clone(&self.shared))
    }

    /// The offset after the last durable record.
    pub fn end(&self) -> u64 {
        self.shared.durable_end.load(Ordering::Acquire)
    }

    /// The first offset still on disk.
    pub fn first(&self) -> u64 {
        self.shared
            .segments
            .read()
            .map_or(0, |s| s.first().map_or(0, |x| x.base))
    }

    pub fn metrics(&self) -> LogMetricsHandle {
        LogMetricsHandle(Arc::clone(&self.shared))
    }

    /// The first offset whose record was appended at or after `ms` (by enqueued time), or
    /// the end of the log.
    pub fn offset_at_time(&self, ms: i64) -> u64 {
        reader::offset_at_time(&self.shared, ms)
    }

    /// The enqueued time of the record at `offset`, if it is still on disk.
    pub fn enqueued_at(&self, offset: u64) -> Option<i64> {
        reader::enqueued_at(&self.shared, offset)
    }

    /// Stops accepting appends, writes and syncs what is queued, and stops the writer.
    /// Readers finish at the final end.
    pub fn close(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake();
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

/// Read access to the log's counters.
#[derive(Clone)]
pub struct LogMetricsHandle(Arc<Shared>);

impl LogMetricsHandle {
    pub fn metrics(&self) -> &LogMetrics {
        &self.0.metrics
    }

    pub fn end(&self) -> u64 {
        self.0.durable_end.load(Ordering::Relaxed)
    }

    pub fn floor(&self) -> u64 {
        self.0.retain_floor.load(Ordering::Relaxed)
    }

    /// The first offset the log still holds (its end when it holds nothing).
    pub fn first(&self) -> u64 {
        self.0
            .segments
            .read()
            .ok()
            .and_then(|s| s.first().map(|seg| seg.base))
            .unwrap_or_else(|| self.end())
    }

    pub fn segments(&self) -> usize {
        self.0.segments.read().map_or(0, |s| s.len())
    }

    /// True while appends fail: the hub refuses publishes until the disk recovers.
    pub fn write_failing(&self) -> bool {
        self.0.write_failing.load(Ordering::Relaxed)
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;
