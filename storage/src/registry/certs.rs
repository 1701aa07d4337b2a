//! CA certificates registered with the hub (IoT Hub's `/certificates`): stored in the
//! registry's database, verified by proof of possession, and served from memory to the
//! gateways, which accept `certificateAuthority` devices whose certificates chain to a
//! verified one. Parsing and checking certificates is the caller's (`weir_gateways::x509`):
//! the registry stores what it was told.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use weir_core::{CaCertificate, key_digest};

use super::{Registry, RegistryError, etag_version, new_etag, now, storage};

pub(super) const CERTIFICATES: TableDefinition<&str, &[u8]> = TableDefinition::new("certificates");

/// What the caller read of a CA certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaInfo {
    pub subject: String,
    /// SHA-1 and SHA-256 thumbprints, upper-case hex.
    pub sha1: String,
    pub sha256: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// A registered CA certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub name: String,
    /// Base64 of the DER.
    pub certificate: String,
    pub subject: String,
    pub thumbprint: String,
    pub sha256: String,
    pub not_after: i64,
    pub verified: bool,
    pub verification_code: Option<String>,
    pub etag: String,
    pub created: String,
    pub updated: String,
}

impl CaRecord {
    pub fn der(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.certificate)
            .unwrap_or_default()
    }
}

fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The CA table's rows, read at start; unreadable ones are logged and left out.
pub(super) fn load(db: &Database) -> Result<HashMap<String, Arc<CaRecord>>, RegistryError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = txn.open_table(CERTIFICATES).map_err(storage)?;
    let mut out = HashMap::new();
    for row in table.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        match serde_json::from_slice::<CaRecord>(v.value()) {
            Ok(rec) => {
                out.insert(k.value().to_owned(), Arc::new(rec));
            }
            Err(e) => {
                tracing::error!(certificate = %k.value(), error = %e, "CA certificate record is unreadable; devices cannot chain to it until it is added again");
            }
        }
    }
    Ok(out)
}

/// The verified ones, as the gateways use them.
pub(super) fn verified(cas: &HashMap<String, Arc<CaRecord>>) -> Arc<[Arc<CaCertificate>]> {
    cas.values()
        .filter(|c| c.verified)
        .map(|c| {
            Arc::new(CaCertificate {
                name: c.name.clone(),
                der: Arc::from(c.der()),
                digest: key_digest(&c.sha256),
            })
        })
        .collect()
}

fn check_etag(existing: Option<&CaRecord>, if_match: Option<&str>) -> Result<(), RegistryError> {
    let Some(want) = if_match.map(|s| s.trim().trim_matches('"')) else {
        return Ok(());
    };
    match existing {
        _ if want == "*" => Ok(()),
        Some(rec) if rec.etag == want => Ok(()),
        other => Err(RegistryError::PreconditionFailed {
            current: other.map(|r| r.etag.clone()).unwrap_or_default(),
        }),
    }
}

impl Registry {
    pub fn ca(&self, name: &str) -> Option<Arc<CaRecord>> {
        self.cas.read().ok()?.get(name).cloned()
    }

    /// Every CA certificate, by name.
    pub fn cas(&self) -> Vec<Arc<CaRecord>> {
        let mut all: Vec<_> = self
            .cas
            .read()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Adds a CA certificate, or replaces one (conditionally on `if_match`): a replaced
    /// certificate must be verified again. Returns the record and whether it was created.
    pub fn put_ca(
        &self,
        name: &str,
        der: &[u8],
        info: CaInfo,
        if_match: Option<&str>,
    ) -> Result<(Arc<CaRecord>, bool), RegistryError> {
        if !valid_name(name) {
            return Err(RegistryError::InvalidCertificateName(name.to_owned()));
        }
        let _w = self.writer.lock().map_err(storage)?;
        let existing = self.ca(name);
        check_etag(existing.as_deref(), if_match)?;
        let now = now();
        let same = existing.as_ref().is_some_and(|e| e.sha256 == info.sha256);
        let rec = CaRecord {
            name: name.to_owned(),
            certificate: base64::engine::general_purpose::STANDARD.encode(der),
            subject: info.subject,
            thumbprint: info.sha1,
            sha256: info.sha256,
            not_after: info.not_after,
            verified: same && existing.as_ref().is_some_and(|e| e.verified),
            verification_code: existing
                .as_ref()
                .filter(|_| same)
                .and_then(|e| e.verification_code.clone()),
            etag: new_etag(existing.as_ref().map_or(0, |e| etag_version(&e.etag)) + 1),
            created: existing
                .as_ref()
                .map_or_else(|| now.clone(), |e| e.created.clone()),
            updated: now,
        };
        let created = existing.is_none();
        Ok((self.store_ca(rec)?, created))
    }

    /// Sets a new verification code (conditionally on `if_match`).
    pub fn set_verification_code(
        &self,
        name: &str,
        code: String,
        if_match: Option<&str>,
    ) -> Result<Arc<CaRecord>, RegistryError> {
        self.update_ca(name, if_match, |rec| {
            rec.verification_code = Some(code);
            Ok(())
        })
    }

    /// Marks the certificate verified and retires the code. The caller checked a proof
    /// of possession for the certificate with SHA-256 `sha256` and for `code`: both must
    /// still be the record's (neither was replaced meanwhile).
    pub fn mark_ca_verified(
        &self,
        name: &str,
        sha256: &str,
        code: &str,
        if_match: Option<&str>,
    ) -> Result<Arc<CaRecord>, RegistryError> {
        self.update_ca(name, if_match, |rec| {
            if rec.sha256 != sha256 || rec.verification_code.as_deref() != Some(code) {
                return Err(RegistryError::PreconditionFailed {
                    current: rec.etag.clone(),
                });
            }
            if rec.verification_code.take().is_none() {
                return Err(RegistryError::NoVerificationCode(rec.name.clone()));
            }
            rec.verified = true;
            Ok(())
        })
    }

    pub fn delete_ca(
        &self,
        name: &str,
        if_match: Option<&str>,
    ) -> Result<Arc<CaRecord>, RegistryError> {
        let _w = self.writer.lock().map_err(storage)?;
        let existing = self.existing_ca(name, if_match)?;
        let copy = self.ca_replica_event(&existing, true)?;
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(CERTIFICATES).map_err(storage)?;
            t.remove(name).map_err(storage)?;
            Self::bury_ca(&txn, &existing)?;
            if let Some(c) = copy {
                self.stage_events(&txn, &[c])?;
            }
        }
        txn.commit().map_err(storage)?;
        let mut cas = self.cas.write().map_err(storage)?;
        cas.remove(name);
        *self.verified.write().map_err(storage)? = verified(&cas);
        Ok(existing)
    }

