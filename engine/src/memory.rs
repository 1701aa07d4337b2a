//! An in-memory [`EventFeed`]: offsets assigned on push, one bounded queue per worker.
//! The hub reads from its durable log instead; this feed serves `weir rules test`, tests
//! and benchmarks.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use weir_core::feed::{device_hash, partition_of, worker_of};
use weir_core::{Event, EventFeed, FeedError, FeedReader};

struct State {
    next: u64,
    queues: Vec<VecDeque<Event>>,
    closed: bool,
    held: bool,
}

struct Inner {
    state: Mutex<State>,
    space: Condvar,
    capacity: usize,
    wakers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

/// Cloning shares the feed.
#[derive(Clone)]
pub struct MemoryFeed {
    inner: Arc<Inner>,
}

/// The feed was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the feed is closed")]
pub struct Closed;

impl MemoryFeed {
    /// A feed for `workers` workers, each queue holding at most `capacity` events.
    pub fn new(workers: usize, capacity: usize) -> MemoryFeed {
        MemoryFeed {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    next: 0,
                    queues: (0..workers.max(1)).map(|_| VecDeque::new()).collect(),
                    closed: false,
                    held: false,
                }),
                space: Condvar::new(),
                capacity: capacity.max(1),
                wakers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Appends events, assigning offsets in order; blocks while a target queue is full.
    pub fn push(&self, batch: Vec<Event>) -> Result<(), Closed> {
        let mut st = self.inner.state.lock().map_err(|_| Closed)?;
        for mut e in batch {
            let p = worker_of(
                partition_of(device_hash(e.device_id.as_str())),
                st.queues.len(),
            );
            while st.queues[p].len() >= self.inner.capacity && !st.closed {
                st = self.inner.space.wait(st).map_err(|_| Closed)?;
            }
            if st.closed {
                return Err(Closed);
            }
            e.offset = st.next;
            st.next += 1;
            st.queues[p].push_back(e);
        }
        drop(st);
        self.wake();
        Ok(())
    }

    /// Readers see nothing until [`MemoryFeed::release`]: a benchmark fills the queues
    /// first so that making events does not share the cores with the engine it measures.
    pub fn hold(&self) {
        if let Ok(mut st) = self.inner.state.lock() {
            st.held = true;
        }
    }

    /// Lets readers read what was pushed while held.
    pub fn release(&self) {
        if let Ok(mut st) = self.inner.state.lock() {
            st.held = false;
        }
        self.wake();
    }

    /// A guard that closes the feed when dropped. Timely joins an engine's workers when
    /// the engine is dropped, and they run until their feed closes: a caller that may
    /// unwind past its engine (a benchmark whose reporting panics on a closed stdout)
    /// holds one, declared after the engine, or the unwinding waits forever.
    pub fn close_on_drop(&self) -> CloseOnDrop {
        CloseOnDrop(self.clone())
    }

    /// No more events; workers finish once they have read what is queued.
    pub fn close(&self) {
        if let Ok(mut st) = self.inner.state.lock() {
            st.closed = true;
        }
        self.inner.space.notify_all();
        self.wake();
    }

    fn wake(&self) {
        if let Ok(w) = self.inner.wakers.lock() {
            w.iter().for_each(|f| f());
        }
    }
}

/// See [`MemoryFeed::close_on_drop`].
pub struct CloseOnDrop(MemoryFeed);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

struct Reader {
    inner: Arc<Inner>,
    worker: usize,
    finished: bool,
}

impl EventFeed for MemoryFeed {
    /// A queue keeps nothing once read: every reader starts at what is queued, whatever
    /// `from` says.
    fn reader(
        &self,
        worker: usize,
        workers: usize,
        _from: u64,
    ) -> Result<Box<dyn FeedReader>, FeedError> {
        let queues = self.inner.state.lock().map(|s| s.queues.len()).unwrap_or(0);
        if queues != workers {
            return Err(FeedError::Read(format!(
                "feed made for {queues} workers, engine has {workers}"
            )));
        }
        Ok(Box::new(Reader {
            inner: Arc::clone(&self.inner),
            worker,
            finished: false,
        }))
    }

    fn on_data(&self, wake: Box<dyn Fn() + Send + Sync>) {
        if let Ok(mut w) = self.inner.wakers.lock() {
            w.push(wake);
        }
    }
}

impl FeedReader for Reader {
    fn read(&mut self, max: usize, out: &mut Vec<Event>) -> Result<u64, FeedError> {
        let mut st = self
            .inner
            .state
            .lock()
            .map_err(|e| FeedError::Read(e.to_string()))?;
        let next = st.next;
        let held = st.held;
        let q = &mut st.queues[self.worker];
        let n = if held { 0 } else { q.len().min(max) };
        out.extend(q.drain(..n));
        let frontier = q.front().map_or(next, |e| e.offset);
        self.finished = st.closed && !held && st.queues[self.worker].is_empty();
        drop(st);
        if n > 0 {
            self.inner.space.notify_all();
        }
        Ok(frontier)
    }

    fn finished(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::DeviceId;

    fn event(device: &str) -> Event {
        Event::telemetry(
            DeviceId::parse(device).expect("valid id"),
            0,
            bytes::Bytes::new(),
        )
    }

    #[test]
    fn a_held_feed_reads_nothing_until_released() {
        let feed = MemoryFeed::new(1, 16);
        let mut reader = feed.reader(0, 1, 0).expect("one worker");
        feed.hold();
        feed.push(vec![event("a"), event("b")]).expect("open");
        feed.close();
        let mut out = Vec::new();
        assert_eq!(reader.read(10, &mut out).expect("read"), 0);
        assert!(out.is_empty() && !reader.finished());
        feed.release();
        assert_eq!(reader.read(10, &mut out).expect("read"), 2);
        assert_eq!(out.iter().map(|e| e.offset).collect::<Vec<_>>(), [0, 1]);
        assert!(reader.finished());
    }

    #[test]
    fn the_guard_closes_the_feed_when_dropped() {
        let feed = MemoryFeed::new(1, 16);
        let mut reader = feed.reader(0, 1, 0).expect("one worker");
        drop(feed.close_on_drop());
        reader.read(10, &mut Vec::new()).expect("read");
        assert!(reader.finished());
    }
}
