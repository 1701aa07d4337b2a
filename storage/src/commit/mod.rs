//! The commit store: how far each sink has made its data durable, per endpoint and per
//! virtual partition, in one redb file (`<data-dir>/commits.redb`).
//!
//! A sink's committed offset for (endpoint, partition) means: every delivery to that
//! endpoint of an event of that partition below the offset is durably written. Entries
//! exist only where an endpoint differs from its partition's **frontier** (the offset below
//! which the sink has seen every event of the partition and has nothing pending for the
//! endpoints without an entry). Keying by partition rather than by worker is what lets the
//! worker count change between runs: a worker takes its partitions' offsets with it.
//!
//! A sink may store **intents** with a commit, in the same transaction: what to finish if
//! the process dies right after (the Parquet sink records the renames that make committed
//! files visible). The store keeps them opaque; each sink interprets its own.

pub mod legacy;

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use weir_core::feed::PARTITIONS;

/// (sink, partition) → offset.
const FRONTIER: TableDefinition<(&str, u16), u64> = TableDefinition::new("frontier");
/// (sink, partition, endpoint) → offset.
const COMMITTED: TableDefinition<(&str, u16, &str), u64> = TableDefinition::new("committed");
/// (sink, sequence) → opaque bytes.
const INTENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("intents");
/// name → (floor, position): the engine's stateful operators ([`weir_core::Checkpoint`]).
const CHECKPOINTS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("checkpoints");

#[derive(Debug, thiserror::Error)]
#[error("commit store error: {0}")]
pub struct CommitError(String);

fn err<E: std::fmt::Display>(e: E) -> CommitError {
    CommitError(e.to_string())
}

/// What one sink kind had committed, over every partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Indexed by partition.
    pub frontier: Vec<u64>,
    /// Per endpoint, indexed by partition: its own offset where it has one.
    pub endpoints: BTreeMap<String, Vec<Option<u64>>>,
}

impl Default for Committed {
    fn default() -> Self {
        Committed {
            frontier: vec![0; usize::from(PARTITIONS)],
            endpoints: BTreeMap::new(),
        }
    }
}

impl Committed {
    /// The committed offset of `endpoint` for `partition`.
    pub fn committed(&self, endpoint: &str, partition: u16) -> u64 {
        let p = usize::from(partition);
        self.endpoints
            .get(endpoint)
            .and_then(|v| v[p])
            .unwrap_or(self.frontier[p])
    }

    /// The lowest committed offset of any endpoint in any partition.
    pub fn floor(&self) -> u64 {
        let own = self.endpoints.values().flatten().flatten().copied();
        self.frontier.iter().copied().chain(own).min().unwrap_or(0)
    }

    /// The lowest committed offset over `partitions` only.
    pub fn floor_of(&self, partitions: &[u16]) -> u64 {
        let at = |v: &[Option<u64>], p: u16| v.get(usize::from(p)).copied().flatten();
        partitions
            .iter()
            .flat_map(|&p| {
                let own = self.endpoints.values().filter_map(move |v| at(v, p));
                self.frontier
                    .get(usize::from(p))
                    .copied()
                    .into_iter()
                    .chain(own)
            })
            .min()
            .unwrap_or(0)
    }
}

/// One worker's complete state for its partitions, written atomically.
pub struct Update<'a> {
    pub sink: &'a str,
    pub partitions: &'a [u16],
    /// Per listed partition (same order).
    pub frontier: Vec<u64>,
    /// Endpoints with their own offsets, per listed partition. Every other endpoint's
    /// entries for these partitions are removed: they follow the frontier.
    pub endpoints: Vec<(&'a str, Vec<u64>)>,
    /// Intents to store with this commit.
    pub intents: Vec<Vec<u8>>,
    /// Intents that are done.
    pub done: Vec<u64>,
}

pub struct CommitStore {
    db: Database,
    next_intent: std::sync::atomic::AtomicU64,
}

