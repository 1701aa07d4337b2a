//! IoT Hub's Device and Twin documents, as the service API returns them and lifecycle
//! events carry them.

use serde_json::{Value, json};
use weir_core::{DeviceAuth, DeviceRecord, DeviceStatus};
use weir_storage::registry::twin_etag;

const NEVER: &str = "0001-01-01T00:00:00Z";

fn status(rec: &DeviceRecord) -> &'static str {
    match rec.status {
        DeviceStatus::Enabled => "enabled",
        DeviceStatus::Disabled => "disabled",
    }
}

/// IoT Hub's name for the device's authentication type, and its thumbprints.
fn auth_type(rec: &DeviceRecord) -> (&'static str, Value) {
    match &rec.auth {
        DeviceAuth::Sas { .. } => ("sas", Value::Null),
        DeviceAuth::SelfSigned {
            primary_thumbprint,
            secondary_thumbprint,
        } => (
            "selfSigned",
            json!({"primaryThumbprint": primary_thumbprint, "secondaryThumbprint": secondary_thumbprint}),
        ),
        DeviceAuth::CertificateAuthority => ("certificateAuthority", Value::Null),
    }
}

fn thumbprints(value: Value) -> Value {
    if value.is_null() {
        json!({"primaryThumbprint": null, "secondaryThumbprint": null})
    } else {
        value
    }
}

/// The Device document (plus `tags`, Weir's extension).
pub fn device_json(rec: &DeviceRecord, connected: bool, c2d_pending: usize) -> Value {
    let (primary, secondary) = match rec.sas_keys() {
        Some((p, s)) => (Value::from(p), Value::from(s)),
        None => (Value::Null, Value::Null),
    };
    let (kind, thumbs) = auth_type(rec);
    json!({
        "deviceId": rec.device_id,
        "moduleId": null,
        "generationId": rec.generation_id,
        "etag": rec.etag,
        "connectionState": if connected { "Connected" } else { "Disconnected" },
        "status": status(rec),
        "statusReason": rec.status_reason,
        "connectionStateUpdatedTime": NEVER,
        "statusUpdatedTime": rec.status_updated_time,
        "lastActivityTime": NEVER,
        "cloudToDeviceMessageCount": c2d_pending,
        "authentication": {
            "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary},
            "x509Thumbprint": thumbprints(thumbs),
            "type": kind
        },
        "capabilities": {"iotEdge": false},
        "tags": rec.tags,
    })
}

/// The Twin document. It never shows keys, so lifecycle events carry it.
pub fn twin_json(rec: &DeviceRecord, connected: bool, c2d_pending: usize) -> Value {
    let (kind, thumbs) = auth_type(rec);
    json!({
        "deviceId": rec.device_id,
        "etag": twin_etag(rec),
        "deviceEtag": rec.etag,
        "status": status(rec),
        "statusReason": rec.status_reason,
        "statusUpdateTime": rec.status_updated_time,
        "connectionState": if connected { "Connected" } else { "Disconnected" },
        "lastActivityTime": NEVER,
        "cloudToDeviceMessageCount": c2d_pending,
        "authenticationType": kind,
        "x509Thumbprint": thumbprints(thumbs),
        "modelId": "",
        "version": rec.twin_version,
        "tags": rec.tags,
        "properties": {
            "desired": rec.desired.for_service(),
            "reported": rec.reported.for_service(),
        },
        "capabilities": {"iotEdge": false},
    })
}
