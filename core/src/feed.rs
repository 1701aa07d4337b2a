//! Where the engine reads events from: the ingest log in a hub, a memory queue in tests.
//!
//! Every event has an offset, a position in one total order. Devices are spread over a
//! fixed number of **virtual partitions** by a stable hash of their id; each engine worker
//! owns some partitions (`partition % workers`) and reads their events in offset order.
//! The offset doubles as the dataflow's timestamp. Because partitions, not workers, are
//! what the log and the commit store record, the worker count may change between runs.

use std::time::Duration;

use crate::event::Event;

/// How many virtual partitions devices are spread over. Part of the on-disk format: the
/// commit store records offsets per partition.
pub const PARTITIONS: u16 = 64;

/// The seed of the device hash. Part of the on-disk format: log records carry the hash.
const SEED: u64 = 0x5745_4952_5041_5254; // "WEIRPART"

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot read the event feed: {0}")]
    Read(String),
}

/// A source of events for the engine's workers.
pub trait EventFeed: Send + Sync {
    /// Opens the reader for `worker` of `workers`, starting at offset `from`.
    fn reader(
        &self,
        worker: usize,
        workers: usize,
        from: u64,
    ) -> Result<Box<dyn FeedReader>, FeedError>;

    /// Registers a callback the feed calls (from any thread) when new events may be readable.
    fn on_data(&self, wake: Box<dyn Fn() + Send + Sync>);

    /// A second reader for `worker`'s partitions that starts at `from`, for replaying what
    /// a failed endpoint missed. Feeds that do not keep their events cannot.
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
    fn offset_before(&self, offset: u64, _window: Duration) -> u64 {
        offset
    }

    /// Every sink has durably committed everything below `offset`: the feed may let go of
    /// it (a log deletes segments; a queue has nothing to do).
    fn release(&self, _offset: u64) {}
}

/// One worker's view of the feed.
pub trait FeedReader {
    /// Appends up to `max` events of this worker's partitions to `out`, in offset order,
    /// and returns the offset below which they have been read completely: no event this
    /// reader returns later has a smaller offset.
    fn read(&mut self, max: usize, out: &mut Vec<Event>) -> Result<u64, FeedError>;

    /// True once the feed is closed and everything in it has been read.
    fn finished(&self) -> bool;
}

/// The stable hash of a device id: xxh3 with a fixed seed, so it is the same on every
/// machine and in every Rust release (it is written to disk).
pub fn device_hash(id: &str) -> u64 {
    twox_hash::XxHash3_64::oneshot_with_seed(SEED, id.as_bytes())
}

/// The virtual partition a device hash belongs to.
pub fn partition_of(device_hash: u64) -> u16 {
    (device_hash % u64::from(PARTITIONS)) as u16
}

/// The worker, of `workers`, that owns `partition`.
pub fn worker_of(partition: u16, workers: usize) -> usize {
    usize::from(partition) % workers.max(1)
}

/// The partitions `worker` of `workers` owns, ascending.
pub fn partitions_of(worker: usize, workers: usize) -> Vec<u16> {
    (0..PARTITIONS)
        .filter(|p| worker_of(*p, workers) == worker)
        .collect()
}

/// The partitions the workers of process `process` own, in a cluster of `processes` that
/// run `workers` each: timely numbers workers process by process.
pub fn partitions_of_process(process: usize, processes: usize, workers: usize) -> Vec<u16> {
    let workers = workers.max(1);
    (0..PARTITIONS)
        .filter(|p| worker_of(*p, processes.max(1) * workers) / workers == process)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable_and_partitions_cover_every_worker_count() {
        // Written to disk: these values may never change.
        assert_eq!(device_hash("dev1"), 0x4479_33db_62c8_81bf);
        assert_eq!(partition_of(device_hash("dev1")), 63);
        for workers in 1..=8 {
            let mut all: Vec<u16> = (0..workers)
                .flat_map(|w| partitions_of(w, workers))
                .collect();
            all.sort_unstable();
            assert_eq!(
                all,
                (0..PARTITIONS).collect::<Vec<_>>(),
                "{workers} workers"
            );
        }
        assert_eq!(worker_of(63, 4), 3);
    }
}