impl CommitStore {
    pub fn open(path: &Path) -> Result<CommitStore, CommitError> {
        crate::fsutil::private_db_file(path).map_err(err)?;
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(FRONTIER).map_err(err)?;
        txn.open_table(COMMITTED).map_err(err)?;
        txn.open_table(CHECKPOINTS).map_err(err)?;
        let next = {
            let t = txn.open_table(INTENTS).map_err(err)?;
            let mut next = 1;
            for row in t.iter().map_err(err)? {
                let (k, _) = row.map_err(err)?;
                next = next.max(k.value().1 + 1);
            }
            next
        };
        txn.commit().map_err(err)?;
        Ok(CommitStore {
            db,
            next_intent: std::sync::atomic::AtomicU64::new(next),
        })
    }

    /// Everything `sink` has committed.
    pub fn snapshot(&self, sink: &str) -> Result<Committed, CommitError> {
        let txn = self.db.begin_read().map_err(err)?;
        let mut c = Committed::default();
        let f = txn.open_table(FRONTIER).map_err(err)?;
        for p in 0..PARTITIONS {
            if let Some(v) = f.get((sink, p)).map_err(err)? {
                c.frontier[usize::from(p)] = v.value();
            }
        }
        let t = txn.open_table(COMMITTED).map_err(err)?;
        for row in t
            .range((sink, 0u16, "")..=(sink, PARTITIONS, ""))
            .map_err(err)?
        {
            let (k, v) = row.map_err(err)?;
            let (_, p, endpoint) = k.value();
            if p >= PARTITIONS {
                continue;
            }
            c.endpoints
                .entry(endpoint.to_owned())
                .or_insert_with(|| vec![None; usize::from(PARTITIONS)])[usize::from(p)] =
                Some(v.value());
        }
        Ok(c)
    }

    /// Intents `sink` stored and has not marked done, oldest first.
    pub fn intents(&self, sink: &str) -> Result<Vec<(u64, Vec<u8>)>, CommitError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(INTENTS).map_err(err)?;
        let mut out = Vec::new();
        for row in t.range((sink, 0u64)..=(sink, u64::MAX)).map_err(err)? {
            let (k, v) = row.map_err(err)?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }

    /// Writes `u` in one durable transaction; returns the sequence numbers given to its
    /// intents.
    pub fn write(&self, u: &Update<'_>) -> Result<Vec<u64>, CommitError> {
        let txn = self.db.begin_write().map_err(err)?;
        let mut ids = Vec::new();
        {
            let mut f = txn.open_table(FRONTIER).map_err(err)?;
            let mut t = txn.open_table(COMMITTED).map_err(err)?;
            for (i, &p) in u.partitions.iter().enumerate() {
                if let Some(&v) = u.frontier.get(i) {
                    f.insert((u.sink, p), v).map_err(err)?;
                }
                let stale: Vec<String> = t
                    .range((u.sink, p, "")..(u.sink, p + 1, ""))
                    .map_err(err)?
                    .filter_map(|row| row.ok().map(|(k, _)| k.value().2.to_owned()))
                    .collect();
                for e in &stale {
                    t.remove((u.sink, p, e.as_str())).map_err(err)?;
                }
                for (endpoint, offsets) in &u.endpoints {
                    if let Some(&v) = offsets.get(i) {
                        t.insert((u.sink, p, *endpoint), v).map_err(err)?;
                    }
                }
            }
            let mut intents = txn.open_table(INTENTS).map_err(err)?;
            for seq in &u.done {
                intents.remove((u.sink, *seq)).map_err(err)?;
            }
            for bytes in &u.intents {
                let seq = self
                    .next_intent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                intents
                    .insert((u.sink, seq), bytes.as_slice())
                    .map_err(err)?;
                ids.push(seq);
            }
        }
        txn.commit().map_err(err)?;
        Ok(ids)
    }

    /// Marks intents done outside a commit.
    pub fn forget_intents(&self, sink: &str, done: &[u64]) -> Result<(), CommitError> {
        if done.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut intents = txn.open_table(INTENTS).map_err(err)?;
            for seq in done {
                intents.remove((sink, *seq)).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }
}

impl weir_core::Checkpoints for CommitStore {
    fn load(
        &self,
        name: &str,
    ) -> Result<Option<weir_core::Checkpoint>, weir_core::CheckpointError> {
        let fail = |e: String| weir_core::CheckpointError(e);
        let txn = self.db.begin_read().map_err(|e| fail(e.to_string()))?;
        let t = txn
            .open_table(CHECKPOINTS)
            .map_err(|e| fail(e.to_string()))?;
        Ok(t.get(name).map_err(|e| fail(e.to_string()))?.map(|v| {
            let (floor, position) = v.value();
            weir_core::Checkpoint { floor, position }
        }))
    }

