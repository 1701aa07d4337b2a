//! The provisioning service's state (`dps.redb`): its ID scope, individual enrollments,
//! enrollment groups and registration states, in IoT DPS's service-API shapes so the REST
//! layer stores what it is sent and returns what it stored. In a cluster every process
//! holds all of it ([`replica`]).

pub mod replica;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secret::random_hex;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const ENROLLMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrollments");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrollment_groups");
const REGISTRATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("registrations");

#[derive(Debug, thiserror::Error)]
pub enum DpsError {
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("the etag does not match the current etag {current}")]
    PreconditionFailed { current: String },
    #[error("{0} already exists; send If-Match with its etag (or *) to replace it")]
    Exists(String),
    #[error("provisioning storage error: {0}")]
    Storage(String),
}

fn storage<E: std::fmt::Display>(e: E) -> DpsError {
    DpsError::Storage(e.to_string())
}

/// IoT DPS's reprovision policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    /// Whether a registration follows the enrollment to another hub.
    pub update_hub_assignment: bool,
    /// When it does, whether the twin goes with it (else: reset to the initial twin).
    pub migrate_device_data: bool,
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        ReprovisionPolicy {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

fn hashed() -> String {
    "hashed".into()
}

fn enabled() -> String {
    "enabled".into()
}

/// One rule of a custom allocation (Weir's: IoT DPS calls out to an Azure Function).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomRule {
    pub condition: String,
    pub iot_hub_host_name: String,
}

/// An individual enrollment or an enrollment group, as the service API sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrollment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `{"type": "symmetricKey", "symmetricKey": {…}}` or `{"type": "x509", "x509": {…}}`.
    pub attestation: Value,
    /// The hub for the static policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<String>,
    /// The hubs it may be assigned to (all linked hubs when empty).
    #[serde(default)]
    pub iot_hubs: Vec<String>,
    #[serde(default = "hashed")]
    pub allocation_policy: String,
    /// For the `custom` policy: the first rule whose condition (routing query language
    /// over the registration) holds picks the hub.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_allocation: Vec<CustomRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<Value>,
    #[serde(default = "enabled")]
    pub provisioning_status: String,
    #[serde(default)]
    pub reprovision_policy: ReprovisionPolicy,
    #[serde(default)]
    pub etag: String,
    #[serde(default)]
    pub created_date_time_utc: String,
    #[serde(default)]
    pub last_updated_date_time_utc: String,
}

impl Enrollment {
    pub fn is_enabled(&self) -> bool {
        self.provisioning_status.eq_ignore_ascii_case("enabled")
    }
}

/// Where a registration ended up (IoT DPS's DeviceRegistrationState), plus which
/// enrollment it came through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub registration_id: String,
    pub created_date_time_utc: String,
    pub last_updated_date_time_utc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `assigned`, `failed` or `disabled`.
    pub status: String,
    pub substatus: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    pub etag: String,
    /// The individual enrollment (`None`) or group it registered through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
    pub operation_id: String,
}

/// Which of the two enrollment tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Individual,
    Group,
}

impl Kind {
    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Kind::Individual => ENROLLMENTS,
            Kind::Group => GROUPS,
        }
    }
}

