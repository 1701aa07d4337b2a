//! The writer thread: group commit, segment rolling, retention and the disk budget.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use weir_core::{Event, IngestError, codec};

use super::segment::{self, MAX_RECORD, Position, frame, frame_clock};
use super::{FsyncPolicy, LogConfig, LogError, SegmentInfo, Shared, io_err, now_ms};
use crate::fsutil;

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
    /// Where the next record goes.
    at: Position,
    /// The highest promise made: no record goes below it.
    promised: u64,
    last_enqueued: i64,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    last_error_log: Option<Instant>,
    /// A write or sync on `file` failed: what the kernel did with its unsynced pages is
    /// unknown (a later fsync can succeed without them), so nothing more is written through
    /// this descriptor. The next batch first opens a fresh segment.
    poisoned: bool,
    /// The directory entry of the active segment is not known to be durable yet.
    dir_unsynced: bool,
    /// When the log last reached the disk (a batch, or a written promise).
    last_durable: Instant,
}

/// How often an idle writer under a cluster clock writes its promise down, so that after
/// a restart no offset goes below one it promised, even if the host's clock stepped back.
const PERSIST_PROMISE: Duration = Duration::from_secs(1);

impl Writer {
    pub fn start(
        config: LogConfig,
        shared: Arc<Shared>,
        rx: flume::Receiver<Append>,
        at: Position,
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
            at,
            promised: at.next,
            last_enqueued,
            buf: Vec::with_capacity(GROUP_BYTES + 64 * 1024),
            scratch: Vec::with_capacity(1024),
            last_error_log: None,
            poisoned: false,
            dir_unsynced: false,
            last_durable: Instant::now(),
        };
        std::thread::Builder::new()
            .name("weir-log".into())
            .spawn(move || w.run(rx))
            .map_err(|e| io_err(std::path::Path::new("weir-log thread"), e))
    }

    fn run(&mut self, rx: flume::Receiver<Append>) {
        let mut batch: Vec<Append> = Vec::new();
        // Under a cluster clock an idle writer promises later offsets often, since the
        // cluster's frontier waits for the slowest promise. Each promise moves the
        // frontier, which every process's workers then hear about: at 10 ms, an idle
        // three-process cluster spent ~6 % of a core per process on it. At 50 ms the
        // frontier lags data by at most that much more, next to archive files that
        // close after seconds.
        let idle = match self.config.clock {
            Some(_) => Duration::from_millis(50),
            None => Duration::from_millis(100),
        };
        let mut retained = Instant::now();
        loop {
            match rx.recv_timeout(idle) {
                Ok(a) => batch.push(a),
                Err(flume::RecvTimeoutError::Timeout) => {
                    if self.shared.stopping.load(Ordering::Relaxed) && rx.is_empty() {
                        break;
                    }
                    self.promise_clock();
                    if self.last_durable.elapsed() >= PERSIST_PROMISE {
                        self.persist_promise();
                    }
                    if retained.elapsed() >= Duration::from_millis(100) {
                        retained = Instant::now();
                        self.retain(false);
                    }
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            self.gather(&rx, &mut batch);
            self.commit(&mut batch);
        }
        self.persist_promise();
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

    /// Under a cluster clock, promises that nothing will be appended below the clock's
    /// present, and wakes the readers so their frontier moves with it.
    fn promise_clock(&mut self) {
        let Some(clock) = self.config.clock else {
            return;
        };
        let t = clock.at_least(self.promised.max(self.at.next));
        if t > self.promised {
            self.promised = t;
            self.shared.promise.store(t, Ordering::Release);
            self.shared.wake();
        }
    }

    /// Writes the promise down as a clock record with no records after it: the torn-tail
    /// scan at the next start then resumes from it. A failure is left to the next batch,
    /// which opens a fresh segment.
    fn persist_promise(&mut self) {
        self.last_durable = Instant::now();
        let Some(clock) = self.config.clock else {
            return;
        };
        if self.promised <= self.at.next {
            return;
        }
        let at = Position {
            next: self.promised,
            stride: clock.processes.max(1),
        };
        self.buf.clear();
        frame_clock(at.next, at.stride, &mut self.buf);
        let written = self.ready_file().and_then(|()| {
            self.file
                .write_all(&self.buf)
                .and_then(|()| self.file.sync_data())
        });
        if let Err(e) = written {
            self.note_failure();
            let _ = self.file.set_len(self.bytes);
            tracing::warn!(error = %e, "ingest log: cannot write the clock's promise down");
            return;
        }
        self.bytes += self.buf.len() as u64;
        self.shared
            .metrics
            .disk_bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        if let Ok(mut segs) = self.shared.segments.write()
            && let Some(s) = segs.last_mut()
        {
            s.bytes = self.bytes;
        }
        self.at = at;
        self.shared.durable_end.store(at.next, Ordering::Release);
        self.shared.wake();
    }

    /// Makes a batch durable and acknowledges it, or fails it without acknowledging.
    fn commit(&mut self, batch: &mut Vec<Append>) {
        self.buf.clear();
        let now = now_ms().max(self.last_enqueued);
        let mut at = self.at;
        if let Some(clock) = self.config.clock {
            // Every batch says where it sits, so its offsets never depend on the segment
            // it lands in (a failed write moves it to a fresh one).
            at = Position {
                next: clock.at_least(self.promised.max(self.at.next)),
                stride: clock.processes.max(1),
            };
            frame_clock(at.next, at.stride, &mut self.buf);
        }
        let mut records = 0u64;
        let mut refused = Vec::new();
        for (i, a) in batch.iter_mut().enumerate() {
            let (mark, first, counted) = (self.buf.len(), at, records);
            for e in a.events.iter_mut() {
                e.enqueued_ms = now;
                e.offset = at.next;
                self.scratch.clear();
                codec::encode(e, &mut self.scratch);
                if self.scratch.len() > MAX_RECORD {
                    refused.push((i, self.scratch.len()));
                    break;
                }
                at.skip();
                records += 1;
                frame(a.hash, &self.scratch, &mut self.buf);
            }
            // An append is stored whole or not at all.
            if refused.last().is_some_and(|(r, _)| *r == i) {
                self.buf.truncate(mark);
                at = first;
                records = counted;
            }
        }
        for (i, size) in refused.into_iter().rev() {
            let a = batch.swap_remove(i);
            let _ = a.done.send(Err(IngestError::TooLarge {
                size,
                limit: MAX_RECORD,
            }));
        }
        if batch.is_empty() {
            return;
        }
        if !self.hold_for_budget(self.buf.len() as u64) {
            fail(batch, IngestError::ShuttingDown);
            return;
        }
        if let Err(e) = self.ready_file() {
            self.write_failed(e, batch);
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
        #[cfg(test)]
        if result.is_ok() && self.shared.fail_next_write.swap(false, Ordering::AcqRel) {
            self.write_failed_keeping_bytes(batch);
            return;
        }
        if let Err(e) = result {
            self.write_failed(e, batch);
            return;
        }
        self.shared.write_failing.store(false, Ordering::Relaxed);
        let m = &self.shared.metrics;
        if self.config.fsync != FsyncPolicy::Never {
            m.syncs.fetch_add(1, Ordering::Relaxed);
            m.sync_micros
                .fetch_add(sync_started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        m.appends.fetch_add(batch.len() as u64, Ordering::Relaxed);
        m.records.fetch_add(records, Ordering::Relaxed);
        m.bytes_written
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        m.disk_bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.bytes += self.buf.len() as u64;
        self.at = at;
        self.promised = self.promised.max(at.next);
        self.last_enqueued = now;
        if let Ok(mut segs) = self.shared.segments.write()
            && let Some(s) = segs.last_mut()
        {
            s.bytes = self.bytes;
            s.last_write_ms = now;
        }
        self.shared.durable_end.store(at.next, Ordering::Release);
        self.shared.promise.store(self.promised, Ordering::Release);
        self.last_durable = Instant::now();
        for a in batch.drain(..) {
            let _ = a.done.send(Ok(()));
        }
        self.shared.wake();
        if self.bytes >= self.config.segment_bytes {
            self.roll();
        }
        self.retain(false);
    }

    /// Makes sure the next write goes to a file whose earlier writes are all known to be
    /// durable and whose directory entry is: after a failure, a fresh segment (or, if the
    /// active one holds nothing, the same file opened anew, checked to be empty).
    fn ready_file(&mut self) -> std::io::Result<()> {
        if self.poisoned {
            if self.bytes > 0 {
                self.start_segment()?;
            } else {
                let path = self.active_path()?;
                let file = OpenOptions::new().append(true).open(&path)?;
                file.set_len(0)?;
                file.sync_all()?;
                if file.metadata()?.len() != 0 {
                    return Err(std::io::Error::other(
                        "the active segment is not empty after truncation",
                    ));
                }
                self.file = file;
            }
            self.poisoned = false;
        }
        if self.dir_unsynced {
            segment::sync_dir(&self.shared.dir)?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    fn active_path(&self) -> std::io::Result<std::path::PathBuf> {
        self.shared
            .segments
            .read()
            .ok()
            .and_then(|s| s.last().map(|x| x.path.clone()))
            .ok_or_else(|| std::io::Error::other("log state is unavailable"))
    }

    /// A write that failed after its bytes reached the file, whose cut failed too.
    #[cfg(test)]
    fn write_failed_keeping_bytes(&mut self, batch: &mut Vec<Append>) {
        self.note_failure();
        fail(batch, IngestError::Unavailable("injected".into()));
    }

    fn note_failure(&mut self) {
        self.shared
            .metrics
            .write_errors
            .fetch_add(1, Ordering::Relaxed);
        self.shared.failed_writes.fetch_add(1, Ordering::Release);
        self.shared.write_failing.store(true, Ordering::Relaxed);
        self.poisoned = true;
    }

    fn write_failed(&mut self, e: std::io::Error, batch: &mut Vec<Append>) {
        // Nothing of this batch is acknowledged, and nothing more goes through this
        // descriptor. Cutting what reached the file keeps a restart from having to; if
        // that fails too, the torn tail is cut at the next start (or ends a segment that
        // is no longer the last, where readers never look past its records, and readers
        // that buffered it reopen: `failed_writes`).
        self.note_failure();
        if let Err(cut) = self.file.set_len(self.bytes) {
            tracing::warn!(error = %cut, "ingest log: cannot cut a failed write off the segment; a new segment follows it");
        }
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

    /// Starts a new segment when the active one is full. A failure leaves the active one
    /// in use (it is tried again after the next batch).
    fn roll(&mut self) {
        if let Err(e) = self.file.sync_all() {
            tracing::error!(error = %e, "ingest log: sync before roll failed");
            self.poisoned = true;
            return;
        }
        if let Err(e) = self.start_segment() {
            tracing::error!(error = %e, "ingest log: cannot start a new segment");
        }
    }

    /// Opens `<next>.log` as the active segment. Its directory entry is synced before
    /// anything written to it is acknowledged.
    fn start_segment(&mut self) -> std::io::Result<()> {
        let base = self.at.next;
        let path = self.shared.dir.join(segment::file_name(base));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(fsutil::FILE_MODE)
            .open(&path)?;
        if file.metadata()?.len() != 0 {
            // Left by a failed attempt at this same offset: nothing in it was acknowledged.
            file.set_len(0)?;
        }
        self.dir_unsynced = true;
        self.file = file;
        self.bytes = 0;
        self.at = Position::start(base);
        if let Ok(mut segs) = self.shared.segments.write() {
            match segs.last_mut() {
                Some(last) if last.base == base => {
                    last.bytes = 0;
                }
                _ => segs.push(SegmentInfo {
                    base,
                    path,
                    bytes: 0,
                    last_write_ms: now_ms(),
                }),
            }
        }
        if let Err(e) = segment::sync_dir(&self.shared.dir) {
            tracing::warn!(error = %e, "ingest log: syncing the log directory failed; retried before the next write");
        } else {
            self.dir_unsynced = false;
        }
        Ok(())
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