    fn store(
        &self,
        name: &str,
        c: weir_core::Checkpoint,
    ) -> Result<(), weir_core::CheckpointError> {
        let fail = |e: String| weir_core::CheckpointError(e);
        let txn = self.db.begin_write().map_err(|e| fail(e.to_string()))?;
        {
            let mut t = txn
                .open_table(CHECKPOINTS)
                .map_err(|e| fail(e.to_string()))?;
            t.insert(name, (c.floor, c.position))
                .map_err(|e| fail(e.to_string()))?;
        }
        txn.commit().map_err(|e| fail(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_over_some_partitions_ignores_the_others() {
        let mut c = Committed::default();
        c.frontier.iter_mut().for_each(|f| *f = 100);
        c.frontier[3] = 0;
        let mut own = vec![None; usize::from(PARTITIONS)];
        own[5] = Some(40);
        c.endpoints.insert("e".into(), own);
        assert_eq!(c.floor(), 0);
        assert_eq!(c.floor_of(&[3, 5]), 0);
        assert_eq!(
            c.floor_of(&[4, 5, 6]),
            40,
            "an endpoint's own offset counts"
        );
        assert_eq!(c.floor_of(&[4, 6]), 100, "partition 3 is someone else's");
    }

    #[test]
    fn offsets_are_kept_per_partition_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("commits.redb");
        {
            let s = CommitStore::open(&path).expect("open");
            assert_eq!(s.snapshot("parquet").expect("snap").floor(), 0);
            // Worker 0 of 2 owns the even partitions.
            let parts: Vec<u16> = (0..PARTITIONS).step_by(2).collect();
            let n = parts.len();
            let ids = s
                .write(&Update {
                    sink: "parquet",
                    partitions: &parts,
                    frontier: vec![100; n],
                    endpoints: vec![("archive", vec![40; n])],
                    intents: vec![b"rename a".to_vec()],
                    done: vec![],
                })
                .expect("write");
            assert_eq!(ids.len(), 1);
            let odd: Vec<u16> = (1..PARTITIONS).step_by(2).collect();
            s.write(&Update {
                sink: "parquet",
                partitions: &odd,
                frontier: vec![90; n],
                endpoints: vec![],
                intents: vec![],
                done: vec![],
            })
            .expect("write");
            // The archive endpoint caught up in partition 0: its entry goes away.
            s.write(&Update {
                sink: "parquet",
                partitions: &parts,
                frontier: vec![120; n],
                endpoints: vec![],
                intents: vec![],
                done: ids,
            })
            .expect("write");
        }
        let s = CommitStore::open(&path).expect("reopen");
        let c = s.snapshot("parquet").expect("snap");
        assert_eq!(c.committed("archive", 0), 120);
        assert_eq!(c.committed("archive", 1), 90);
        assert_eq!(c.committed("other", 2), 120);
        assert_eq!(c.floor(), 90);
        assert!(s.intents("parquet").expect("intents").is_empty());
        assert_eq!(
            s.snapshot("amqp").expect("snap").floor(),
            0,
            "sinks are separate"
        );
    }

    #[test]
    fn checkpoints_survive_a_reopen_and_are_kept_by_name() {
        use weir_core::{Checkpoint, Checkpoints};
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("commits.redb");
        {
            let s = CommitStore::open(&path).expect("open");
            assert_eq!(s.load("insights").expect("load"), None);
            let c = Checkpoint {
                floor: 7,
                position: 575,
            };
            s.store("insights", c).expect("store");
            s.store(
                "other",
                Checkpoint {
                    floor: 1,
                    position: 2,
                },
            )
            .expect("store");
        }
        let s = CommitStore::open(&path).expect("reopen");
        assert_eq!(
            s.load("insights").expect("load"),
            Some(Checkpoint {
                floor: 7,
                position: 575
            })
        );
    }
}
