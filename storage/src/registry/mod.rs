//! The device registry: redb on disk, a read-mostly map in memory.
//!
//! Gateways look devices up on every CONNECT and the engine on events that enrich from
//! tags, so reads come from memory; every change is committed to redb before it is
//! visible. A change and the hub events it causes (lifecycle, twin change) are committed
//! in one transaction: the events wait in an outbox until the ingest log has them
//! (`outbox.rs`), so neither is lost.

mod certs;
mod outbox;
mod replica;

pub use certs::{CaInfo, CaRecord};
pub use replica::{Applied, Replaced};

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use weir_core::{
    CaCertificate, DeviceAuth, DeviceDirectory, DeviceRecord, DeviceStatus, Event,
    normalize_thumbprint,
};

use crate::secret::{generate_key, random_hex, valid_key};

const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// MQTT subscriptions of persistent sessions, by device: a JSON list of filters.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Device records that could not be read at start-up, kept byte for byte for repair.
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");
/// Hub events committed with the change that caused them, until the log has them.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// A registry change as the code that turns it into hub events sees it.
pub struct Change<'a> {
    /// The record before the change; `None` when it was created.
    pub old: Option<&'a DeviceRecord>,
    /// The record after the change (for a deletion, the deleted record).
    pub new: &'a DeviceRecord,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("device {0} does not exist")]
    NotFound(String),
    #[error("the etag does not match the device's current etag {current}")]
    PreconditionFailed { current: String },
    #[error("invalid device id: {0}")]
    InvalidId(#[from] weir_core::InvalidId),
    #[error("the body's deviceId {body} does not match the URL's {url}")]
    IdMismatch { url: String, body: String },
    #[error("{0} must be base64 of 16 to 64 bytes")]
    InvalidKey(&'static str),
    #[error("{0} must be a SHA-1 (40 hex digits) or SHA-256 (64 hex digits) thumbprint")]
    InvalidThumbprint(&'static str),
    #[error("a selfSigned device needs x509Thumbprint.primaryThumbprint")]
    NoThumbprint,
    #[error("certificate {0} does not exist")]
    CertificateNotFound(String),
    #[error("certificate name {0:?} must be 1 to 128 letters, digits, '-', '_' or '.'")]
    InvalidCertificateName(String),
    #[error("certificate {0} has no verification code: generate one first")]
    NoVerificationCode(String),
    #[error("tags must be a JSON object")]
    InvalidTags,
    #[error("parent {parent} of {device} must be an existing IoT Edge device other than {device}")]
    InvalidParent { device: String, parent: String },
    #[error("invalid twin: {0}")]
    Twin(#[from] weir_core::twin::TwinError),
    #[error("registry storage error: {0}")]
    Storage(String),
}

fn storage<E: std::fmt::Display>(e: E) -> RegistryError {
    RegistryError::Storage(e.to_string())
}

/// A create-or-update request (the writable part of IoT Hub's Device).
#[derive(Debug, Clone, Default)]
pub struct DeviceUpsert {
    pub device_id: String,
    pub status: Option<DeviceStatus>,
    pub status_reason: Option<String>,
    /// `None`: the device's current type (a new device: SAS, or self-signed when a
    /// thumbprint is given).
    pub auth_type: Option<AuthType>,
    pub primary_key: Option<String>,
    pub secondary_key: Option<String>,
    pub primary_thumbprint: Option<String>,
    pub secondary_thumbprint: Option<String>,
    /// The request named its thumbprints (IoT Hub's `x509Thumbprint` object): what it
    /// leaves out is removed, not kept (so a leaked certificate can be rotated out).
    pub thumbprints_given: bool,
    pub tags: Option<serde_json::Value>,
    /// `capabilities.iotEdge`; `None`: unchanged (a new device: false).
    pub iot_edge: Option<bool>,
    /// The parent edge device; `None`: unchanged, `Some(None)`: no parent.
    pub parent: Option<Option<String>>,
}

/// IoT Hub's `authentication.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    Sas,
    SelfSigned,
    CertificateAuthority,
}

impl AuthType {
    /// Reads IoT Hub's name for it (case-insensitively).
    pub fn parse(name: &str) -> Option<AuthType> {
        [
            ("sas", AuthType::Sas),
            ("selfSigned", AuthType::SelfSigned),
            ("certificateAuthority", AuthType::CertificateAuthority),
        ]
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, t)| t)
    }
}

