//! The registry of one process of a cluster, kept equal to the others' (decision 039).
//!
//! Every change (a device stored or deleted) is also staged as a `Registry` event holding
//! the device's whole record, which reaches the log with the change's other hub events.
//! The engine brings every process's such events to every process, and
//! [`Registry::apply_replicated`] stores a record only if it is newer than the one held:
//! later incarnation (a device deleted and created again), then more changes (the etag
//! and twin versions, each change moves one), then, for two changes made at once through
//! two processes, the greater serialized record. Every process therefore ends with the
//! same record whatever order, repeats or replays it sees. A deletion leaves a tombstone,
//! so a late copy of a change to the deleted device does not bring it back. CA
//! certificates travel the same way, each as its whole record, ordered by creation time
//! then etag.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use weir_core::{AuthMethod, DeviceDirectory, DeviceId, DeviceRecord, Event, EventSource};

use super::certs::{CERTIFICATES, CaRecord, verified};
use super::{DEVICES, Registry, RegistryError, SESSIONS, etag_version, storage};
use crate::dps::DpsStore;
use crate::dps::replica::DpsChange;

/// How far this process has applied the cluster's registry changes.
pub(super) const REPLICA: TableDefinition<&str, u64> = TableDefinition::new("replica");
/// Deleted devices: the creation time of the incarnation deleted last.
pub(super) const TOMBSTONES: TableDefinition<&str, &str> = TableDefinition::new("tombstones");
/// Deleted CA certificates, the same way.
pub(super) const CA_TOMBSTONES: TableDefinition<&str, &str> = TableDefinition::new("ca_tombstones");
const THROUGH: &str = "through";

/// Whether and as which process this registry writes its changes for the others.
#[derive(Default)]
pub(super) struct Replication {
    process: OnceLock<u32>,
    /// The provisioning service's store, replicated through this registry's events.
    provisioning: OnceLock<Arc<DpsStore>>,
}

/// What a `Registry` event carries: one device's record or one CA certificate's, after the
/// change or as deleted.
#[derive(Serialize, Deserialize)]
struct Replicated {
    /// The process that made the change.
    process: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<DeviceRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate: Option<CaRecord>,
    /// A change of the provisioning service's state, for its store (not the registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provisioning: Option<DpsChange>,
    deleted: bool,
}

/// What applying the cluster's registry changes changed here.
#[derive(Default)]
pub struct Applied {
    pub devices: Vec<Replaced>,
    /// CA certificates that were deleted or replaced by another certificate elsewhere,
    /// as they were here: connections that authenticated with them must go, as when that
    /// happens through this process's API.
    pub withdrawn_cas: Vec<Arc<CaRecord>>,
}

/// A device whose record a replicated change replaced: its record now (`None`: deleted)
/// and before.
pub struct Replaced {
    pub device_id: String,
    pub before: Option<Arc<DeviceRecord>>,
    pub now: Option<Arc<DeviceRecord>>,
}

/// Orders versions of one device: incarnation, changes, then the record itself.
fn stamp(rec: &DeviceRecord, deleted: bool) -> (String, u64, Vec<u8>) {
    let changes = etag_version(&rec.etag) + rec.twin_version + u64::from(deleted);
    let bytes = serde_json::to_vec(rec).unwrap_or_default();
    (rec.created_time.clone(), changes, bytes)
}

impl Registry {
    /// Makes this registry write every change for the other processes of a cluster, as
    /// process `process`. Set once, before the hub serves.
    pub fn replicate_as(&self, process: usize) {
        let _ = self
            .replica
            .process
            .set(u32::try_from(process).unwrap_or(u32::MAX));
    }

    /// The `Registry` event for a change of `device` (`None` when this registry does not
    /// replicate).
    pub(super) fn replica_event(
        &self,
        device: &DeviceRecord,
        deleted: bool,
    ) -> Result<Option<Event>, RegistryError> {
        self.replicated(&device.device_id, |process| Replicated {
            process,
            device: Some(device.clone()),
            certificate: None,
            provisioning: None,
            deleted,
        })
    }

    /// The `Registry` event for a change of the CA certificate `ca`.
    pub(super) fn ca_replica_event(
        &self,
        ca: &CaRecord,
        deleted: bool,
    ) -> Result<Option<Event>, RegistryError> {
        // Certificate names are valid device ids; the id only places the event in a
        // partition, and every process reads every `Registry` event.
        self.replicated(&ca.name, |process| Replicated {
            process,
            device: None,
            certificate: Some(ca.clone()),
            provisioning: None,
            deleted,
        })
    }

    /// Replicates the provisioning service's store `dps` with this registry's changes:
    /// what it queues leaves through this outbox, and what the cluster changed is applied
    /// to it. `wake` is called after each change `dps` queues (to wake the outbox's
    /// dispatcher). Set once, after [`Registry::replicate_as`].
    pub fn replicate_provisioning(&self, dps: Arc<DpsStore>, wake: Box<dyn Fn() + Send + Sync>) {
        dps.replicate(wake);
        let _ = self.replica.provisioning.set(dps);
    }

