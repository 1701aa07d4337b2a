//! What insights need across a restart.
//!
//! Insight state is not written anywhere: it is rebuilt by replaying the log, which is
//! exact because every worker takes its samples and clock ticks in log order (see
//! `operators/insights.rs`), so the same log gives the same state and the same results at
//! the same positions. Two numbers make that cheap and exactly once, the
//! [`Checkpoint`]: the **floor**, the lowest offset the state still needs (the log keeps
//! everything from there, and the replay starts there), and the **position**, below which
//! every result has been durably written. A replay writes no result computed below the
//! position, and none it finds already written after it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_core::{Checkpoint, Checkpoints, EventFeed, EventSource};

use crate::sinks::Floors;

/// The name insights' checkpoint is stored under.
pub(crate) const CHECKPOINT: &str = "insights";
/// How often a worker reports its progress, and the checkpoint is stored.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// Where a previous run left the insights.
pub(crate) struct Resume {
    /// Samples and ticks below this were done with before the restart.
    pub floor: u64,
    /// Results computed below this are in the log.
    pub position: u64,
    /// Digests of the results written after `position`, up to `scanned_to`.
    written: HashSet<u64>,
    scanned_to: u64,
    hasher: ahash::RandomState,
}

impl Resume {
    /// A first start: nothing to skip.
    pub(crate) fn fresh() -> Resume {
        Resume {
            floor: 0,
            position: 0,
            written: HashSet::new(),
            scanned_to: 0,
            hasher: ahash::RandomState::with_seeds(5, 6, 7, 8),
        }
    }

    /// Reads the results (and late letters) written from `checkpoint.position` to the end
    /// of the log: those a replay computes again must not be written twice. The position
    /// trails the end by about a second's processing, so this is a short read unless the
    /// engine was behind.
    pub(crate) fn scan(feed: &dyn EventFeed, checkpoint: Checkpoint) -> Resume {
        let mut r = Resume {
            floor: checkpoint.floor,
            position: checkpoint.position,
            scanned_to: checkpoint.position,
            ..Resume::fresh()
        };
        let mut reader = match feed.reader_from(0, 1, checkpoint.position) {
            Ok(reader) => reader,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read back insight results; results computed again after the restart may be written twice");
                return r;
            }
        };
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read(4096, &mut buf) {
                Ok(to) => r.scanned_to = r.scanned_to.max(to),
                Err(e) => {
                    tracing::warn!(error = %e, "reading back insight results failed; some may be written twice");
                    break;
                }
            }
            if buf.is_empty() {
                break;
            }
            for e in &buf {
                if e.source == EventSource::Insights
                    && let Some(id) = &e.system.message_id
                {
                    r.written.insert(r.hasher.hash_one(id));
                } else if let Some(id) = crate::deadletter::late_letter_id(e) {
                    r.written.insert(r.hasher.hash_one(&id));
                }
            }
        }
        tracing::info!(
            floor = r.floor,
            position = r.position,
            written = r.written.len(),
            "insights resume by replay"
        );
        r
    }

    /// True when the result `id`, computed at log offset `at`, is already in the log.
    pub(crate) fn written(&self, at: u64, id: &str) -> bool {
        at < self.position
            || (at < self.scanned_to && self.written.contains(&self.hasher.hash_one(id)))
    }
}

/// Every insight worker's checkpoint; their minimum is stored, and holds back the log.
pub(crate) struct Progress {
    workers: Mutex<Vec<Option<Checkpoint>>>,
    stored: Mutex<(Option<Checkpoint>, Option<Instant>)>,
    store: Option<Arc<dyn Checkpoints>>,
    floors: Arc<Floors>,
}

impl Progress {
    pub(crate) fn new(
        workers: usize,
        store: Option<Arc<dyn Checkpoints>>,
        floors: Arc<Floors>,
    ) -> Progress {
        Progress {
            workers: Mutex::new(vec![None; workers]),
            stored: Mutex::new((None, None)),
            store,
            floors,
        }
    }

    /// `worker` has come this far. Once every worker has reported, their minimum is stored
    /// (at most once per [`EVERY`] unless `now`) and then lets the log go below its floor.
    pub(crate) fn report(&self, worker: usize, c: Checkpoint, now: bool) {
        let Some(store) = &self.store else { return };
        let min = {
            let Ok(mut w) = self.workers.lock() else {
                return;
            };
            // Timely numbers workers process by process: modulo the thread count, the
            // index is this process's slot.
            let n = w.len().max(1);
            if let Some(slot) = w.get_mut(worker % n) {
                *slot = Some(c);
            }
            let all: Option<Vec<Checkpoint>> = w.iter().copied().collect();
            match all {
                Some(all) => Checkpoint {
                    floor: all.iter().map(|c| c.floor).min().unwrap_or(c.floor),
                    position: all.iter().map(|c| c.position).min().unwrap_or(c.position),
                },
                None => return,
            }
        };
        let Ok(mut stored) = self.stored.lock() else {
            return;
        };
        if stored.0 == Some(min) || (!now && stored.1.is_some_and(|t| t.elapsed() < EVERY)) {
            return;
        }
        match store.store(CHECKPOINT, min) {
            Ok(()) => {
                *stored = (Some(min), Some(Instant::now()));
                self.floors.set_insights(min.floor);
            }
            Err(e) => {
                stored.1 = Some(Instant::now());
                tracing::error!(error = %e, "cannot store the insights' checkpoint; the log is kept from the last one");
            }
        }
    }
}
