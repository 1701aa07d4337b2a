//! Twins (service changes, device reads and reported patches) and direct methods.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use weir_core::{DeviceDirectory, DeviceRecord, EventSource, Feature, ToDevice};

use crate::methods::MethodError;
use crate::{Hub, HubError, blocking};

/// A twin patch as a change notification shows it: with the section's new `$version`.
fn versioned(patch: &Value, version: u64) -> Value {
    let mut v = patch.clone();
    if let Value::Object(m) = &mut v {
        m.insert("$version".into(), json!(version));
    }
    v
}

impl Hub {
    /// Applies a service's twin change: `tags` and `desired` merge patches (or, with
    /// `replace`, whole documents). The change and its twin-change event are committed
    /// together; desired changes are pushed to a subscribed device. Returns the new record.
    pub async fn update_twin(
        &self,
        device: &str,
        tags: Option<Value>,
        desired: Option<Value>,
        replace: bool,
        if_match: Option<String>,
    ) -> Result<Arc<DeviceRecord>, HubError> {
        if tags.as_ref().is_some_and(|t| !t.is_object()) {
            return Err(HubError::Invalid("tags must be a JSON object".into()));
        }
        if let Some(t) = &tags {
            weir_core::twin::check_depth(t, "tags")
                .map_err(|e| HubError::Invalid(e.to_string()))?;
        }
        let hub = self.clone();
        let id = device.to_owned();
        let d = desired.clone();
        let rec = blocking(move || {
            let op = if replace { "replaceTwin" } else { "updateTwin" };
            let events = &hub.inner.events;
            let (rec, _) = hub.inner.registry.update_twin(
                &id,
                if_match.as_deref(),
                |rec, now| {
                    let before = tags.as_ref().map(|_| rec.tags.clone());
                    if let Some(t) = &tags {
                        if replace {
                            rec.tags = t.clone();
                        } else {
                            weir_core::twin::merge(&mut rec.tags, t);
                        }
                    }
                    if let Some(d) = &d {
                        if replace {
                            rec.desired.replace(d, now, true, "desired")?;
                        } else {
                            rec.desired.patch(d, now, true, "desired")?;
                        }
                    }
                    Ok(before)
                },
                |rec, before| {
                    let mut properties = serde_json::Map::new();
                    if let Some(d) = &d {
                        properties.insert("desired".into(), versioned(d, rec.desired.version));
                    }
                    let mut body = json!({ "version": rec.twin_version, "properties": properties });
                    if let Some(t) = &tags {
                        body["tags"] = t.clone();
                    }
                    events
                        .event(&id, EventSource::TwinChangeEvents, op, body)
                        .map(|e| match before {
                            Some(b) => crate::Events::with_tags(e, Some(b), Some(&rec.tags)),
                            None => e,
                        })
                        .into_iter()
                        .collect()
                },
            )?;
            Ok(rec)
        })
        .await?;
        self.inner.events.settle(&self.inner.registry).await;
        if let Some(d) = &desired {
            self.push_desired(device, &rec, d);
        }
        Ok(rec)
    }

    /// Sends a desired-properties patch to the device if it listens for them, or to its
    /// edge if it is behind one.
    pub(crate) fn push_desired(&self, device: &str, rec: &DeviceRecord, patch: &Value) {
        let version = rec.desired.version;
        let patch = Bytes::from(versioned(patch, version).to_string());
        let connections = &self.inner.connections;
        if connections.subscribed(device, Feature::DesiredPatches) {
            connections.send(device, ToDevice::DesiredPatch { version, patch });
        } else if let Some(edge) = rec.parent.as_deref()
            && connections.subscribed(edge, Feature::Edge)
        {
            // A child behind its edge: the edge passes the patch on (and keeps it for
            // when the child connects there).
            let child = device.to_owned();
            connections.send(
                edge,
                ToDevice::ChildDesiredPatch {
                    child,
                    version,
                    patch,
                },
            );
        }
    }

    /// The twin as a device reads it.
    pub(crate) fn device_twin(&self, device: &str) -> Result<Value, HubError> {
        let rec = self
            .inner
            .registry
            .get(device)
            .ok_or_else(|| weir_storage::RegistryError::NotFound(device.to_owned()))?;
        Ok(json!({ "desired": rec.desired.for_device(), "reported": rec.reported.for_device() }))
    }

    /// A device's reported-properties merge patch; returns the new reported version.
    pub(crate) fn patch_reported(&self, device: &str, patch: &[u8]) -> Result<u64, HubError> {
        let patch: Value = serde_json::from_slice(patch).map_err(|e| {
            HubError::Invalid(format!("the reported properties patch is not JSON: {e}"))
        })?;
        let events = &self.inner.events;
        let (rec, ()) = self.inner.registry.update_twin(
            device,
            None,
            |rec, now| {
                rec.reported.patch(&patch, now, false, "reported")?;
                Ok(())
            },
            |rec, ()| {
                let changed = versioned(&patch, rec.reported.version);
                let body =
                    json!({ "version": rec.twin_version, "properties": { "reported": changed } });
                events
                    .event(device, EventSource::TwinChangeEvents, "updateTwin", body)
                    .into_iter()
                    .collect()
            },
        )?;
        self.inner.events.staged.notify_one();
        Ok(rec.reported.version)
    }

    /// Runs a direct method on a device: its status and payload, or why there is none. A
    /// device not connected here is looked for on the cluster's other processes.
    pub async fn invoke(
        &self,
        device: &str,
        method: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<(i32, Value), HubError> {
        let here = self.invoke_here(device, method, payload, timeout).await;
        let answer = match here {
            Err(MethodError::NotOnline) => {
                self.invoke_elsewhere(device, method, payload, timeout)
                    .await
            }
            other => other,
        };
        answer.map_err(|e| match e {
            MethodError::NotOnline => HubError::NotOnline(device.to_owned()),
            MethodError::Timeout => HubError::Timeout {
                device: device.to_owned(),
                method: method.to_owned(),
                secs: timeout.as_secs(),
            },
        })
    }

    /// Runs a direct method on a device connected to this process (or through its edge).
    pub(crate) async fn invoke_here(
        &self,
        device: &str,
        method: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<(i32, Value), MethodError> {
        let parent = self
            .inner
            .registry
            .get(device)
            .and_then(|r| r.parent.clone());
        self.inner
            .methods
            .invoke(
                &self.inner.connections,
                device,
                parent.as_deref(),
                method,
                payload,
                timeout,
            )
            .await
    }
}