/// A device record the registry could not read and set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub device_id: String,
    pub error: String,
}

pub struct Registry {
    db: Database,
    devices: RwLock<HashMap<String, Arc<DeviceRecord>>>,
    /// CA certificates by name, and the verified ones as gateways read them.
    cas: RwLock<HashMap<String, Arc<CaRecord>>>,
    verified: RwLock<Arc<[Arc<CaCertificate>]>>,
    quarantined: Vec<Quarantined>,
    /// Serialises read-modify-write so etag checks and version bumps are atomic.
    writer: Mutex<()>,
    /// The next outbox sequence number.
    next_event: std::sync::atomic::AtomicU64,
    /// In a cluster, how changes reach the other processes' registries.
    replica: replica::Replication,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl Registry {
    /// Opens (or creates) the registry at `path` and loads every device into memory. A
    /// record that cannot be read does not stop the hub: it is moved to a quarantine table
    /// (reported by [`Registry::quarantined`] and in the log) and the rest is served.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        crate::fsutil::private_db_file(path).map_err(storage)?;
        let db = Database::create(path).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(DEVICES).map_err(storage)?;
        txn.open_table(SESSIONS).map_err(storage)?;
        txn.open_table(QUARANTINE).map_err(storage)?;
        txn.open_table(OUTBOX).map_err(storage)?;
        txn.open_table(replica::REPLICA).map_err(storage)?;
        txn.open_table(replica::TOMBSTONES).map_err(storage)?;
        txn.open_table(certs::CERTIFICATES).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let cas = certs::load(&db)?;
        let next_event = outbox::next_sequence(&db)?;
        let mut devices = HashMap::new();
        let mut bad: Vec<(String, Vec<u8>, String)> = Vec::new();
        {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(DEVICES).map_err(storage)?;
            for row in table.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                match serde_json::from_slice::<DeviceRecord>(v.value()) {
                    Ok(rec) => {
                        devices.insert(k.value().to_owned(), Arc::new(rec));
                    }
                    Err(e) => bad.push((k.value().to_owned(), v.value().to_vec(), e.to_string())),
                }
            }
        }
        if !bad.is_empty() {
            let txn = db.begin_write().map_err(storage)?;
            {
                let mut devices_t = txn.open_table(DEVICES).map_err(storage)?;
                let mut q = txn.open_table(QUARANTINE).map_err(storage)?;
                for (id, bytes, _) in &bad {
                    q.insert(id.as_str(), bytes.as_slice()).map_err(storage)?;
                    devices_t.remove(id.as_str()).map_err(storage)?;
                }
            }
            txn.commit().map_err(storage)?;
        }
        let mut quarantined = Vec::new();
        {
            let txn = db.begin_read().map_err(storage)?;
            let q = txn.open_table(QUARANTINE).map_err(storage)?;
            for row in q.iter().map_err(storage)? {
                let (k, _) = row.map_err(storage)?;
                let id = k.value().to_owned();
                let error = bad.iter().find(|(b, _, _)| *b == id).map_or_else(
                    || "set aside at an earlier start".to_string(),
                    |(_, _, e)| e.clone(),
                );
                tracing::error!(
                    device = %id,
                    error = %error,
                    "device record is unreadable; it is quarantined (kept in the registry's quarantine table) and the device cannot connect until it is created again"
                );
                quarantined.push(Quarantined {
                    device_id: id,
                    error,
                });
            }
        }
        Ok(Registry {
            db,
            devices: RwLock::new(devices),
            verified: RwLock::new(certs::verified(&cas)),
            cas: RwLock::new(cas),
            quarantined,
            writer: Mutex::new(()),
            next_event: std::sync::atomic::AtomicU64::new(next_event),
            replica: replica::Replication::default(),
        })
    }

    /// Records set aside because they could not be read.
    pub fn quarantined(&self) -> &[Quarantined] {
        &self.quarantined
    }

    pub fn len(&self) -> usize {
        self.devices.read().map_or(0, |d| d.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Devices sorted by id, at most `top`.
    pub fn list(&self, top: Option<usize>) -> Vec<Arc<DeviceRecord>> {
        let mut all: Vec<Arc<DeviceRecord>> = self
            .devices
            .read()
            .map(|d| d.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        all.truncate(top.unwrap_or(usize::MAX));
        all
    }

    /// The devices whose parent is `edge`.
    pub fn children(&self, edge: &str) -> Vec<Arc<DeviceRecord>> {
        let mut all: Vec<Arc<DeviceRecord>> = self
            .devices
            .read()
            .map(|d| {
                d.values()
                    .filter(|r| r.parent.as_deref() == Some(edge))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        all.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        all
    }

    /// Creates the device or updates it. `if_match` (an etag, or `*`) makes the update
    /// conditional. Changed tags bump the twin version. `events` turns the change into hub
    /// events, committed with it. Returns the stored record and whether it was created.
    pub fn upsert(
        &self,
        req: DeviceUpsert,
        if_match: Option<&str>,
        events: impl FnOnce(Change<'_>) -> Vec<Event>,
    ) -> Result<(Arc<DeviceRecord>, bool), RegistryError> {
        weir_core::ids::validate(&req.device_id)?;
        for (name, k) in [
            ("primaryKey", &req.primary_key),
            ("secondaryKey", &req.secondary_key),
        ] {
            if k.as_deref().is_some_and(|k| !valid_key(k)) {
                return Err(RegistryError::InvalidKey(name));
            }
        }
        if req.tags.as_ref().is_some_and(|t| !t.is_object()) {
            return Err(RegistryError::InvalidTags);
        }
        if let Some(t) = &req.tags {
            weir_core::twin::check_depth(t, "tags")?;
        }
        let _w = self.writer.lock().map_err(storage)?;
        let existing = self.get(&req.device_id);
        check_etag(existing.as_deref(), if_match)?;
        let now = now();
        let created = existing.is_none();
        let auth = resolve_auth(&req, existing.as_deref().map(|r| &r.auth))?;
        if let Some(Some(parent)) = &req.parent {
            let ok = *parent != req.device_id && self.get(parent).is_some_and(|p| p.iot_edge);
            if !ok {
                return Err(RegistryError::InvalidParent {
                    device: req.device_id.clone(),
                    parent: parent.clone(),
                });
            }
        }
        let rec = match existing.clone() {
            None => DeviceRecord {
                device_id: req.device_id.clone(),
                generation_id: random_hex(8).map_err(storage)?,
                etag: new_etag(1),
                status: req.status.unwrap_or_default(),
                status_reason: req.status_reason,
                auth,
                iot_edge: req.iot_edge.unwrap_or(false),
                parent: req.parent.flatten(),
                tags: req.tags.unwrap_or_else(|| serde_json::json!({})),
                desired: weir_core::twin::Section::default(),
                reported: weir_core::twin::Section::default(),
                twin_version: 1,
                created_time: now.clone(),
                status_updated_time: now.clone(),
                last_updated_time: now,
            },
            Some(old) => {
                let mut rec = (*old).clone();
                if let Some(s) = req.status
                    && s != rec.status
                {
                    rec.status = s;
                    rec.status_updated_time = now.clone();
                }
                if req.status_reason.is_some() {
                    rec.status_reason = req.status_reason;
                }
                rec.auth = auth;
                if let Some(e) = req.iot_edge {
                    rec.iot_edge = e;
                }
                if let Some(p) = req.parent {
                    rec.parent = p;
                }
                if let Some(t) = req.tags
                    && t != rec.tags
                {
                    rec.tags = t;
                    rec.twin_version += 1;
                }
                rec.etag = new_etag(etag_version(&old.etag) + 1);
                rec.last_updated_time = now;
                rec
            }
        };
        let events = events(Change {
            old: existing.as_deref(),
            new: &rec,
        });
        Ok((self.store(rec, &events)?, created))
    }

    /// Deletes a device, conditionally on `if_match`, committing the hub events `events`
    /// makes of it in the same transaction.
    pub fn delete(
        &self,
        id: &str,
        if_match: Option<&str>,
        events: impl FnOnce(&DeviceRecord) -> Vec<Event>,
    ) -> Result<Arc<DeviceRecord>, RegistryError> {
        let _w = self.writer.lock().map_err(storage)?;
        let existing = self
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        check_etag(Some(&existing), if_match)?;
        let mut events = events(&existing);
        events.extend(self.replica_event(&existing, true)?);
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(DEVICES).map_err(storage)?;
            t.remove(id).map_err(storage)?;
            let mut s = txn.open_table(SESSIONS).map_err(storage)?;
            s.remove(id).map_err(storage)?;
            Self::bury(&txn, &existing)?;
            self.stage_events(&txn, &events)?;
        }
        txn.commit().map_err(storage)?;
        self.devices.write().map_err(storage)?.remove(id);
        Ok(existing)
    }

    /// Changes a device's twin under the registry's write lock: `change` edits a copy of
    /// the record; the twin version and etag move only if it succeeds. `if_match` is
    /// checked against the twin etag. `events` turns the result into hub events, committed
    /// with it.
    pub fn update_twin<T>(
        &self,
        id: &str,
        if_match: Option<&str>,
        change: impl FnOnce(&mut DeviceRecord, &str) -> Result<T, RegistryError>,
        events: impl FnOnce(&DeviceRecord, &T) -> Vec<Event>,
    ) -> Result<(Arc<DeviceRecord>, T), RegistryError> {
        let _w = self.writer.lock().map_err(storage)?;
        let existing = self
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        if let Some(want) = if_match.map(|s| s.trim().trim_matches('"'))
            && want != "*"
            && want != twin_etag(&existing)
        {
            return Err(RegistryError::PreconditionFailed {
                current: twin_etag(&existing),
            });
        }
        let mut rec = (*existing).clone();
        let out = change(&mut rec, &now())?;
        rec.twin_version += 1;
        let events = events(&rec, &out);
        Ok((self.store(rec, &events)?, out))
    }

    /// The filters a device's persistent session is subscribed to.
    pub fn subscriptions(&self, id: &str) -> Vec<String> {
        let read = || -> Result<Vec<String>, RegistryError> {
            let txn = self.db.begin_read().map_err(storage)?;
            let t = txn.open_table(SESSIONS).map_err(storage)?;
            Ok(match t.get(id).map_err(storage)? {
                Some(v) => serde_json::from_slice(v.value()).unwrap_or_default(),
                None => Vec::new(),
            })
        };
        read().unwrap_or_default()
    }

    pub fn set_subscriptions(&self, id: &str, filters: &[String]) -> Result<(), RegistryError> {
        // Every connect stores its session (a clean one stores "nothing"); a read is cheap,
        // a write transaction syncs the file, and in a reconnect storm almost every write
        // would store what is already there.
        if self.subscriptions(id) == filters {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(SESSIONS).map_err(storage)?;
            if filters.is_empty() {
                t.remove(id).map_err(storage)?;
            } else {
                let v = serde_json::to_vec(filters).map_err(storage)?;
                t.insert(id, v.as_slice()).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    /// Writes `rec` and its hub events to disk in one transaction, then makes the record
    /// the in-memory copy. Callers hold `writer`.
    fn store(
        &self,
        rec: DeviceRecord,
        events: &[Event],
    ) -> Result<Arc<DeviceRecord>, RegistryError> {
        let bytes = serde_json::to_vec(&rec).map_err(storage)?;
        let copy = self.replica_event(&rec, false)?;
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(DEVICES).map_err(storage)?;
            t.insert(rec.device_id.as_str(), bytes.as_slice())
                .map_err(storage)?;
            self.stage_events(&txn, events)?;
            if let Some(c) = copy {
                self.stage_events(&txn, &[c])?;
            }
        }
        txn.commit().map_err(storage)?;
        let rec = Arc::new(rec);
        self.devices
            .write()
            .map_err(storage)?
            .insert(rec.device_id.clone(), Arc::clone(&rec));
        Ok(rec)
    }
}

impl DeviceDirectory for Registry {
    fn get(&self, device_id: &str) -> Option<Arc<DeviceRecord>> {
        self.devices.read().ok()?.get(device_id).cloned()
    }

    fn verified_cas(&self) -> Arc<[Arc<CaCertificate>]> {
        self.verified
            .read()
            .map_or_else(|_| Arc::from(Vec::new()), |v| Arc::clone(&v))
    }

    fn tags_snapshot(&self) -> Option<Vec<(String, serde_json::Value)>> {
        let devices = self.devices.read().ok()?;
        Some(
            devices
                .values()
                .map(|r| (r.device_id.clone(), r.tags.clone()))
                .collect(),
        )
    }
}

/// The authentication a create or update leaves the device with: the requested type (or
/// the current one), with what the request gives and the rest kept or generated.
fn resolve_auth(req: &DeviceUpsert, old: Option<&DeviceAuth>) -> Result<DeviceAuth, RegistryError> {
    let thumbprint = |t: &Option<String>, name| {
        t.as_deref()
            .map(|t| normalize_thumbprint(t).ok_or(RegistryError::InvalidThumbprint(name)))
            .transpose()
    };
    let primary_thumbprint = thumbprint(&req.primary_thumbprint, "primaryThumbprint")?;
    let secondary_thumbprint = thumbprint(&req.secondary_thumbprint, "secondaryThumbprint")?;
    let kind = req.auth_type.unwrap_or(match old {
        _ if primary_thumbprint.is_some() => AuthType::SelfSigned,
        Some(DeviceAuth::SelfSigned { .. }) => AuthType::SelfSigned,
        Some(DeviceAuth::CertificateAuthority) => AuthType::CertificateAuthority,
        Some(DeviceAuth::Sas { .. }) | None => AuthType::Sas,
    });
    Ok(match kind {
        AuthType::Sas => {
            let (old_p, old_s) = match old {
                Some(DeviceAuth::Sas {
                    primary_key,
                    secondary_key,
                }) => (Some(primary_key), Some(secondary_key)),
                _ => (None, None),
            };
            let key = |given: &Option<String>, old: Option<&String>| {
                given
                    .clone()
                    .or_else(|| old.cloned())
                    .map_or_else(generate_key, Ok)
                    .map_err(storage)
            };
            DeviceAuth::Sas {
                primary_key: key(&req.primary_key, old_p)?,
                secondary_key: key(&req.secondary_key, old_s)?,
            }
        }
        AuthType::SelfSigned => {
            let (old_p, old_s) = match old {
                Some(DeviceAuth::SelfSigned {
                    primary_thumbprint,
                    secondary_thumbprint,
                }) => (
                    Some(primary_thumbprint.clone()),
                    secondary_thumbprint.clone(),
                ),
                _ => (None, None),
            };
            DeviceAuth::SelfSigned {
                primary_thumbprint: primary_thumbprint
                    .or(old_p)
                    .ok_or(RegistryError::NoThumbprint)?,
                secondary_thumbprint: if req.thumbprints_given {
                    secondary_thumbprint
                } else {
                    secondary_thumbprint.or(old_s)
                },
            }
        }
        AuthType::CertificateAuthority => DeviceAuth::CertificateAuthority,
    })
}

/// Etags are opaque to clients; Weir encodes a per-device version so they change on
/// every write and are stable across restarts.
fn new_etag(version: u64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(version.to_string())
}

/// The twin's etag, derived from its version (the device etag is separate).
pub fn twin_etag(rec: &DeviceRecord) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("twin-{}", rec.twin_version))
}

fn etag_version(etag: &str) -> u64 {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(etag)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn check_etag(
    existing: Option<&DeviceRecord>,
    if_match: Option<&str>,
) -> Result<(), RegistryError> {
    let Some(want) = if_match.map(|s| s.trim().trim_matches('"')) else {
        return Ok(());
    };
    match existing {
        _ if want == "*" => Ok(()),
        Some(rec) if rec.etag == want => Ok(()),
        Some(rec) => Err(RegistryError::PreconditionFailed {
            current: rec.etag.clone(),
        }),
        None => Err(RegistryError::PreconditionFailed {
            current: String::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_checks_etags() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("registry.redb");
        let etag;
        {
            let r = Registry::open(&path).expect("open");
            let (rec, created) = r
                .upsert(
                    DeviceUpsert {
                        device_id: "dev1".into(),
                        ..Default::default()
                    },
                    None,
                    |_| Vec::new(),
                )
                .expect("create");
            assert!(created);
            assert!(
                rec.sas_keys()
                    .is_some_and(|(p, s)| valid_key(p) && valid_key(s) && p != s)
            );
            etag = rec.etag.clone();
            let err = r
                .upsert(
                    DeviceUpsert {
                        device_id: "dev1".into(),
                        status: Some(DeviceStatus::Disabled),
                        ..Default::default()
                    },
                    Some("\"bogus\""),
                    |_| Vec::new(),
                )
                .expect_err("stale etag");
            assert!(matches!(err, RegistryError::PreconditionFailed { .. }));
            let (rec, created) = r
                .upsert(
                    DeviceUpsert {
                        device_id: "dev1".into(),
                        status: Some(DeviceStatus::Disabled),
                        ..Default::default()
                    },
                    Some(&format!("\"{etag}\"")),
                    |_| Vec::new(),
                )
                .expect("update");
            assert!(!created);
            assert_ne!(rec.etag, etag);
        }
        let r = Registry::open(&path).expect("reopen");
        let rec = r.get("dev1").expect("persisted");
        assert_eq!(rec.status, DeviceStatus::Disabled);
        assert!(r.delete("nope", None, |_| Vec::new()).is_err());
        r.delete("dev1", None, |_| Vec::new()).expect("delete");
        assert!(r.get("dev1").is_none());
        drop(r);
        assert!(Registry::open(&path).expect("reopen").is_empty());
    }

    #[test]
    fn an_unreadable_record_is_quarantined_and_the_rest_served() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("registry.redb");
        {
            let r = Registry::open(&path).expect("open");
            for id in ["good", "bad"] {
                r.upsert(
                    DeviceUpsert {
                        device_id: id.into(),
                        ..Default::default()
                    },
                    None,
                    |_| Vec::new(),
                )
                .expect("create");
            }
        }
        {
            // What a record nested past serde_json's recursion limit looks like on disk.
            let db = Database::create(&path).expect("db");
            let txn = db.begin_write().expect("txn");
            {
                let mut t = txn.open_table(DEVICES).expect("table");
                let deep = format!(
                    "{{\"device_id\": \"bad\", \"tags\": {}1{}}}",
                    "{\"a\": ".repeat(200),
                    "}".repeat(200)
                );
                t.insert("bad", deep.as_bytes()).expect("insert");
            }
            txn.commit().expect("commit");
        }
        let r = Registry::open(&path).expect("a corrupt record does not stop the registry");
        assert!(r.get("good").is_some() && r.get("bad").is_none());
        assert_eq!(r.quarantined().len(), 1);
        assert_eq!(r.quarantined()[0].device_id, "bad");
        assert!(r.quarantined()[0].error.contains("recursion limit"));
        drop(r);
        let r = Registry::open(&path).expect("reopen");
        assert_eq!(r.len(), 1);
        assert_eq!(r.quarantined().len(), 1, "still reported after a restart");
        r.upsert(
            DeviceUpsert {
                device_id: "bad".into(),
                ..Default::default()
            },
            None,
            |_| Vec::new(),
        )
        .expect("the id can be created again");
    }
}
