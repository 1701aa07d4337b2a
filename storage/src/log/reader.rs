//! Reading the log: one reader per engine worker, each decoding only its partition.

use std::fs::File;
use std::io::{BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use weir_core::feed::{partition_of, worker_of};
use weir_core::{Event, EventFeed, FeedError, FeedReader, codec};

use super::segment::{HEADER, Header, MAX_RECORD, Position, header, verify};
use super::{SegmentInfo, Shared};
use weir_core::record::CLOCK_HASH;

/// The log as an [`EventFeed`].
#[derive(Clone)]
pub struct LogFeed {
    shared: Arc<Shared>,
}

impl LogFeed {
    pub(crate) fn new(shared: Arc<Shared>) -> LogFeed {
        LogFeed { shared }
    }
}

impl EventFeed for LogFeed {
    fn reader(
        &self,
        worker: usize,
        workers: usize,
        from: u64,
    ) -> Result<Box<dyn FeedReader>, FeedError> {
        Ok(Box::new(LogReader::new(
            Arc::clone(&self.shared),
            worker,
            workers,
            from,
        )))
    }

    fn release(&self, offset: u64) {
        self.shared
            .retain_floor
            .fetch_max(offset, Ordering::Relaxed);
    }

    fn on_data(&self, wake: Box<dyn Fn() + Send + Sync>) {
        if let Ok(mut w) = self.shared.wakers.lock() {
            w.push(wake);
        }
    }

    fn reader_from(
        &self,
        worker: usize,
        workers: usize,
        from: u64,
    ) -> Result<Box<dyn FeedReader>, FeedError> {
        Ok(Box::new(LogReader::new(
            Arc::clone(&self.shared),
            worker,
            workers,
            from,
        )))
    }

    fn offset_before(&self, offset: u64, window: std::time::Duration) -> u64 {
        match enqueued_at(&self.shared, offset) {
            Some(t) => offset_at_time(&self.shared, t - window.as_millis() as i64).min(offset),
            None => offset,
        }
    }
}

/// A position in one segment file.
struct Cursor {
    file: BufReader<File>,
    /// Where the next record in the file sits.
    at: Position,
    /// The base of the segment after this one, if any: where this one ends.
    end: Option<u64>,
    /// `Shared::failed_writes` when it was opened.
    failed_writes: u64,
}

pub struct LogReader {
    shared: Arc<Shared>,
    worker: usize,
    workers: usize,
    /// Records before this offset are skipped without decoding.
    from: u64,
    next: u64,
    cursor: Option<Cursor>,
    payload: Vec<u8>,
    finished: bool,
    last_warning: Option<Instant>,
    /// The offset at which the cursor was last reopened after running off a segment.
    reopened_at: Option<u64>,
}

impl LogReader {
    pub(crate) fn new(shared: Arc<Shared>, worker: usize, workers: usize, from: u64) -> LogReader {
        let first = shared
            .segments
            .read()
            .map_or(0, |s| s.first().map_or(0, |x| x.base));
        LogReader {
            shared,
            worker,
            workers: workers.max(1),
            from,
            // Start in the segment that holds `from`: records before it are never returned.
            next: first.max(from),
            cursor: None,
            payload: Vec::new(),
            finished: false,
            last_warning: None,
            reopened_at: None,
        }
    }

    fn warn(&mut self, msg: &str) {
        if self
            .last_warning
            .is_none_or(|t| t.elapsed().as_secs() >= 10)
        {
            self.last_warning = Some(Instant::now());
            tracing::error!(offset = self.next, "ingest log: {msg}");
        }
    }

    /// Opens the segment holding `self.next`, skipping the records before it.
    fn open(&mut self) -> Result<(), FeedError> {
        let segs: Vec<SegmentInfo> = self
            .shared
            .segments
            .read()
            .map_err(|_| FeedError::Read("log state unavailable".into()))?
            .clone();
        let Some(first) = segs.first() else {
            return Err(FeedError::Read("the log has no segments".into()));
        };
        if self.next < first.base {
            // Retention removed records this reader had not reached: only possible when
            // something else moved the floor past it.
            self.warn("records below the retained log were skipped");
            self.next = first.base;
        }
        let i = Shared::segment_for(&segs, self.next).unwrap_or(0);
        let s = &segs[i];
        let f = File::open(&s.path)
            .map_err(|e| FeedError::Read(format!("{}: {e}", s.path.display())))?;
        let mut c = Cursor {
            file: BufReader::with_capacity(1 << 20, f),
            at: Position::start(s.base),
            end: segs.get(i + 1).map(|n| n.base),
            failed_writes: self.shared.failed_writes.load(Ordering::Acquire),
        };
        while c.at.next < self.next {
            let h = read_header(&mut c.file)?;
            if h.hash == CLOCK_HASH {
                read_clock(&mut c, &h, &mut self.payload)?;
            } else {
                c.file
                    .seek_relative(h.len as i64)
                    .map_err(|e| FeedError::Read(e.to_string()))?;
                c.at.skip();
            }
        }
        // A clock record may have moved past `next`: nothing was written in between.
        self.next = self.next.max(c.at.next);
        self.cursor = Some(c);
        Ok(())
    }
}

/// Reads a clock record's payload and moves the cursor by it.
fn read_clock(c: &mut Cursor, h: &Header, buf: &mut Vec<u8>) -> Result<(), FeedError> {
    buf.resize(h.len, 0);
    c.file
        .read_exact(buf)
        .map_err(|e| FeedError::Read(format!("reading a clock record: {e}")))?;
    if !verify(h, buf) || weir_core::record::clock(buf).is_none() {
        return Err(FeedError::Read("a corrupt clock record".into()));
    }
    c.at.take(h, buf);
    Ok(())
}

fn read_header(r: &mut BufReader<File>) -> Result<super::segment::Header, FeedError> {
    let mut hb = [0u8; HEADER];
    r.read_exact(&mut hb)
        .map_err(|e| FeedError::Read(format!("reading a record header: {e}")))?;
    let h = header(&hb);
    if h.len > MAX_RECORD {
        return Err(FeedError::Read(format!(
            "record header claims {} bytes",
            h.len
        )));
    }
    Ok(h)
}

impl FeedReader for LogReader {
    fn read(&mut self, max: usize, out: &mut Vec<Event>) -> Result<u64, FeedError> {
        let closed = self.shared.closed.load(Ordering::Acquire);
        // The promise before the end: everything written before the promise was made is
        // below the end read after it.
        let promise = self.shared.promise.load(Ordering::Acquire);
        let end = self.shared.durable_end.load(Ordering::Acquire);
        // Loaded after the end: a failed write before the append that moved the end is
        // seen, and what the cursor buffered past its position may be that write's.
        let failed = self.shared.failed_writes.load(Ordering::Acquire);
        if self
            .cursor
            .as_ref()
            .is_some_and(|c| c.failed_writes != failed)
        {
            self.cursor = None;
        }
        let mut taken = 0;
        while taken < max && self.next < end {
            if self
                .cursor
                .as_ref()
                .is_none_or(|c| c.end.is_some_and(|e| c.at.next >= e))
            {
                self.cursor = None;
                self.open()?;
            }
            let Some(c) = self.cursor.as_mut() else { break };
            let h = match read_header(&mut c.file) {
                Ok(h) => h,
                Err(_) if c.end.is_none() && self.reopened_at != Some(self.next) => {
                    // This was the active segment when opened; the writer has rolled to a
                    // new one since. Look up where `next` lives now.
                    self.reopened_at = Some(self.next);
                    self.cursor = None;
                    continue;
                }
                Err(e) => {
                    // A corrupt length leaves no way to find the next record in this
                    // segment; continue with the next one.
                    let seg_end = c.end;
                    self.shared
                        .metrics
                        .corrupt_records
                        .fetch_add(1, Ordering::Relaxed);
                    self.warn(&format!(
                        "unreadable record ({e}); skipping to the next segment"
                    ));
                    self.next = seg_end.unwrap_or(end);
                    self.cursor = None;
                    continue;
                }
            };
            if h.hash == CLOCK_HASH {
                if let Err(e) = read_clock(c, &h, &mut self.payload) {
                    // Where the records after it sit is unknown: on to the next segment.
                    let seg_end = c.end;
                    self.shared
                        .metrics
                        .corrupt_records
                        .fetch_add(1, Ordering::Relaxed);
                    self.warn(&format!("{e}; skipping to the next segment"));
                    self.next = seg_end.unwrap_or(end);
                    self.cursor = None;
                    continue;
                }
                self.next = c.at.next;
                continue;
            }
            let offset = c.at.next;
            let mine =
                worker_of(partition_of(h.hash), self.workers) == self.worker && offset >= self.from;
            let mut problem = None;
            if mine {
                self.payload.resize(h.len, 0);
                c.file
                    .read_exact(&mut self.payload)
                    .map_err(|e| FeedError::Read(format!("reading a record: {e}")))?;
                let decoded = if verify(&h, &self.payload) {
                    codec::decode(&self.payload, offset, None).map_err(|e| e.to_string())
                } else {
                    Err("checksum mismatch".to_string())
                };
                match decoded {
                    Ok(e) => {
                        out.push(e);
                        taken += 1;
                    }
                    Err(why) => problem = Some(why),
                }
            } else {
                c.file
                    .seek_relative(h.len as i64)
                    .map_err(|e| FeedError::Read(e.to_string()))?;
            }
            c.at.skip();
            let after = c.at.next;
            if let Some(why) = problem {
                self.shared
                    .metrics
                    .corrupt_records
                    .fetch_add(1, Ordering::Relaxed);
                self.warn(&format!("corrupt record skipped: {why}"));
            }
            self.next = after;
        }
        self.finished = closed && self.next >= end;
        if self.next >= end {
            // Read to the durable end: nothing will be appended below the writer's promise.
            return Ok(self.next.max(promise));
        }
        Ok(self.next)
    }

    fn finished(&self) -> bool {
        self.finished
    }
}

/// Enqueued time sits at a fixed place in a record's payload: after four bytes of kinds.
fn payload_enqueued(payload: &[u8]) -> Option<i64> {
    let b: [u8; 8] = payload.get(4..12)?.try_into().ok()?;
    Some(i64::from_le_bytes(b))
}

/// The enqueued time of the first record at or after `offset`.
pub(crate) fn enqueued_at(shared: &Shared, offset: u64) -> Option<i64> {
    let end = shared.durable_end.load(Ordering::Acquire);
    if offset >= end {
        return None;
    }
    let segs: Vec<SegmentInfo> = shared.segments.read().ok()?.clone();
    let i = Shared::segment_for(&segs, offset)?;
    let s = &segs[i];
    let limit = segs.get(i + 1).map_or(end, |n| n.base);
    let mut r = BufReader::with_capacity(1 << 16, File::open(&s.path).ok()?);
    let mut at = Position::start(s.base);
    let mut payload = Vec::new();
    while at.next < limit {
        let h = read_header(&mut r).ok()?;
        if h.hash == CLOCK_HASH || at.next >= offset {
            payload.resize(h.len, 0);
            r.read_exact(&mut payload).ok()?;
            if at.take(&h, &payload).is_some() {
                return payload_enqueued(&payload);
            }
        } else {
            r.seek_relative(h.len as i64).ok()?;
            at.skip();
        }
    }
    None
}

/// The first offset whose enqueued time is at or after `ms`; the end of the log if none.
pub(crate) fn offset_at_time(shared: &Shared, ms: i64) -> u64 {
    let end = shared.durable_end.load(Ordering::Acquire);
    let segs: Vec<SegmentInfo> = match shared.segments.read() {
        Ok(s) => s.clone(),
        Err(_) => return end,
    };
    // Segments whose last write is before `ms` hold nothing at or after it.
    let Some(i) = segs.iter().position(|s| s.last_write_ms >= ms) else {
        return end;
    };
    let s = &segs[i];
    let Ok(f) = File::open(&s.path) else {
        return s.base;
    };
    let mut r = BufReader::with_capacity(1 << 20, f);
    let limit = segs.get(i + 1).map_or(end, |n| n.base);
    let mut at = Position::start(s.base);
    let mut payload = Vec::new();
    while at.next < limit {
        let Ok(h) = read_header(&mut r) else {
            return at.next;
        };
        payload.resize(h.len, 0);
        if r.read_exact(&mut payload).is_err() {
            return at.next;
        }
        let here = at.next;
        if at.take(&h, &payload).is_some() && payload_enqueued(&payload).is_some_and(|t| t >= ms) {
            return here;
        }
    }
    limit
}