    /// The CA certificate `name`, if `if_match` matches it. Callers hold `writer`.
    fn existing_ca(
        &self,
        name: &str,
        if_match: Option<&str>,
    ) -> Result<Arc<CaRecord>, RegistryError> {
        let existing = self
            .ca(name)
            .ok_or_else(|| RegistryError::CertificateNotFound(name.to_owned()))?;
        check_etag(Some(&existing), if_match)?;
        Ok(existing)
    }

    fn update_ca(
        &self,
        name: &str,
        if_match: Option<&str>,
        change: impl FnOnce(&mut CaRecord) -> Result<(), RegistryError>,
    ) -> Result<Arc<CaRecord>, RegistryError> {
        let _w = self.writer.lock().map_err(storage)?;
        let existing = self.existing_ca(name, if_match)?;
        let mut rec = (*existing).clone();
        change(&mut rec)?;
        rec.etag = new_etag(etag_version(&existing.etag) + 1);
        rec.updated = now();
        self.store_ca(rec)
    }

    /// Writes `rec`, then serves it. Callers hold `writer`.
    fn store_ca(&self, rec: CaRecord) -> Result<Arc<CaRecord>, RegistryError> {
        let bytes = serde_json::to_vec(&rec).map_err(storage)?;
        let copy = self.ca_replica_event(&rec, false)?;
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(CERTIFICATES).map_err(storage)?;
            t.insert(rec.name.as_str(), bytes.as_slice())
                .map_err(storage)?;
            if let Some(c) = copy {
                self.stage_events(&txn, &[c])?;
            }
        }
        txn.commit().map_err(storage)?;
        let rec = Arc::new(rec);
        let mut cas = self.cas.write().map_err(storage)?;
        cas.insert(rec.name.clone(), Arc::clone(&rec));
        *self.verified.write().map_err(storage)? = verified(&cas);
        Ok(rec)
    }
}

/// What tests say the caller read of a CA certificate with SHA-256 `sha`.
#[cfg(test)]
pub(super) fn test_info(sha: &str) -> CaInfo {
    CaInfo {
        subject: "CN=root".into(),
        sha1: "AB".repeat(20),
        sha256: sha.into(),
        not_after: 4_000_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::DeviceDirectory;

    fn info(sha: &str) -> CaInfo {
        test_info(sha)
    }

    #[test]
    fn a_ca_is_verified_once_its_code_is_proven_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("registry.redb");
        let reg = Registry::open(&path).expect("open");
        let (rec, created) = reg.put_ca("root", b"der", info("S1"), None).expect("put");
        assert!(created && !rec.verified);
        assert!(reg.verified_cas().is_empty(), "not verified yet");
        assert!(matches!(
            reg.mark_ca_verified("root", "S1", "C0DE", None),
            Err(RegistryError::PreconditionFailed { .. })
        ));
        let stale = rec.etag.clone();
        let rec = reg
            .set_verification_code("root", "C0DE".into(), Some(&rec.etag))
            .expect("code");
        assert!(matches!(
            reg.mark_ca_verified("root", "S1", "C0DE", Some(&stale)),
            Err(RegistryError::PreconditionFailed { .. })
        ));
        assert!(
            reg.mark_ca_verified("root", "S2", "C0DE", None).is_err(),
            "a proof for another certificate"
        );
        let rec = reg
            .mark_ca_verified("root", "S1", "C0DE", Some(&rec.etag))
            .expect("verified");
        assert!(rec.verified && rec.verification_code.is_none());
        assert_eq!(reg.verified_cas().len(), 1);
        drop(reg);
        let reg = Registry::open(&path).expect("reopen");
        assert_eq!(reg.verified_cas()[0].digest, key_digest("S1"));
        // The same certificate again stays verified; another one must be verified anew.
        let (same, _) = reg.put_ca("root", b"der", info("S1"), None).expect("same");
        assert!(same.verified);
        let (other, created) = reg
            .put_ca("root", b"der2", info("S2"), None)
            .expect("other");
        assert!(!other.verified && !created);
        assert!(reg.verified_cas().is_empty());
        reg.delete_ca("root", Some("*")).expect("delete");
        assert!(reg.ca("root").is_none());
        assert!(matches!(
            reg.put_ca("bad/name", b"der", info("S3"), None),
            Err(RegistryError::InvalidCertificateName(_))
        ));
    }
}
