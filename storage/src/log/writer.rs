//! The writer thread: group commit, segment rolling, retention and the disk budget.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use weir_core::{Event, IngestError, codec};

use super::segment::{self, frame};
use super::{FsyncPolicy, LogConfig, LogError, SegmentInfo, Shared, io_err, now_ms};

/// One gateway batch: events from one device, acknowledged together.
pub(crate) struct Append {
    pub hash: u64,
    pub events: Vec<Event>,
    pub done: oneshot::Sender<Result<(), IngestError>>,
}

/// Bytes gathered before the writer syncs without waiting for `max_delay`.
const GROUP_BYTES: usize = 1 << 20;

pub(crate) struct Writer {
    config: LogConfig,
    shared: Arc<Shared>,
    file: File,
    /// Size of the active segment.
    bytes: u64,
    next: u64,
    last_enqueued: i64,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    last_error_log: Option<Instant>,
}

impl Writer {
    pub fn start(
        config: LogConfig,
        shared: Arc<Shared>,
        rx: flume::Receiver<Append>,
        next: u64,
        last_enqueued: i64,
    ) -> Result<JoinHandle<()>, LogError> {
        let (path, bytes) = {
            let segs = shared.segments.read().map_err(|_| poisoned(&shared))?;
            let s = segs.last().ok_or_else(|| poisoned(&shared))?;
            (s.path.clone(), s.bytes)
        };
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let mut w = Writer {
            config,
            shared,
            file,
            bytes,
            next,
            last_enqueued,
            buf: Vec::with_capacity(GROUP_BYTES + 64 * 1024),
            scratch: Vec::with_capacity(1024),
            last_error_log: None,
        };
        std::thread::Builder::new()
            .name("weir-log".into())
            .spawn(move || w.run(rx))
            .map_err(|e| io_err(std::path::Path::new("weir-log thread"), e))
    }

    fn run(&mut self, rx: flume::Receiver<Append>) {
        let mut batch: Vec<Append> = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(a) => batch.push(a),
                Err(flume::RecvTimeoutError::Timeout) => {
                    if self.shared.stopping.load(Ordering::Relaxed) && rx.is_empty() {
                        break;
                    }
                    self.retain(false);
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            self.gather(&rx, &mut batch);
            self.commit(&mut batch);
        }
        if let Err(e) = self.file.sync_all() {
            tracing::error!(error = %e, "ingest log: final sync failed");
        }
    }

    /// Collects more appends: all that are queued, and under `Batch` whatever arrives
    /// within `max_delay`, up to a size limit.
    fn gather(&self, rx: &flume::Receiver<Append>, batch: &mut Vec<Append>) {
        if self.config.fsync == FsyncPolicy::Always {
            return;
        }
        let deadline = Instant::now() + self.config.max_delay;
        let mut size: usize = batch.iter().map(approx_bytes).sum();
        loop {
            while size < GROUP_BYTES {
                match rx.try_recv() {
                    Ok(a) => {
                        size += approx_bytes(&a);
                        batch.push(a);
                    }
                    Err(_) => break,
                }
            }
            if size >= GROUP_BYTES || self.config.fsync != FsyncPolicy::Batch {
                return;
            }
            match rx.recv_deadline(deadline) {
                Ok(a) => {
                    size += approx_bytes(&a);
                    batch.push(a);
                }
                Err(_) => return,
            }
        }
    }

