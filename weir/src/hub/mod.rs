//! The hub's device services: twins, direct methods, cloud-to-device messages, and the
//! events they produce. Gateways reach it through [`DeviceServices`]; the REST API calls it
//! directly; it reaches devices through the gateway's [`DeviceLink`].

pub mod c2d;
pub mod events;
pub mod methods;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use weir_core::twin::TwinError;
use weir_core::{
    DeviceDirectory, DeviceId, DeviceLink, DevicePublish, DeviceRecord, DeviceServices,
    EventSource, Feature, ServiceError,
};
use weir_storage::c2d::C2dStore;
use weir_storage::{Registry, RegistryError};

pub use events::Events;
pub use methods::MethodError;

pub struct Hub {
    pub registry: Arc<Registry>,
    pub c2d: Arc<C2dStore>,
    pub events: Events,
    pub methods: methods::Methods,
    link: OnceLock<Arc<dyn DeviceLink>>,
    /// The cloud-to-device message each device has in flight (one at a time, in order).
    c2d_inflight: Mutex<HashMap<String, u64>>,
}

/// A twin patch as a change notification shows it: with the section's new `$version`.
fn versioned(patch: &Value, version: u64) -> Value {
    let mut v = patch.clone();
    if let Value::Object(m) = &mut v {
        m.insert("$version".into(), json!(version));
    }
    v
}

fn service_error(e: RegistryError) -> ServiceError {
    match e {
        RegistryError::NotFound(_) => ServiceError::new(404, e.to_string()),
        RegistryError::PreconditionFailed { .. } => ServiceError::new(412, e.to_string()),
        RegistryError::Twin(TwinError::TooLarge { .. }) => ServiceError::new(400, e.to_string()),
        RegistryError::Storage(_) => ServiceError::new(500, "the registry could not be updated"),
        other => ServiceError::new(400, other.to_string()),
    }
}

impl Hub {
    pub fn new(registry: Arc<Registry>, c2d: Arc<C2dStore>, events: Events) -> Hub {
        Hub {
            registry,
            c2d,
            events,
            methods: methods::Methods::default(),
            link: OnceLock::new(),
            c2d_inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Connects the hub to the gateway that reaches devices (set once, at start-up).
    pub fn set_link(&self, link: Arc<dyn DeviceLink>) {
        let _ = self.link.set(link);
    }

    pub fn link(&self) -> Option<&Arc<dyn DeviceLink>> {
        self.link.get()
    }

    pub fn is_connected(&self, device: &str) -> bool {
        self.link().is_some_and(|l| l.is_connected(device))
    }

    /// The device's registry record changed or it was deleted: connections it no longer
    /// admits are told to close before this returns.
    pub fn revalidate(&self, device: &str) -> bool {
        self.link().is_some_and(|l| l.revalidate(device))
    }

    fn generation(&self, device: &str) -> String {
        self.registry
            .get(device)
            .map(|r| r.generation_id.clone())
            .unwrap_or_default()
    }

    /// Applies a service's twin change: `tags` and `desired` merge patches (or, with
    /// `replace`, whole documents). Pushes desired changes to the device and logs a
    /// twin-change event. Returns the new record.
    pub fn update_twin(
        &self,
        device: &str,
        tags: Option<&Value>,
        desired: Option<&Value>,
        replace: bool,
        if_match: Option<&str>,
    ) -> Result<Arc<DeviceRecord>, ServiceError> {
        if tags.is_some_and(|t| !t.is_object()) {
            return Err(ServiceError::new(400, "tags must be a JSON object"));
        }
        if let Some(t) = tags {
            weir_core::twin::check_depth(t, "tags")
                .map_err(|e| ServiceError::new(400, e.to_string()))?;
        }
        let op = if replace { "replaceTwin" } else { "updateTwin" };
        let (rec, ()) = self
            .registry
            .update_twin(
                device,
                if_match,
                |rec, now| {
                    if let Some(t) = tags {
                        if replace {
                            rec.tags = t.clone();
                        } else {
                            weir_core::twin::merge(&mut rec.tags, t);
                        }
                    }
                    if let Some(d) = desired {
                        if replace {
                            rec.desired.replace(d, now, true, "desired")?;
                        } else {
                            rec.desired.patch(d, now, true, "desired")?;
                        }
                    }
                    Ok(())
                },
                |rec, ()| {
                    let mut properties = serde_json::Map::new();
                    if let Some(d) = desired {
                        properties.insert("desired".into(), versioned(d, rec.desired.version));
                    }
                    let mut body = json!({ "version": rec.twin_version, "properties": properties });
                    if let Some(t) = tags {
                        body["tags"] = t.clone();
                    }
                    self.events
                        .event(device, EventSource::TwinChangeEvents, op, body)
                        .into_iter()
                        .collect()
                },
            )
            .map_err(service_error)?;
        self.events.staged.notify_one();
        if let Some(d) = desired
            && let Some(link) = self.link()
            && link.subscribed(device, Feature::DesiredPatches)
        {
            link.send(
                device,
                DevicePublish {
                    topic: format!(
                        "$iothub/twin/PATCH/properties/desired/?$version={}",
                        rec.desired.version
                    ),
                    payload: Bytes::from(versioned(d, rec.desired.version).to_string()),
                    qos: 0,
                    lock: None,
                },
            );
        }
        Ok(rec)
    }

    /// Sends the device its oldest waiting cloud-to-device message, if it is subscribed and
    /// has none in flight.
    pub fn deliver_c2d(&self, device: &str) {
        let Some(link) = self.link() else { return };
        if !link.subscribed(device, Feature::CloudToDevice) {
            return;
        }
        let Ok(mut inflight) = self.c2d_inflight.lock() else {
            return;
        };
        if inflight.contains_key(device) {
            return;
        }
        let now = weir_core::time::now_ms();
        let msg = match self.c2d.next_for(device, now, &self.generation(device)) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(device, error = %e, "cannot read cloud-to-device messages");
                return;
            }
        };
        let publish = c2d::publish(&msg);
        if link.send(device, publish) {
            inflight.insert(device.to_owned(), msg.seq);
            if let Err(e) = self.c2d.delivering(&msg) {
                tracing::warn!(device, error = %e, "cannot record a cloud-to-device delivery");
            }
        }
    }

