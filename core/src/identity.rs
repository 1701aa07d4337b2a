//! Who a connection authenticated as, with what, and what revokes it.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::device::{DeviceAuth, DeviceRecord, DeviceStatus};
use crate::event::AuthMethod;
use crate::ids::DeviceId;

/// What a connection proved its identity with, so a change in the registry can tell
/// whether it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A SAS token signed with the key that has this digest ([`key_digest`]).
    SasKey(u64),
    /// A self-signed certificate with the registered thumbprint that has this digest.
    X509Thumbprint(u64),
    /// A certificate chained to the CA certificate with this digest
    /// ([`crate::device::CaCertificate::digest`]).
    X509Ca(u64),
    /// A `[[translate]]` entry's password: held while the device is enabled.
    Password,
}

/// A short digest of a key: connections remember which key signed their token without
/// keeping the key itself.
pub fn key_digest(key: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(key.as_bytes());
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Where a connection comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The gateway protocol, as metrics label it: `mqtt`, `mqtt-ws`, `mqtt-quic`.
    pub protocol: &'static str,
    /// The TLS client certificate chain (DER, the device's own first), when the client
    /// presented one.
    pub client_certs: Option<Arc<[Vec<u8>]>>,
}

/// What a connection authenticated as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// A device of this hub.
    #[default]
    Device,
    /// A device registering with the provisioning service (`device_id` is its
    /// registration id): it may only register, and is no hub connection.
    Registration,
    /// A plain MQTT client mapped onto a device by `[[translate]]` entry number `n`: it
    /// publishes on that entry's topics only.
    Translated(u16),
}

/// An authenticated device connection.
#[derive(Debug, Clone)]
pub struct Identity {
    pub role: Role,
    pub device_id: DeviceId,
    pub generation_id: Arc<str>,
    pub auth: AuthMethod,
    pub credential: Credential,
    /// When the credential stops being valid, in seconds since the epoch (a SAS token's
    /// `se`): the connection is closed then.
    pub expires: Option<i64>,
}

/// Why a live connection was cut by the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The device was deleted (or deleted and created again).
    Deleted,
    Disabled,
    /// The key, thumbprint or CA certificate the connection authenticated with was
    /// replaced or removed.
    Credential,
    /// The SAS token or certificate it authenticated with expired.
    Expired,
}

impl Revocation {
    pub const ALL: [Revocation; 4] = [
        Revocation::Deleted,
        Revocation::Disabled,
        Revocation::Credential,
        Revocation::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Revocation::Deleted => "deleted",
            Revocation::Disabled => "disabled",
            Revocation::Credential => "credential",
            Revocation::Expired => "expired",
        }
    }

    /// What the connection's log line says.
    pub fn reason(self) -> &'static str {
        match self {
            Revocation::Deleted => "the device was deleted",
            Revocation::Disabled => "the device was disabled",
            Revocation::Credential => "the credential it authenticated with was replaced",
            Revocation::Expired => "its SAS token or certificate expired",
        }
    }
}

impl Identity {
    /// Whether the device's registry record (`None`: deleted) still admits this
    /// connection.
    pub fn revoked_by(&self, current: Option<&DeviceRecord>) -> Option<Revocation> {
        let Some(rec) = current else {
            return Some(Revocation::Deleted);
        };
        if *rec.generation_id != *self.generation_id {
            return Some(Revocation::Deleted);
        }
        if rec.status != DeviceStatus::Enabled {
            return Some(Revocation::Disabled);
        }
        let still_held = match (self.credential, &rec.auth) {
            (Credential::SasKey(digest), _) => rec
                .sas_keys()
                .is_some_and(|(p, s)| key_digest(p) == digest || key_digest(s) == digest),
            (
                Credential::X509Thumbprint(digest),
                DeviceAuth::SelfSigned {
                    primary_thumbprint,
                    secondary_thumbprint,
                },
            ) => {
                key_digest(primary_thumbprint) == digest
                    || secondary_thumbprint
                        .as_deref()
                        .is_some_and(|s| key_digest(s) == digest)
            }
            // Whether the CA is still verified is the CA registry's to say (it cuts these
            // connections when a CA goes).
            (Credential::X509Ca(_), DeviceAuth::CertificateAuthority) => true,
            (Credential::Password, _) => true,
            (Credential::X509Thumbprint(_) | Credential::X509Ca(_), _) => false,
        };
        (!still_held).then_some(Revocation::Credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(key: &str) -> Identity {
        Identity {
            role: Role::Device,
            device_id: DeviceId::parse("d1").expect("id"),
            generation_id: Arc::from("g1"),
            auth: AuthMethod::Sas,
            credential: Credential::SasKey(key_digest(key)),
            expires: None,
        }
    }

    fn record(primary: &str, secondary: &str) -> DeviceRecord {
        let mut rec = DeviceRecord::with_tags("d1", serde_json::json!({}));
        rec.generation_id = "g1".into();
        rec.auth = DeviceAuth::Sas {
            primary_key: primary.into(),
            secondary_key: secondary.into(),
        };
        rec
    }

    #[test]
    fn a_connection_holds_only_while_its_device_and_key_do() {
        let id = identity("second");
        assert_eq!(id.revoked_by(Some(&record("first", "second"))), None);
        assert_eq!(
            id.revoked_by(Some(&record("second", "new"))),
            None,
            "swapped"
        );
        assert_eq!(
            id.revoked_by(Some(&record("first", "new"))),
            Some(Revocation::Credential)
        );
        let mut disabled = record("first", "second");
        disabled.status = DeviceStatus::Disabled;
        assert_eq!(id.revoked_by(Some(&disabled)), Some(Revocation::Disabled));
        let mut recreated = record("first", "second");
        recreated.generation_id = "g2".into();
        assert_eq!(id.revoked_by(Some(&recreated)), Some(Revocation::Deleted));
        assert_eq!(id.revoked_by(None), Some(Revocation::Deleted));
    }
}