/// `If-Match` (an etag, `*`, or absent) against the record's etag (`None`: no record).
fn check_etag(if_match: Option<&str>, current: Option<&str>) -> Result<(), DpsError> {
    let Some(want) = if_match.map(|s| s.trim().trim_matches('"')) else {
        return Ok(());
    };
    if want == "*" || current == Some(want) {
        return Ok(());
    }
    Err(DpsError::PreconditionFailed {
        current: current.unwrap_or_default().to_owned(),
    })
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn etag() -> Result<String, DpsError> {
    random_hex(8).map_err(storage)
}

pub struct DpsStore {
    db: Database,
    id_scope: String,
    /// Serialises read-modify-write (etag checks).
    writer: Mutex<()>,
    /// The next sequence number of the queue of changes for a cluster's other processes.
    next_pending: AtomicU64,
    /// Set in a cluster: every change is also queued, and this is called after each.
    wake: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl DpsStore {
    /// Opens (or creates) the store; an ID scope (`0ne` and 8 hex digits, as DPS's) is
    /// made at the first start and kept, unless `scope` names one (a cluster's processes
    /// share theirs), which replaces it.
    pub fn open(path: &Path, scope: Option<&str>) -> Result<DpsStore, DpsError> {
        crate::fsutil::private_db_file(path).map_err(storage)?;
        let db = Database::create(path).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        let id_scope = {
            let mut meta = txn.open_table(META).map_err(storage)?;
            txn.open_table(ENROLLMENTS).map_err(storage)?;
            txn.open_table(GROUPS).map_err(storage)?;
            txn.open_table(REGISTRATIONS).map_err(storage)?;
            txn.open_table(replica::VERSIONS).map_err(storage)?;
            txn.open_table(replica::PENDING).map_err(storage)?;
            let existing = meta
                .get("id_scope")
                .map_err(storage)?
                .map(|v| v.value().to_owned());
            match (scope, existing) {
                (Some(s), existing) => {
                    if existing.as_deref().is_some_and(|e| e != s) {
                        tracing::warn!(was = ?existing, now = s, "the provisioning service's ID scope changed: devices must use the new one");
                    }
                    meta.insert("id_scope", s).map_err(storage)?;
                    s.to_owned()
                }
                (None, Some(s)) => s,
                (None, None) => {
                    let s = format!("0ne{}", random_hex(4).map_err(storage)?.to_uppercase());
                    meta.insert("id_scope", s.as_str()).map_err(storage)?;
                    s
                }
            }
        };
        txn.commit().map_err(storage)?;
        let next_pending = replica::next_pending(&db)?;
        Ok(DpsStore {
            db,
            id_scope,
            writer: Mutex::new(()),
            next_pending: AtomicU64::new(next_pending),
            wake: OnceLock::new(),
        })
    }

    pub fn id_scope(&self) -> &str {
        &self.id_scope
    }

    fn read<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, DpsError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(table).map_err(storage)?;
        let Some(v) = t.get(key).map_err(storage)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value()).map(Some).map_err(storage)
    }

    fn all<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, DpsError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(table).map_err(storage)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(storage)? {
            let (_, v) = row.map_err(storage)?;
            match serde_json::from_slice(v.value()) {
                Ok(x) => out.push(x),
                Err(e) => tracing::error!(error = %e, "unreadable provisioning record skipped"),
            }
        }
        Ok(out)
    }

    /// Stores (or, with `None`, removes) one record, with the version the cluster orders
    /// its changes by, and queues the change for the other processes when replicating.
    fn write<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: Option<&T>,
    ) -> Result<(), DpsError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let record = value.map(serde_json::to_vec).transpose().map_err(storage)?;
        {
            let mut t = txn.open_table(table).map_err(storage)?;
            match &record {
                Some(bytes) => {
                    t.insert(key, bytes.as_slice()).map_err(storage)?;
                }
                None => {
                    t.remove(key).map_err(storage)?;
                }
            }
        }
        self.record_change(&txn, table, key, record)?;
        txn.commit().map_err(storage)?;
        self.queued();
        Ok(())
    }

    pub fn enrollment(&self, kind: Kind, id: &str) -> Result<Option<Enrollment>, DpsError> {
        self.read(kind.table(), id)
    }

    pub fn enrollments(&self, kind: Kind) -> Result<Vec<Enrollment>, DpsError> {
        self.all(kind.table())
    }

    /// Creates or replaces an enrollment; replacing needs `if_match` (an etag or `*`).
    /// Returns it as stored and whether it was created.
    pub fn put_enrollment(
        &self,
        kind: Kind,
        id: &str,
        mut e: Enrollment,
        if_match: Option<&str>,
    ) -> Result<(Enrollment, bool), DpsError> {
        let _w = self.writer.lock().map_err(storage)?;
        let existing = self.enrollment(kind, id)?;
        if existing.is_some() && if_match.is_none() {
            return Err(DpsError::Exists(id.to_owned()));
        }
        check_etag(if_match, existing.as_ref().map(|e| e.etag.as_str()))?;
        let now = now();
        e.created_date_time_utc = existing
            .as_ref()
            .map_or_else(|| now.clone(), |o| o.created_date_time_utc.clone());
        e.last_updated_date_time_utc = now;
        e.etag = etag()?;
        self.write(kind.table(), id, Some(&e))?;
        Ok((e, existing.is_none()))
    }

    pub fn delete_enrollment(
        &self,
        kind: Kind,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<Enrollment, DpsError> {
        let _w = self.writer.lock().map_err(storage)?;
        let existing = self
            .enrollment(kind, id)?
            .ok_or_else(|| DpsError::NotFound(id.to_owned()))?;
        check_etag(if_match, Some(&existing.etag))?;
        self.write::<Enrollment>(kind.table(), id, None)?;
        Ok(existing)
    }

    pub fn registration(&self, id: &str) -> Result<Option<Registration>, DpsError> {
        self.read(REGISTRATIONS, id)
    }

    pub fn registrations(&self) -> Result<Vec<Registration>, DpsError> {
        self.all(REGISTRATIONS)
    }

    /// Stores a registration's state with a fresh etag and update time.
    pub fn put_registration(&self, mut r: Registration) -> Result<Registration, DpsError> {
        r.etag = etag()?;
        r.last_updated_date_time_utc = now();
        self.write(REGISTRATIONS, &r.registration_id.clone(), Some(&r))?;
        Ok(r)
    }

    pub fn delete_registration(
        &self,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<Registration, DpsError> {
        let _w = self.writer.lock().map_err(storage)?;
        let existing = self
            .registration(id)?
            .ok_or_else(|| DpsError::NotFound(id.to_owned()))?;
        check_etag(if_match, Some(&existing.etag))?;
        self.write::<Registration>(REGISTRATIONS, id, None)?;
        Ok(existing)
    }

    /// A new registration's times.
    pub fn timestamp() -> String {
        now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrollment(id: &str) -> Enrollment {
        serde_json::from_value(serde_json::json!({
            "registrationId": id,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "a", "secondaryKey": "b"}},
        }))
        .expect("enrollment")
    }

    #[test]
    fn enrollments_keep_their_scope_etags_and_defaults_across_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("dps.redb");
        let store = DpsStore::open(&path, None).expect("open");
        let scope = store.id_scope().to_owned();
        assert!(scope.starts_with("0ne") && scope.len() == 11, "{scope}");
        let (e, created) = store
            .put_enrollment(Kind::Individual, "d1", enrollment("d1"), None)
            .expect("put");
        assert!(created && e.is_enabled());
        assert_eq!(e.allocation_policy, "hashed");
        assert!(e.reprovision_policy.update_hub_assignment);
        assert!(matches!(
            store.put_enrollment(Kind::Individual, "d1", enrollment("d1"), None),
            Err(DpsError::Exists(_))
        ));
        assert!(matches!(
            store.put_enrollment(Kind::Individual, "d1", enrollment("d1"), Some("stale")),
            Err(DpsError::PreconditionFailed { .. })
        ));
        let (again, created) = store
            .put_enrollment(Kind::Individual, "d1", enrollment("d1"), Some(&e.etag))
            .expect("replace");
        assert!(!created && again.created_date_time_utc == e.created_date_time_utc);
        assert!(store.enrollment(Kind::Group, "d1").expect("read").is_none());
        drop(store);
        let store = DpsStore::open(&path, None).expect("reopen");
        assert_eq!(store.id_scope(), scope);
        assert_eq!(store.enrollments(Kind::Individual).expect("list").len(), 1);
        store
            .delete_enrollment(Kind::Individual, "d1", Some("*"))
            .expect("delete");
        assert!(matches!(
            store.delete_enrollment(Kind::Individual, "d1", None),
            Err(DpsError::NotFound(_))
        ));
    }
}