    /// Removes expired cloud-to-device messages (recording feedback); run periodically.
    pub fn expire_c2d(&self) {
        let registry = Arc::clone(&self.registry);
        let generation = move |d: &str| {
            registry
                .get(d)
                .map(|r| r.generation_id.clone())
                .unwrap_or_default()
        };
        match self.c2d.expire(weir_core::time::now_ms(), generation) {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "cloud-to-device messages expired undelivered"),
            Err(e) => tracing::error!(error = %e, "cannot expire cloud-to-device messages"),
        }
    }

    /// Runs a direct method on a device.
    pub async fn invoke(
        &self,
        device: &str,
        method: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<(i32, Value), MethodError> {
        let Some(link) = self.link() else {
            return Err(MethodError::NotOnline);
        };
        self.methods
            .invoke(link.as_ref(), device, method, payload, timeout)
            .await
    }
}

impl DeviceServices for Hub {
    fn twin(&self, device: &DeviceId) -> Result<Value, ServiceError> {
        let rec = self
            .registry
            .get(device.as_str())
            .ok_or_else(|| ServiceError::new(404, "device not found"))?;
        Ok(json!({ "desired": rec.desired.for_device(), "reported": rec.reported.for_device() }))
    }

    fn patch_reported(&self, device: &DeviceId, patch: &[u8]) -> Result<u64, ServiceError> {
        let patch: Value = serde_json::from_slice(patch).map_err(|e| {
            ServiceError::new(
                400,
                format!("the reported properties patch is not JSON: {e}"),
            )
        })?;
        let (rec, ()) = self
            .registry
            .update_twin(
                device.as_str(),
                None,
                |rec, now| {
                    rec.reported.patch(&patch, now, false, "reported")?;
                    Ok(())
                },
                |rec, ()| {
                    let changed = versioned(&patch, rec.reported.version);
                    let body = json!({ "version": rec.twin_version, "properties": { "reported": changed } });
                    self.events
                        .event(device.as_str(), EventSource::TwinChangeEvents, "updateTwin", body)
                        .into_iter()
                        .collect()
                },
            )
            .map_err(service_error)?;
        self.events.staged.notify_one();
        Ok(rec.reported.version)
    }

    fn method_response(&self, device: &DeviceId, rid: &str, status: i32, payload: Bytes) {
        self.methods.answer(device.as_str(), rid, status, payload);
    }

    fn c2d_acknowledged(&self, device: &DeviceId, lock: u64) {
        let d = device.as_str();
        if let Ok(mut inflight) = self.c2d_inflight.lock()
            && inflight.get(d) == Some(&lock)
        {
            inflight.remove(d);
        }
        if let Err(e) = self.c2d.complete(d, lock, &self.generation(d)) {
            tracing::error!(device = d, error = %e, "cannot complete a cloud-to-device message");
        }
        self.deliver_c2d(d);
    }

    fn stored_subscriptions(&self, device: &DeviceId) -> Vec<String> {
        self.registry.subscriptions(device.as_str())
    }

    fn store_subscriptions(&self, device: &DeviceId, filters: &[String]) {
        if let Err(e) = self.registry.set_subscriptions(device.as_str(), filters) {
            tracing::error!(device = %device, error = %e, "cannot store the session's subscriptions");
        }
    }

    fn connected(&self, device: &DeviceId) {
        // A message in flight on an earlier connection (one that vanished without a clean
        // disconnect, e.g. after a NAT rebinding) goes out again on this one.
        if let Ok(mut inflight) = self.c2d_inflight.lock() {
            inflight.remove(device.as_str());
        }
        self.events.emit(
            device.as_str(),
            EventSource::DeviceConnectionStateEvents,
            "deviceConnected",
            json!({ "sequenceNumber": weir_core::time::now_ms().to_string() }),
        );
        self.deliver_c2d(device.as_str());
    }

    fn disconnected(&self, device: &DeviceId) {
        // A message in flight stays queued and is delivered again on the next connection.
        if let Ok(mut inflight) = self.c2d_inflight.lock() {
            inflight.remove(device.as_str());
        }
        self.events.emit(
            device.as_str(),
            EventSource::DeviceConnectionStateEvents,
            "deviceDisconnected",
            json!({ "sequenceNumber": weir_core::time::now_ms().to_string() }),
        );
    }

    fn c2d_ready(&self, device: &DeviceId) {
        self.deliver_c2d(device.as_str());
    }
}
