//! Device identities as the registry stores them, and the read-only view gateways and the
//! engine use.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    #[default]
    Enabled,
    Disabled,
}

/// How a device authenticates, as IoT Hub's `authentication.type` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum DeviceAuth {
    /// SAS tokens signed with either symmetric key.
    Sas {
        primary_key: String,
        secondary_key: String,
    },
    /// A TLS client certificate whose SHA-1 or SHA-256 thumbprint is one of these
    /// ([`normalize_thumbprint`] form).
    SelfSigned {
        primary_thumbprint: String,
        #[serde(default)]
        secondary_thumbprint: Option<String>,
    },
    /// A TLS client certificate that chains to a verified CA and names the device as its
    /// subject CN.
    CertificateAuthority,
}

/// A thumbprint as stored and compared: hex digits only, upper case, 40 (SHA-1) or 64
/// (SHA-256) of them. Accepts `openssl x509 -fingerprint` output (colons) and lower case.
pub fn normalize_thumbprint(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let ok = matches!(hex.len(), 40 | 64) && hex.chars().all(|c| c.is_ascii_hexdigit());
    ok.then_some(hex)
}

/// A CA certificate registered with the hub and verified by proof of possession: devices
/// whose certificates chain to it may authenticate as `certificateAuthority` devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    pub name: String,
    pub der: Arc<[u8]>,
    /// Identifies the certificate in connections that authenticated with it
    /// ([`crate::identity::key_digest`] of its SHA-256 thumbprint).
    pub digest: u64,
}

/// A device as stored in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device_id: String,
    pub generation_id: String,
    pub etag: String,
    pub status: DeviceStatus,
    #[serde(default)]
    pub status_reason: Option<String>,
    pub auth: DeviceAuth,
    /// An IoT Edge device (`capabilities.iotEdge`): it may be the parent of other devices
    /// and publish for them.
    #[serde(default)]
    pub iot_edge: bool,
    /// The edge device this one sits behind (IoT Hub's `parentScopes`): that edge may
    /// publish for it and holds its identity while offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Free-form JSON object; rules read it as `$twin.tags.*`.
    #[serde(default = "empty_object")]
    pub tags: serde_json::Value,
    /// The twin's desired properties (set by services, pushed to the device).
    #[serde(default)]
    pub desired: crate::twin::Section,
    /// The twin's reported properties (set by the device).
    #[serde(default)]
    pub reported: crate::twin::Section,
    /// Bumped on every twin change (tags, desired, reported).
    #[serde(default = "one")]
    pub twin_version: u64,
    /// RFC 3339, UTC.
    pub created_time: String,
    pub status_updated_time: String,
    pub last_updated_time: String,
}

fn one() -> u64 {
    1
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl DeviceRecord {
    /// A record with only an id and tags, for tools that evaluate rules without a registry.
    pub fn with_tags(device_id: &str, tags: serde_json::Value) -> DeviceRecord {
        DeviceRecord {
            device_id: device_id.to_owned(),
            generation_id: String::new(),
            etag: String::new(),
            status: DeviceStatus::Enabled,
            status_reason: None,
            auth: DeviceAuth::Sas {
                primary_key: String::new(),
                secondary_key: String::new(),
            },
            iot_edge: false,
            parent: None,
            tags,
            desired: crate::twin::Section::default(),
            reported: crate::twin::Section::default(),
            twin_version: 1,
            created_time: String::new(),
            status_updated_time: String::new(),
            last_updated_time: String::new(),
        }
    }

    /// The symmetric keys, when the device uses SAS.
    pub fn sas_keys(&self) -> Option<(&str, &str)> {
        match &self.auth {
            DeviceAuth::Sas {
                primary_key,
                secondary_key,
            } => Some((primary_key, secondary_key)),
            DeviceAuth::SelfSigned { .. } | DeviceAuth::CertificateAuthority => None,
        }
    }
}

/// Read access to the device registry, fast enough for the per-event path.
pub trait DeviceDirectory: Send + Sync {
    fn get(&self, device_id: &str) -> Option<Arc<DeviceRecord>>;

    /// Every device's tags now; `None` when the directory cannot
    /// list its devices (the engine then reads tags from [`DeviceDirectory::get`]). The
    /// engine takes this once at start, before anything can change the registry, as the
    /// device context from which the log's tag changes go on.
    fn tags_snapshot(&self) -> Option<Vec<(String, serde_json::Value)>> {
        None
    }

    /// The CA certificates verified by proof of possession.
    fn verified_cas(&self) -> Arc<[Arc<CaCertificate>]> {
        Arc::from(Vec::new())
    }
}

/// A directory with no devices, for tools that route recorded events without a registry.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDevices;

impl DeviceDirectory for NoDevices {
    fn get(&self, _device_id: &str) -> Option<Arc<DeviceRecord>> {
        None
    }
}

impl DeviceDirectory for std::collections::HashMap<String, Arc<DeviceRecord>> {
    fn get(&self, device_id: &str) -> Option<Arc<DeviceRecord>> {
        std::collections::HashMap::get(self, device_id).cloned()
    }
}
