//! The provisioning service's state kept equal across a cluster's processes (decision 043).
//!
//! A device may register through any process, and an operator may manage enrollments
//! through any process's API, so every process holds every enrollment and registration.
//! Each change (a record stored or removed) is written with a version: one more than the
//! key's last, and a random tag. In a cluster it is also queued in `PENDING`, in the same
//! transaction; the hub moves that queue into its registry's outbox, from where the change
//! reaches the log as a `Registry` event and every process (as registry changes do,
//! decision 039). [`DpsStore::apply_replicated`] applies a change only if its version is
//! greater than the key's: two changes made at once through two processes have the same
//! number and the tag decides, so every process ends with the same record whatever order
//! or repeats it sees. A removal keeps its version, so a late copy of an older change does
//! not bring the record back.

use redb::{Database, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{DpsError, DpsStore, ENROLLMENTS, GROUPS, REGISTRATIONS, storage};
use crate::secret::random_hex;

/// Every key's version (`table/id` → zero-padded number, `:`, tag), removed ones too.
pub(super) const VERSIONS: TableDefinition<&str, &str> = TableDefinition::new("versions");
/// Changes waiting to be handed to the hub for the other processes, by sequence number.
pub(super) const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("pending");

/// One change of the provisioning service's state, as the other processes receive it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpsChange {
    /// `enrollments`, `enrollment_groups` or `registrations`.
    pub table: String,
    pub id: String,
    /// The record now, as stored; `None`: removed.
    pub record: Option<Box<RawValue>>,
    pub version: String,
}

fn table(name: &str) -> Option<TableDefinition<'static, &'static str, &'static [u8]>> {
    [ENROLLMENTS, GROUPS, REGISTRATIONS]
        .into_iter()
        .find(|t| t.name() == name)
}

fn key(table: &str, id: &str) -> String {
    format!("{table}/{id}")
}

/// The sequence number after the highest one queued.
pub(super) fn next_pending(db: &Database) -> Result<u64, DpsError> {
    let txn = db.begin_write().map_err(storage)?;
    let last = txn
        .open_table(PENDING)
        .map_err(storage)?
        .last()
        .map_err(storage)?
        .map_or(0, |(k, _)| k.value() + 1);
    txn.abort().map_err(storage)?;
    Ok(last)
}

impl DpsStore {
    /// Queues every change from now on for the other processes of a cluster, calling
    /// `wake` after each. Set once, before the service serves.
    pub fn replicate(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let _ = self.wake.set(wake);
    }

    /// Tells the hub a change is queued.
    pub(super) fn queued(&self) {
        if let Some(w) = self.wake.get() {
            w();
        }
    }