    /// Moves up to 256 changes the provisioning service queued for the other processes
    /// into the outbox (then the log): each is staged before it leaves the service's
    /// queue, so a crash in between sends it twice (applying it again changes nothing),
    /// never not at all. Returns how many moved.
    pub(super) fn stage_provisioning(&self) -> Result<usize, RegistryError> {
        let Some(dps) = self.replica.provisioning.get() else {
            return Ok(0);
        };
        let pending = dps.pending(256).map_err(storage)?;
        if pending.is_empty() {
            return Ok(0);
        }
        let mut events = Vec::with_capacity(pending.len());
        for (_, change) in &pending {
            // The id only places the event in a partition; every process reads them all.
            let id = if DeviceId::parse(&change.id).is_ok() {
                change.id.as_str()
            } else {
                "provisioning"
            };
            let copy = |process| Replicated {
                process,
                device: None,
                certificate: None,
                provisioning: Some(change.clone()),
                deleted: change.record.is_none(),
            };
            events.extend(self.replicated(id, copy)?);
        }
        {
            let _w = self.writer.lock().map_err(storage)?;
            let txn = self.db.begin_write().map_err(storage)?;
            self.stage_events(&txn, &events)?;
            txn.commit().map_err(storage)?;
        }
        let seqs: Vec<u64> = pending.iter().map(|(n, _)| *n).collect();
        dps.pending_done(&seqs).map_err(storage)?;
        Ok(seqs.len())
    }

    fn replicated(
        &self,
        id: &str,
        copy: impl FnOnce(u32) -> Replicated,
    ) -> Result<Option<Event>, RegistryError> {
        let Some(&process) = self.replica.process.get() else {
            return Ok(None);
        };
        let body = serde_json::to_vec(&copy(process)).map_err(storage)?;
        let mut e = Event::telemetry(DeviceId::parse(id)?, 0, body.into());
        e.source = EventSource::Registry;
        e.auth_method = AuthMethod::Internal;
        Ok(Some(e))
    }

    /// Every replicated change below this offset is applied.
    pub fn replica_through(&self) -> u64 {
        let read = || -> Result<u64, RegistryError> {
            let txn = self.db.begin_read().map_err(storage)?;
            let t = txn.open_table(REPLICA).map_err(storage)?;
            Ok(t.get(THROUGH).map_err(storage)?.map_or(0, |v| v.value()))
        };
        read().unwrap_or(0)
    }

    /// Applies `changes` (offsets and bodies of `Registry` events, all below `through`)
    /// and records `through`, in one transaction; changes below what was applied before
    /// (a replay) are skipped. Returns the devices whose record changed, for their
    /// connections to be checked. A body that cannot be read is skipped with an error in
    /// the log: it cannot become readable later.
    pub fn apply_replicated(
        &self,
        changes: &[(u64, &[u8])],
        through: u64,
    ) -> Result<Applied, RegistryError> {
        let _w = self.writer.lock().map_err(storage)?;
        let applied = self.replica_through();
        // This batch's records so far, by device or certificate name: later changes
        // compare with them.
        let mut held: HashMap<String, Option<Arc<DeviceRecord>>> = HashMap::new();
        let mut held_cas: HashMap<String, Option<Arc<CaRecord>>> = HashMap::new();
        let mut out = Applied::default();
        let mut provisioning: Vec<DpsChange> = Vec::new();
        let txn = self.db.begin_write().map_err(storage)?;
        for (offset, body) in changes.iter().filter(|(o, _)| *o >= applied) {
            let copy: Replicated = match serde_json::from_slice(body) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(offset, error = %e, "unreadable registry change from the cluster; skipped");
                    continue;
                }
            };
            if let Some(change) = copy.provisioning {
                provisioning.push(change);
                continue;
            }
            if let Some(ca) = &copy.certificate {
                let before = match held_cas.get(&ca.name) {
                    Some(r) => r.clone(),
                    None => self.ca(&ca.name),
                };
                if let Some(now) = apply_ca(&txn, ca, copy.deleted, before.as_deref())? {
                    if let Some(old) = before
                        .filter(|b| now.as_ref().is_none_or(|n| n.sha256 != b.sha256) && b.verified)
                    {
                        out.withdrawn_cas.push(old);
                    }
                    held_cas.insert(ca.name.clone(), now);
                }
                continue;
            }
            let Some(device) = &copy.device else {
                tracing::error!(
                    offset,
                    "registry change from the cluster names neither a device nor a certificate; skipped"
                );
                continue;
            };
            let id = device.device_id.clone();
            let before = match held.get(&id) {
                Some(r) => r.clone(),
                None => self.get(&id),
            };
            if !newer(&txn, device, copy.deleted, before.as_deref())? {
                continue;
            }
            let now = write(&txn, device, copy.deleted)?;
            held.insert(id.clone(), now.clone());
            out.devices.push(Replaced {
                device_id: id,
                before,
                now,
            });
        }
        // The provisioning service's changes go to its store (repeats change nothing)
        // before `through` is recorded: a crash between cannot skip them.
        if let Some(dps) = self.replica.provisioning.get()
            && !provisioning.is_empty()
        {
            dps.apply_replicated(&provisioning).map_err(storage)?;
        }
        txn.open_table(REPLICA)
            .map_err(storage)?
            .insert(THROUGH, through.max(applied))
            .map_err(storage)?;
        txn.commit().map_err(storage)?;
        let mut devices = self.devices.write().map_err(storage)?;
        for (id, rec) in held {
            match rec {
                Some(rec) => devices.insert(id, rec),
                None => devices.remove(&id),
            };
        }
        if !held_cas.is_empty() {
            let mut cas = self.cas.write().map_err(storage)?;
            for (name, rec) in held_cas {
                match rec {
                    Some(rec) => cas.insert(name, rec),
                    None => cas.remove(&name),
                };
            }
            *self.verified.write().map_err(storage)? = verified(&cas);
        }
        Ok(out)
    }

    /// Remembers inside `txn` that the CA certificate `rec` is deleted.
    pub(super) fn bury_ca(txn: &WriteTransaction, rec: &CaRecord) -> Result<(), RegistryError> {
        tombstone(txn, CA_TOMBSTONES, &rec.name, &rec.created)
    }

    /// Remembers inside `txn` that the incarnation of `rec` is deleted.
    pub(super) fn bury(txn: &WriteTransaction, rec: &DeviceRecord) -> Result<(), RegistryError> {
        tombstone(txn, TOMBSTONES, &rec.device_id, &rec.created_time)
    }
}