    /// Makes a batch durable and acknowledges it, or fails it without acknowledging.
    fn commit(&mut self, batch: &mut Vec<Append>) {
        self.buf.clear();
        let now = now_ms().max(self.last_enqueued);
        let start = self.next;
        let mut next = self.next;
        for a in batch.iter_mut() {
            for e in a.events.iter_mut() {
                e.enqueued_ms = now;
                e.offset = next;
                next += 1;
                self.scratch.clear();
                codec::encode(e, &mut self.scratch);
                frame(a.hash, &self.scratch, &mut self.buf);
            }
        }
        if !self.hold_for_budget(self.buf.len() as u64) {
            fail(batch, IngestError::ShuttingDown);
            return;
        }
        let sync_started = Instant::now();
        let result = self
            .file
            .write_all(&self.buf)
            .and_then(|()| match self.config.fsync {
                FsyncPolicy::Never => Ok(()),
                _ => self.file.sync_data(),
            });
        if let Err(e) = result {
            self.write_failed(e, batch);
            return;
        }
        let m = &self.shared.metrics;
        if self.config.fsync != FsyncPolicy::Never {
            m.syncs.fetch_add(1, Ordering::Relaxed);
            m.sync_micros
                .fetch_add(sync_started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        m.appends.fetch_add(batch.len() as u64, Ordering::Relaxed);
        m.records.fetch_add(next - start, Ordering::Relaxed);
        m.bytes_written
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        m.disk_bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.bytes += self.buf.len() as u64;
        self.next = next;
        self.last_enqueued = now;
        if let Ok(mut segs) = self.shared.segments.write()
            && let Some(s) = segs.last_mut()
        {
            s.bytes = self.bytes;
            s.last_write_ms = now;
        }
        self.shared.durable_end.store(next, Ordering::Release);
        for a in batch.drain(..) {
            let _ = a.done.send(Ok(()));
        }
        self.shared.wake();
        if self.bytes >= self.config.segment_bytes {
            self.roll();
        }
        self.retain(false);
    }

    fn write_failed(&mut self, e: std::io::Error, batch: &mut Vec<Append>) {
        self.shared
            .metrics
            .write_errors
            .fetch_add(1, Ordering::Relaxed);
        // Cut whatever part of the batch reached the file, so the segment stays a clean
        // sequence of records; nothing of this batch is acknowledged.
        let _ = self.file.set_len(self.bytes);
        let full = e.raw_os_error() == Some(28);
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed().as_secs() >= 5)
        {
            self.last_error_log = Some(Instant::now());
            if full {
                tracing::error!(
                    dir = %self.shared.dir.display(),
                    "ingest log: the disk is full; publishes are refused (not acknowledged) until space is freed"
                );
            } else {
                tracing::error!(error = %e, dir = %self.shared.dir.display(), "ingest log: write failed; publishes are refused");
            }
        }
        let why = if full {
            "disk full".to_string()
        } else {
            e.to_string()
        };
        fail(batch, IngestError::Unavailable(why));
    }

    /// Waits while the log is over its disk budget, deleting committed segments as sinks
    /// catch up. False when the log is stopping.
    fn hold_for_budget(&mut self, incoming: u64) -> bool {
        let mut warned = false;
        loop {
            let used = self.shared.metrics.disk_bytes.load(Ordering::Relaxed);
            if used + incoming <= self.config.budget_bytes {
                return true;
            }
            self.retain(true);
            if self.shared.metrics.disk_bytes.load(Ordering::Relaxed) + incoming
                <= self.config.budget_bytes
            {
                return true;
            }
            if !warned {
                warned = true;
                self.shared.metrics.held.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    budget = self.config.budget_bytes,
                    used,
                    "ingest log: disk budget reached; holding publishes until sinks catch up"
                );
            }
            if self.shared.stopping.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn roll(&mut self) {
        if let Err(e) = self.file.sync_all() {
            tracing::error!(error = %e, "ingest log: sync before roll failed");
            return;
        }
        let path = self.shared.dir.join(segment::file_name(self.next));
        let file = match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "ingest log: cannot start a new segment");
                return;
            }
        };
        let _ = segment::sync_dir(&self.shared.dir);
        self.file = file;
        self.bytes = 0;
        if let Ok(mut segs) = self.shared.segments.write() {
            segs.push(SegmentInfo {
                base: self.next,
                path,
                bytes: 0,
                last_write_ms: now_ms(),
            });
        }
    }

    /// Deletes segments every sink has committed past. Unless `pressed` (over budget),
    /// a segment is also kept until it is older than `keep`.
    fn retain(&mut self, pressed: bool) {
        let floor = self.shared.retain_floor.load(Ordering::Relaxed);
        let keep_after = now_ms() - self.config.keep.as_millis() as i64;
        let doomed: Vec<SegmentInfo> = {
            let Ok(mut segs) = self.shared.segments.write() else {
                return;
            };
            let mut n = 0;
            // Never the active (last) segment; a segment ends where the next begins.
            while n + 1 < segs.len()
                && segs[n + 1].base <= floor
                && (pressed || segs[n].last_write_ms < keep_after)
            {
                n += 1;
            }
            segs.drain(..n).collect()
        };
        for s in doomed {
            match std::fs::remove_file(&s.path) {
                Ok(()) => {
                    self.shared
                        .metrics
                        .segments_deleted
                        .fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .metrics
                        .disk_bytes
                        .fetch_sub(s.bytes, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = %s.path.display(), "ingest log: cannot delete a committed segment")
                }
            }
        }
    }
}

fn approx_bytes(a: &Append) -> usize {
    a.events.iter().map(|e| e.body.len() + 96).sum()
}

fn fail(batch: &mut Vec<Append>, why: IngestError) {
    for a in batch.drain(..) {
        let _ = a.done.send(Err(why.clone()));
    }
}

fn poisoned(shared: &Shared) -> LogError {
    io_err(
        &shared.dir,
        std::io::Error::other("log state is unavailable"),
    )
}
