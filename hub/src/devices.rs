//! Creating, changing and deleting devices, with the events and revocations that follow.

use std::sync::Arc;

use serde_json::{Value, json};
use weir_core::{
    Credential, DeviceDirectory, DeviceRecord, Event, EventSource, Revocation, key_digest,
};
use weir_storage::registry::Change;
use weir_storage::{CaRecord, DeviceUpsert};

use crate::documents::twin_json;
use crate::events::Events;
use crate::{Hub, HubError, blocking};

impl Hub {
    /// Creates the device or, with `if_match` (an etag or `*`), updates it; returns the
    /// record and whether it was created. Its events are committed with it; a connection
    /// the updated record no longer admits is told to close before this returns.
    pub async fn put_device(
        &self,
        req: DeviceUpsert,
        if_match: Option<String>,
    ) -> Result<(Arc<DeviceRecord>, bool), HubError> {
        let hub = self.clone();
        let id = req.device_id.clone();
        let (rec, created) = blocking(move || {
            let events = &hub.inner.events;
            Ok(hub
                .inner
                .registry
                .upsert(req, if_match.as_deref(), |c| change_events(events, c))?)
        })
        .await?;
        self.inner.events.settle(&self.inner.registry).await;
        if created {
            tracing::info!(device = %id, "device created");
        } else if self.revalidate(&id) {
            tracing::info!(device = %id, "closed a connection the updated device no longer admits");
        }
        Ok((rec, created))
    }

    /// Deletes a device (conditionally on `if_match`), its waiting messages and its live
    /// connection.
    pub async fn delete_device(
        &self,
        id: &str,
        if_match: Option<String>,
    ) -> Result<Arc<DeviceRecord>, HubError> {
        let hub = self.clone();
        let device = id.to_owned();
        let rec = blocking(move || {
            let events = &hub.inner.events;
            let rec = hub
                .inner
                .registry
                .delete(&device, if_match.as_deref(), |rec| {
                    let twin = twin_json(rec, false, 0);
                    events
                        .event(&device, EventSource::DeviceLifecycleEvents, "deleteDeviceIdentity", twin)
                        .map(|e| Events::with_tags(e, Some(&rec.tags), None))
                        .into_iter()
                        .collect()
                })?;
            if let Err(e) = hub.inner.c2d.purge(&device, &rec.generation_id) {
                tracing::warn!(device = %device, error = %e, "cannot drop the deleted device's messages");
            }
            Ok(rec)
        })
        .await?;
        self.inner.events.settle(&self.inner.registry).await;
        tracing::info!(device = %id, "device deleted");
        self.revalidate(id);
        Ok(rec)
    }

    /// The device's registry record changed or it was deleted: a connection it no longer
    /// admits is told to close before this returns. True when one was.
    pub fn revalidate(&self, device: &str) -> bool {
        let current = self.inner.registry.get(device);
        self.inner
            .connections
            .revalidate(device, current.as_deref())
            .is_some()
    }
}

/// The hub events a create or update of a device causes: `createDeviceIdentity`;
/// `updateDeviceIdentity` when its status or keys changed; a twin change when its tags did.
fn change_events(events: &Events, c: Change<'_>) -> Vec<Event> {
    let id = c.new.device_id.as_str();
    let lifecycle = |op: &str| {
        let twin = twin_json(c.new, false, 0);
        events.event(id, EventSource::DeviceLifecycleEvents, op, twin)
    };
    let Some(old) = c.old else {
        return lifecycle("createDeviceIdentity")
            .map(|e| Events::with_tags(e, Some(&Value::Null), Some(&c.new.tags)))
            .into_iter()
            .collect();
    };
    let mut out = Vec::new();
    if old.status != c.new.status
        || old.status_reason != c.new.status_reason
        || old.auth != c.new.auth
    {
        out.extend(lifecycle("updateDeviceIdentity"));
    }
    if old.tags != c.new.tags {
        let body = json!({ "version": c.new.twin_version, "tags": c.new.tags });
        out.extend(
            events
                .event(id, EventSource::TwinChangeEvents, "updateTwin", body)
                .map(|e| Events::with_tags(e, Some(&old.tags), Some(&c.new.tags))),
        );
    }
    out
}

impl Hub {
    /// A CA certificate was deleted or replaced by another certificate, here or on another
    /// process of the cluster: the connections that authenticated with it are closed.
    pub fn withdraw_ca(&self, ca: &CaRecord) {
        let n = self.connections().revoke_credential(
            Credential::X509Ca(key_digest(&ca.sha256)),
            Revocation::Credential,
        );
        if n > 0 {
            tracing::info!(certificate = %ca.name, connections = n, "CA certificate withdrawn: connections that authenticated with it were closed");
        }
    }
}
