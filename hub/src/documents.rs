//! IoT Hub's Device and Twin documents, as the service API returns them and lifecycle
//! events carry them.

use serde_json::{Value, json};
use weir_core::{DeviceAuth, DeviceRecord, DeviceStatus};
use weir_storage::registry::twin_etag;

const NEVER: &str = "0001-01-01T00:00:00Z";
const SCOPE: &str = "ms-azure-iot-edge://";

/// The scope of edge device `edge` (IoT Hub's `deviceScope`): its children name it in
/// `parentScopes`. IoT Hub appends a number to the id; Weir's scopes are the id alone.
pub fn device_scope(edge: &str) -> String {
    format!("{SCOPE}{edge}")
}

/// The edge device a scope names: `exists` tells a device id from IoT Hub's `{id}-{n}`.
pub fn scope_device(scope: &str, exists: impl Fn(&str) -> bool) -> Option<String> {
    let id = scope.strip_prefix(SCOPE)?;
    if exists(id) {
        return Some(id.to_owned());
    }
    let (id, n) = id.rsplit_once('-')?;
    (n.bytes().all(|b| b.is_ascii_digit()) && exists(id)).then(|| id.to_owned())
}

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
        "capabilities": {"iotEdge": rec.iot_edge},
        "deviceScope": rec.parent.as_deref().or(rec.iot_edge.then_some(rec.device_id.as_str())).map(device_scope),
        "parentScopes": rec.parent.as_deref().map(device_scope).into_iter().collect::<Vec<_>>(),
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
