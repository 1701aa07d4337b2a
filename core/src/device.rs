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

/// How a device authenticates. Only SAS exists today; X.509 variants come with the
/// provisioning work and keep this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum DeviceAuth {
    Sas {
        primary_key: String,
        secondary_key: String,
    },
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
