//! Where the engine reads events from: the ingest log in a hub, a memory queue in tests.
//!
//! Every event has an offset, a position in one total order. Each engine worker reads
//! the events of its own partition (device hash modulo the number of workers) in offset
//! order; the offset doubles as the dataflow's timestamp.

use crate::event::Event;

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot read the event feed: {0}")]
    Read(String),
}

/// A source of events for the engine's workers.
pub trait EventFeed: Send + Sync {
    /// Opens the reader for `worker` of `workers`.
    fn reader(&self, worker: usize, workers: usize) -> Result<Box<dyn FeedReader>, FeedError>;

    /// Registers a callback the feed calls (from any thread) when new events may be readable.
    fn on_data(&self, wake: Box<dyn Fn() + Send + Sync>);

    /// A second reader for `worker`'s partition that starts at `from`, for replaying what a
    /// failed endpoint missed. Feeds that do not keep their events cannot.
    fn reader_from(
        &self,
        _worker: usize,
        _workers: usize,
        _from: u64,
    ) -> Result<Box<dyn FeedReader>, FeedError> {
        Err(FeedError::Read("this feed cannot replay events".into()))
    }

    /// The first offset enqueued at most `window` before the event at `offset`: where a
    /// replay starts so that repeats are recognised as they were the first time.
    fn offset_before(&self, offset: u64, _window: std::time::Duration) -> u64 {
        offset
    }
}

/// One worker's view of the feed.
pub trait FeedReader {
    /// Appends up to `max` events of this worker's partition to `out`, in offset order, and
    /// returns the offset below which the partition has been read completely: no event this
    /// reader returns later has a smaller offset.
    fn read(&mut self, max: usize, out: &mut Vec<Event>) -> Result<u64, FeedError>;

    /// True once the feed is closed and everything in it has been read.
    fn finished(&self) -> bool;
}

/// The partition an event belongs to.
pub fn partition(device_hash: u64, workers: usize) -> usize {
    (device_hash % workers.max(1) as u64) as usize
}

/// The stable hash of a device id that places it on a partition.
pub fn device_hash(id: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}
