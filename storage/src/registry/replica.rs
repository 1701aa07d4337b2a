//! The registry of one process of a cluster, kept equal to the others' (decision 039).
//!
//! Every change (a device stored or deleted) is also staged as a `Registry` event holding
//! the device's whole record, which reaches the log with the change's other hub events.
//! The engine brings every process's such events to every process in offset order, and
//! [`Registry::apply_replicated`] stores them. Applying whole records in one order makes
//! every process end with the same record; the one exception is a process's own change,
//! which it stored before its offset was known. While a process has own changes of a
//! device on their way through the log, it keeps its record and skips others' changes of
//! that device: those have lower offsets than the own change still to come, which wins
//! everywhere else too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use redb::{ReadableDatabase, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use weir_core::{AuthMethod, DeviceDirectory, DeviceId, DeviceRecord, Event, EventSource};

use super::{DEVICES, Registry, RegistryError, SESSIONS, storage};

/// How far this process has applied the cluster's registry changes.
pub(super) const REPLICA: TableDefinition<&str, u64> = TableDefinition::new("replica");
const THROUGH: &str = "through";

/// Whether and as which process this registry writes its changes for the others.
#[derive(Default)]
pub(super) struct Replication {
    process: OnceLock<u32>,
    /// Own changes per device not yet seen back through the log.
    pending: Mutex<HashMap<String, u32>>,
}

/// What a `Registry` event carries.
#[derive(Serialize, Deserialize)]
struct Replicated {
    /// The process that made the change.
    process: u32,
    #[serde(rename = "deviceId")]
    device_id: String,
    /// The record after the change; `None`: deleted.
    device: Option<DeviceRecord>,
}

/// A device whose record a replicated change replaced: its record now (`None`: deleted)
/// and before.
pub struct Replaced {
    pub device_id: String,
    pub before: Option<Arc<DeviceRecord>>,
    pub now: Option<Arc<DeviceRecord>>,
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

    /// The `Registry` event for a change of `device_id` (`None` when this registry does not
    /// replicate); [`Registry::replica_sent`] once it is committed.
    pub(super) fn replica_event(
        &self,
        device_id: &str,
        device: Option<&DeviceRecord>,
    ) -> Result<Option<Event>, RegistryError> {
        let Some(&process) = self.replica.process.get() else {
            return Ok(None);
        };
        let copy = Replicated {
            process,
            device_id: device_id.to_owned(),
            device: device.cloned(),
        };
        let body = serde_json::to_vec(&copy).map_err(storage)?;
        let mut e = Event::telemetry(DeviceId::parse(device_id)?, 0, body.into());
        e.source = EventSource::Registry;
        e.auth_method = AuthMethod::Internal;
        Ok(Some(e))
    }

    /// Counts a committed own change of `device_id` as on its way through the log.
    pub(super) fn replica_sent(&self, device_id: &str) {
        if self.replica.process.get().is_none() {
            return;
        }
        if let Ok(mut p) = self.replica.pending.lock() {
            *p.entry(device_id.to_owned()).or_default() += 1;
        }
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

    /// Applies `changes` (bodies of `Registry` events in offset order, all below
    /// `through`) and records `through`, in one transaction. Returns the devices whose
    /// record changed, for their connections to be checked. A body that cannot be read is
    /// skipped with an error in the log: it cannot become readable later.
    pub fn apply_replicated(
        &self,
        changes: &[&[u8]],
        through: u64,
    ) -> Result<Vec<Replaced>, RegistryError> {
        let _w = self.writer.lock().map_err(storage)?;
        let mine = self.replica.process.get().copied();
        let mut replaced = Vec::new();
        let txn = self.db.begin_write().map_err(storage)?;
        for body in changes {
            let copy: Replicated = match serde_json::from_slice(body) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "unreadable registry change from the cluster; skipped");
                    continue;
                }
            };
            if !self.takes(&copy, mine) {
                continue;
            }
            let before = self.get(&copy.device_id);
            if before.as_deref() == copy.device.as_ref() {
                continue;
            }
            write(&txn, &copy)?;
            replaced.push(Replaced {
                device_id: copy.device_id,
                before,
                now: copy.device.map(Arc::new),
            });
        }
        txn.open_table(REPLICA)
            .map_err(storage)?
            .insert(THROUGH, through)
            .map_err(storage)?;
        txn.commit().map_err(storage)?;
        let mut devices = self.devices.write().map_err(storage)?;
        for r in &replaced {
            match &r.now {
                Some(rec) => devices.insert(r.device_id.clone(), Arc::clone(rec)),
                None => devices.remove(&r.device_id),
            };
        }
        Ok(replaced)
    }

    /// Whether a change is applied: not while own changes of the device are on their way
    /// (they come later and win); an own change once it is the last of those.
    fn takes(&self, copy: &Replicated, mine: Option<u32>) -> bool {
        let Ok(mut pending) = self.replica.pending.lock() else {
            return true;
        };
        let own = mine == Some(copy.process);
        match pending.get_mut(&copy.device_id) {
            Some(n) if own => {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    pending.remove(&copy.device_id);
                    return true;
                }
                false
            }
            Some(_) => false,
            None => true,
        }
    }
}

/// Stores one change inside `txn`.
fn write(txn: &WriteTransaction, copy: &Replicated) -> Result<(), RegistryError> {
    let mut devices = txn.open_table(DEVICES).map_err(storage)?;
    match &copy.device {
        Some(rec) => {
            let bytes = serde_json::to_vec(rec).map_err(storage)?;
            devices
                .insert(copy.device_id.as_str(), bytes.as_slice())
                .map_err(storage)?;
        }
        None => {
            devices.remove(copy.device_id.as_str()).map_err(storage)?;
            let mut sessions = txn.open_table(SESSIONS).map_err(storage)?;
            sessions.remove(copy.device_id.as_str()).map_err(storage)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