    /// Records inside `txn` that `table`'s `id` is now `record`: its next version, and the
    /// change in the queue when replicating.
    pub(super) fn record_change(
        &self,
        txn: &WriteTransaction,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
        record: Option<Vec<u8>>,
    ) -> Result<(), DpsError> {
        let k = key(table.name(), id);
        let mut versions = txn.open_table(VERSIONS).map_err(storage)?;
        let number = versions
            .get(k.as_str())
            .map_err(storage)?
            .and_then(|v| v.value().split(':').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let version = format!("{:020}:{}", number + 1, random_hex(4).map_err(storage)?);
        versions
            .insert(k.as_str(), version.as_str())
            .map_err(storage)?;
        if self.wake.get().is_none() {
            return Ok(());
        }
        // The record's bytes are the JSON just serialized.
        let record = record
            .map(|bytes| String::from_utf8(bytes).map_err(storage))
            .transpose()?
            .map(RawValue::from_string)
            .transpose()
            .map_err(storage)?;
        let change = DpsChange {
            table: table.name().to_owned(),
            id: id.to_owned(),
            record,
            version,
        };
        let bytes = serde_json::to_vec(&change).map_err(storage)?;
        let seq = self
            .next_pending
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        txn.open_table(PENDING)
            .map_err(storage)?
            .insert(seq, bytes.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    /// Up to `max` changes queued for the other processes, oldest first, with their
    /// sequence numbers.
    pub fn pending(&self, max: usize) -> Result<Vec<(u64, DpsChange)>, DpsError> {
        let txn = redb::ReadableDatabase::begin_read(&self.db).map_err(storage)?;
        let t = txn.open_table(PENDING).map_err(storage)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(storage)?.take(max) {
            let (k, v) = row.map_err(storage)?;
            match serde_json::from_slice(v.value()) {
                Ok(c) => out.push((k.value(), c)),
                Err(e) => {
                    tracing::error!(seq = k.value(), error = %e, "unreadable queued provisioning change; it stays queued")
                }
            }
        }
        Ok(out)
    }

    /// Removes queued changes the hub has taken.
    pub fn pending_done(&self, seqs: &[u64]) -> Result<(), DpsError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(PENDING).map_err(storage)?;
            for s in seqs {
                t.remove(*s).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    /// Applies changes made through other processes (or this one, read back from the log)
    /// that are newer than what this store holds; returns how many changed something.
    pub fn apply_replicated(&self, changes: &[DpsChange]) -> Result<usize, DpsError> {
        let _w = self.writer.lock().map_err(storage)?;
        let txn = self.db.begin_write().map_err(storage)?;
        let mut applied = 0;
        {
            let mut versions = txn.open_table(VERSIONS).map_err(storage)?;
            for c in changes {
                let Some(t) = table(&c.table) else {
                    tracing::error!(table = %c.table, "provisioning change for an unknown table; skipped");
                    continue;
                };
                let k = key(&c.table, &c.id);
                let newer = versions
                    .get(k.as_str())
                    .map_err(storage)?
                    .is_none_or(|held| held.value() < c.version.as_str());
                if !newer {
                    continue;
                }
                let mut records = txn.open_table(t).map_err(storage)?;
                match &c.record {
                    Some(r) => {
                        records
                            .insert(c.id.as_str(), r.get().as_bytes())
                            .map_err(storage)?;
                    }
                    None => {
                        records.remove(c.id.as_str()).map_err(storage)?;
                    }
                }
                versions
                    .insert(k.as_str(), c.version.as_str())
                    .map_err(storage)?;
                applied += 1;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Kind, Registration};
    use super::*;

    fn store(scope: &str) -> (tempfile::TempDir, DpsStore) {
        let dir = tempfile::tempdir().expect("tmp");
        let s = DpsStore::open(&dir.path().join("dps.redb"), Some(scope)).expect("open");
        s.replicate(Box::new(|| {}));
        (dir, s)
    }

    fn enrollment(id: &str, hub: &str) -> super::super::Enrollment {
        serde_json::from_value(serde_json::json!({
            "registrationId": id,
            "iotHubHostName": hub,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "a", "secondaryKey": "b"}},
        }))
        .expect("enrollment")
    }

    /// What `s` queued since the last call, taken as the hub takes it.
    fn sent(s: &DpsStore) -> Vec<DpsChange> {
        let p = s.pending(100).expect("pending");
        let seqs: Vec<u64> = p.iter().map(|(n, _)| *n).collect();
        s.pending_done(&seqs).expect("done");
        p.into_iter().map(|(_, c)| c).collect()
    }

    #[test]
    fn two_processes_end_with_the_same_records_in_any_order() {
        let (_a_dir, a) = store("0ne0000AAAA");
        let (_b_dir, b) = store("0ne0000AAAA");
        assert_eq!(a.id_scope(), "0ne0000AAAA");
        let (e, _) = a
            .put_enrollment(Kind::Individual, "d1", enrollment("d1", "h1"), None)
            .expect("put");
        let from_a = sent(&a);
        assert_eq!(from_a.len(), 1);
        assert_eq!(b.apply_replicated(&from_a).expect("apply"), 1);
        let on_b = b.enrollment(Kind::Individual, "d1").expect("read");
        assert_eq!(on_b.as_ref().map(|e| &e.etag), Some(&e.etag));
        // Changed on both at once: both have version 2; the tag picks the same winner on each.
        a.put_enrollment(Kind::Individual, "d1", enrollment("d1", "ha"), Some("*"))
            .expect("a");
        b.put_enrollment(Kind::Individual, "d1", enrollment("d1", "hb"), Some("*"))
            .expect("b");
        let (from_a, from_b) = (sent(&a), sent(&b));
        a.apply_replicated(&from_b).expect("apply");
        b.apply_replicated(&from_a).expect("apply");
        let hub = |s: &DpsStore| {
            s.enrollment(Kind::Individual, "d1")
                .expect("read")
                .and_then(|e| e.iot_hub_host_name)
        };
        assert_eq!(hub(&a), hub(&b));
        // A removal wins over a late copy of the change before it.
        a.delete_enrollment(Kind::Individual, "d1", None)
            .expect("delete");
        let deleted = sent(&a);
        b.apply_replicated(&deleted).expect("apply");
        assert_eq!(b.apply_replicated(&from_a).expect("late copy"), 0);
        assert!(
            b.enrollment(Kind::Individual, "d1")
                .expect("read")
                .is_none()
        );
        // Registrations travel the same way; a repeat changes nothing.
        let r: Registration = serde_json::from_value(serde_json::json!({
            "registrationId": "d2", "createdDateTimeUtc": "", "lastUpdatedDateTimeUtc": "",
            "status": "assigned", "substatus": "initialAssignment", "etag": "",
            "operationId": "op",
        }))
        .expect("registration");
        b.put_registration(r).expect("register");
        let from_b = sent(&b);
        assert_eq!(a.apply_replicated(&from_b).expect("apply"), 1);
        assert_eq!(a.apply_replicated(&from_b).expect("repeat"), 0);
        assert!(a.registration("d2").expect("read").is_some());
        assert!(sent(&a).is_empty(), "applied changes are not sent on again");
    }

    #[test]
    fn a_single_process_queues_nothing_and_the_queue_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("dps.redb");
        let alone = DpsStore::open(&path, None).expect("open");
        alone
            .put_enrollment(Kind::Group, "g", enrollment("g", "h"), None)
            .expect("put");
        assert!(alone.pending(10).expect("pending").is_empty());
        alone.replicate(Box::new(|| {}));
        alone
            .put_enrollment(Kind::Group, "g", enrollment("g", "h2"), Some("*"))
            .expect("put");
        drop(alone);
        let again = DpsStore::open(&path, None).expect("reopen");
        let queued = again.pending(10).expect("pending");
        assert_eq!(queued.len(), 1, "a change not yet taken is still queued");
        assert!(queued[0].1.version.starts_with("00000000000000000002:"));
    }
}