/// Records in `table` that the incarnation of `name` created at `created` is deleted.
fn tombstone(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &str>,
    name: &str,
    created: &str,
) -> Result<(), RegistryError> {
    txn.open_table(table)
        .map_err(storage)?
        .insert(name, created)
        .map_err(storage)?;
    Ok(())
}

/// Whether `rec` (deleted or not) is newer than `held`, the record this process has of
/// the device.
fn newer(
    txn: &WriteTransaction,
    rec: &DeviceRecord,
    deleted: bool,
    held: Option<&DeviceRecord>,
) -> Result<bool, RegistryError> {
    let tombs = txn.open_table(TOMBSTONES).map_err(storage)?;
    if let Some(t) = tombs.get(rec.device_id.as_str()).map_err(storage)?
        && t.value() >= rec.created_time.as_str()
    {
        return Ok(false);
    }
    Ok(match held {
        None => true,
        Some(h) => stamp(h, false) < stamp(rec, deleted),
    })
}

/// Stores one change inside `txn`; returns the device's record now.
fn write(
    txn: &WriteTransaction,
    rec: &DeviceRecord,
    deleted: bool,
) -> Result<Option<Arc<DeviceRecord>>, RegistryError> {
    let id = rec.device_id.as_str();
    let mut devices = txn.open_table(DEVICES).map_err(storage)?;
    if deleted {
        devices.remove(id).map_err(storage)?;
        txn.open_table(SESSIONS)
            .map_err(storage)?
            .remove(id)
            .map_err(storage)?;
        Registry::bury(txn, rec)?;
        return Ok(None);
    }
    let bytes = serde_json::to_vec(rec).map_err(storage)?;
    devices.insert(id, bytes.as_slice()).map_err(storage)?;
    Ok(Some(Arc::new(rec.clone())))
}

/// Stores one CA certificate change inside `txn` if it is newer than `held`, the record
/// this process has: `None` when it is not, else the certificate's record now (`None`
/// inside: deleted).
fn apply_ca(
    txn: &WriteTransaction,
    rec: &CaRecord,
    deleted: bool,
    held: Option<&CaRecord>,
) -> Result<Option<Option<Arc<CaRecord>>>, RegistryError> {
    let name = rec.name.as_str();
    {
        let tombs = txn.open_table(CA_TOMBSTONES).map_err(storage)?;
        if let Some(t) = tombs.get(name).map_err(storage)?
            && t.value() >= rec.created.as_str()
        {
            return Ok(None);
        }
    }
    let stamp = |r: &CaRecord, deleted: bool| {
        let bytes = serde_json::to_vec(r).unwrap_or_default();
        (
            r.created.clone(),
            etag_version(&r.etag) + u64::from(deleted),
            bytes,
        )
    };
    if held.is_some_and(|h| stamp(h, false) >= stamp(rec, deleted)) {
        return Ok(None);
    }
    let mut table = txn.open_table(CERTIFICATES).map_err(storage)?;
    if deleted {
        table.remove(name).map_err(storage)?;
        drop(table);
        Registry::bury_ca(txn, rec)?;
        return Ok(Some(None));
    }
    let bytes = serde_json::to_vec(rec).map_err(storage)?;
    table.insert(name, bytes.as_slice()).map_err(storage)?;
    Ok(Some(Some(Arc::new(rec.clone()))))
}

#[cfg(test)]
mod tests;
