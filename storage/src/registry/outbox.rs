//! The registry's outbox: hub events committed in the same transaction as the change that
//! caused them, kept until the ingest log has them. A crash between the two replays them
//! at the next start; each carries a unique message id, so the engine's duplicate window
//! drops a copy the log already had.

use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use weir_core::{Event, codec};

use super::{OUTBOX, Registry, RegistryError, storage};

/// The sequence number after the highest one in the outbox.
pub(super) fn next_sequence(db: &Database) -> Result<u64, RegistryError> {
    let txn = db.begin_read().map_err(storage)?;
    let t = txn.open_table(OUTBOX).map_err(storage)?;
    let last = t.last().map_err(storage)?;
    Ok(last.map_or(1, |(k, _)| k.value() + 1))
}

impl Registry {
    /// Adds `events` to the outbox inside `txn`.
    pub(super) fn stage_events(
        &self,
        txn: &WriteTransaction,
        events: &[Event],
    ) -> Result<(), RegistryError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut t = txn.open_table(OUTBOX).map_err(storage)?;
        let mut buf = Vec::new();
        for e in events {
            buf.clear();
            codec::encode(e, &mut buf);
            let seq = self
                .next_event
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.insert(seq, buf.as_slice()).map_err(storage)?;
        }
        Ok(())
    }

    /// Up to `max` events waiting for the log, oldest first, with their sequence numbers.
    /// An entry that does not decode is dropped with an error in the log.
    /// In a cluster with a provisioning service, its queued changes join the outbox first.
    pub fn outbox(&self, max: usize) -> Result<Vec<(u64, Event)>, RegistryError> {
        if let Err(e) = self.stage_provisioning() {
            tracing::error!(error = %e, "provisioning changes wait for the registry's outbox");
        }
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(OUTBOX).map_err(storage)?;
        let mut out = Vec::new();
        let mut broken = Vec::new();
        for row in t.iter().map_err(storage)?.take(max) {
            let (k, v) = row.map_err(storage)?;
            match codec::decode(v.value(), 0, None) {
                Ok(e) => out.push((k.value(), e)),
                Err(e) => {
                    tracing::error!(seq = k.value(), error = %e, "unreadable hub event in the registry outbox; dropped");
                    broken.push(k.value());
                }
            }
        }
        drop(t);
        drop(txn);
        if !broken.is_empty() {
            self.outbox_done(&broken)?;
        }
        Ok(out)
    }

    /// The log has these events: forget them.
    pub fn outbox_done(&self, seqs: &[u64]) -> Result<(), RegistryError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(OUTBOX).map_err(storage)?;
            for s in seqs {
                t.remove(*s).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DeviceUpsert, Registry};
    use bytes::Bytes;
    use weir_core::{DeviceId, Event};

    fn event(device: &str, body: &str) -> Event {
        Event::telemetry(
            DeviceId::parse(device).expect("id"),
            0,
            Bytes::from(body.to_owned()),
        )
    }

    #[test]
    fn events_are_committed_with_their_change_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("registry.redb");
        {
            let r = Registry::open(&path).expect("open");
            r.upsert(
                DeviceUpsert {
                    device_id: "d1".into(),
                    ..Default::default()
                },
                None,
                |c| vec![event(&c.new.device_id, "created")],
            )
            .expect("create");
            // A refused change commits no event.
            assert!(
                r.upsert(
                    DeviceUpsert {
                        device_id: "d1".into(),
                        ..Default::default()
                    },
                    Some("\"stale\""),
                    |c| vec![event(&c.new.device_id, "never")],
                )
                .is_err()
            );
            let (rec, ()) = r
                .update_twin(
                    "d1",
                    None,
                    |_, _| Ok(()),
                    |rec, _| vec![event(&rec.device_id, &format!("twin {}", rec.twin_version))],
                )
                .expect("twin");
            assert_eq!(rec.twin_version, 2);
            r.delete("d1", None, |rec| vec![event(&rec.device_id, "deleted")])
                .expect("delete");
            // The process dies before any of them reached the log.
        }
        let r = Registry::open(&path).expect("reopen");
        let pending = r.outbox(10).expect("outbox");
        let bodies: Vec<&[u8]> = pending.iter().map(|(_, e)| &e.body[..]).collect();
        assert_eq!(bodies, vec![&b"created"[..], b"twin 2", b"deleted"]);
        r.outbox_done(&[pending[0].0, pending[1].0]).expect("done");
        let (seq, _) = r.outbox(10).expect("outbox")[0].clone();
        assert_eq!(seq, pending[2].0);
        r.upsert(
            DeviceUpsert {
                device_id: "d2".into(),
                ..Default::default()
            },
            None,
            |c| vec![event(&c.new.device_id, "later")],
        )
        .expect("create");
        let seqs: Vec<u64> = r.outbox(10).expect("outbox").iter().map(|x| x.0).collect();
        assert!(
            seqs[1] > seqs[0],
            "sequence numbers keep increasing: {seqs:?}"
        );
    }
}
