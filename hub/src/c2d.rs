//! Cloud-to-device messages: queued per device, delivered one at a time in order, each
//! until the device acknowledges it, expiring into feedback.

use std::sync::Arc;

use bytes::Bytes;
use weir_core::{C2dDelivery, DeviceDirectory, Feature, ToDevice};
use weir_storage::c2d::{AckMode, C2dError, C2dMessage, Feedback};

use crate::{Hub, HubError, blocking};

/// Default and longest time a message waits for its device.
const DEFAULT_TTL_MS: i64 = 3_600_000;
const MAX_TTL_MS: i64 = 48 * 3_600_000;
/// The largest payload, as IoT Hub allows.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The most the application properties may take (keys and values): small enough for any
/// protocol to carry them in its headers (MQTT puts them, percent-encoded, in a topic of
/// at most 65535 bytes).
pub const MAX_PROPERTIES: usize = 16 * 1024;

/// A message a service sends.
#[derive(Debug, Clone, Default)]
pub struct NewC2dMessage {
    pub device_id: String,
    /// Generated when absent.
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub properties: Vec<(String, String)>,
    pub payload: Bytes,
    /// Milliseconds since the epoch; default an hour from now.
    pub expiry_ms: Option<i64>,
    pub ack: AckMode,
}

fn delivery(m: &C2dMessage) -> ToDevice {
    ToDevice::CloudToDevice(C2dDelivery {
        lock: m.seq,
        message_id: m.message_id.clone(),
        correlation_id: m.correlation_id.clone(),
        content_type: m.content_type.clone(),
        content_encoding: m.content_encoding.clone(),
        properties: m.properties.clone(),
        payload: Bytes::from(m.payload()),
    })
}

impl Hub {
    /// Queues a message for a device (IoT Hub's limits apply) and sends it at once if the
    /// device is listening and has none in flight.
    pub async fn send_c2d(&self, msg: NewC2dMessage) -> Result<(), HubError> {
        if msg.payload.len() > MAX_PAYLOAD {
            return Err(HubError::Invalid(format!(
                "a cloud-to-device message may carry at most {} KiB",
                MAX_PAYLOAD / 1024
            )));
        }
        let props: usize = msg.properties.iter().map(|(k, v)| k.len() + v.len()).sum();
        if props > MAX_PROPERTIES {
            return Err(HubError::Invalid(format!(
                "the message's properties take {props} bytes; at most {MAX_PROPERTIES} are allowed"
            )));
        }
        let now = weir_core::time::now_ms();
        let expiry_ms = msg.expiry_ms.unwrap_or(now + DEFAULT_TTL_MS);
        if expiry_ms > now + MAX_TTL_MS {
            return Err(HubError::Invalid(
                "the expiry may be at most 48 hours ahead".into(),
            ));
        }
        if self.inner.registry.get(&msg.device_id).is_none() {
            return Err(weir_storage::RegistryError::NotFound(msg.device_id).into());
        }
        let message_id = match msg.message_id {
            Some(m) => m,
            None => weir_storage::secret::random_hex(16).map_err(HubError::internal)?,
        };
        let stored = C2dMessage {
            seq: 0,
            device_id: msg.device_id.clone(),
            message_id,
            correlation_id: msg.correlation_id,
            content_type: msg.content_type,
            content_encoding: msg.content_encoding,
            properties: msg.properties,
            body: C2dMessage::encode_body(&msg.payload),
            enqueued_ms: now,
            expiry_ms,
            ack: msg.ack,
            deliveries: 0,
            origin: None,
        };
        let hub = self.clone();
        blocking(move || {
            match hub.inner.c2d.enqueue(stored) {
                Ok(_) => {}
                Err(C2dError::QueueFull(d)) => return Err(HubError::QueueFull(d)),
                Err(e) => return Err(HubError::internal(e)),
            }
            hub.deliver_c2d(&msg.device_id);
            hub.move_c2d(&msg.device_id, false);
            Ok(())
        })
        .await
    }

    /// Drops a device's waiting messages (with feedback); returns how many.
    pub async fn purge_c2d(&self, device: &str) -> Result<usize, HubError> {
        let rec = self
            .inner
            .registry
            .get(device)
            .ok_or_else(|| weir_storage::RegistryError::NotFound(device.to_owned()))?;
        let hub = self.clone();
        let device = device.to_owned();
        blocking(move || {
            hub.inner
                .c2d
                .purge(&device, &rec.generation_id)
                .map_err(HubError::internal)
        })
        .await
    }

    /// Drops the messages of a device deleted through another process (blocking).
    pub(crate) fn purge_c2d_of(&self, device: &str, generation: &str) {
        if let Err(e) = self.inner.c2d.purge(device, generation) {
            tracing::warn!(device, error = %e, "cannot drop a deleted device's messages");
        }
    }

    /// Feedback records not handed out yet, under a new lock token.
    pub async fn feedback(&self, max: usize) -> Result<Option<(String, Vec<Feedback>)>, HubError> {
        let hub = self.clone();
        blocking(move || hub.inner.c2d.feedback(max).map_err(HubError::internal)).await
    }

    pub async fn complete_feedback(&self, token: String) -> Result<bool, HubError> {
        let hub = self.clone();
        blocking(move || {
            hub.inner
                .c2d
                .complete_feedback(&token)
                .map_err(HubError::internal)
        })
        .await
    }

    pub fn abandon_feedback(&self, token: &str) -> bool {
        self.inner.c2d.abandon_feedback(token)
    }

    fn generation(&self, device: &str) -> String {
        self.inner
            .registry
            .get(device)
            .map(|r| r.generation_id.clone())
            .unwrap_or_default()
    }

    /// Sends the device its oldest waiting message, if it is subscribed (or, when it is
    /// not connected itself, its edge is) and has none in flight. Blocking.
    pub(crate) fn deliver_c2d(&self, device: &str) {
        let links = &self.inner.connections;
        let carrier = if links.subscribed(device, Feature::CloudToDevice) {
            device.to_owned()
        } else {
            match self.edge_of(device) {
                Some(edge) => edge,
                None => return,
            }
        };
        let Ok(mut inflight) = self.inner.c2d_inflight.lock() else {
            return;
        };
        if inflight.contains_key(device) {
            return;
        }
        let now = weir_core::time::now_ms();
        let msg = match self
            .inner
            .c2d
            .next_for(device, now, &self.generation(device))
        {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(device, error = %e, "cannot read cloud-to-device messages");
                return;
            }
        };
        let out = match delivery(&msg) {
            ToDevice::CloudToDevice(message) if carrier != device => ToDevice::ChildCloudToDevice {
                child: device.to_owned(),
                message,
            },
            direct => direct,
        };
        if links.send(&carrier, out) {
            inflight.insert(device.to_owned(), (msg.seq, carrier));
            if let Err(e) = self.inner.c2d.delivering(&msg) {
                tracing::warn!(device, error = %e, "cannot record a cloud-to-device delivery");
            }
        }
    }

    /// The connected edge that speaks for `device`, if it has one.
    fn edge_of(&self, device: &str) -> Option<String> {
        let parent = self.inner.registry.get(device)?.parent.clone()?;
        self.inner
            .connections
            .subscribed(&parent, Feature::Edge)
            .then_some(parent)
    }

    /// A device (or an edge, for its children) can take cloud-to-device messages now.
    /// Blocking.
    pub(crate) fn c2d_ready(&self, device: &str) {
        self.deliver_c2d(device);
        if self.inner.registry.get(device).is_some_and(|r| r.iot_edge) {
            for child in self.inner.registry.children(device) {
                self.deliver_c2d(child.device_id.as_str());
            }
        }
    }

    /// The device acknowledged the message with this lock: it is done; the next goes out.
    /// Blocking.
    pub(crate) fn c2d_acknowledged(&self, device: &str, lock: u64) {
        {
            // Completed before it stops being in flight: a delivery in between would send
            // the same message again.
            let Ok(mut inflight) = self.inner.c2d_inflight.lock() else {
                return;
            };
            if let Err(e) = self
                .inner
                .c2d
                .complete(device, lock, &self.generation(device))
            {
                tracing::error!(device, error = %e, "cannot complete a cloud-to-device message");
            }
            if inflight.get(device).is_some_and(|(l, _)| *l == lock) {
                inflight.remove(device);
            }
        }
        self.deliver_c2d(device);
    }

    /// Messages in flight on a connection that went away (the device's own, or an edge's
    /// for its children) are sent again on the next one.
    pub(crate) fn c2d_connection_changed(&self, connection: &str) {
        if let Ok(mut inflight) = self.inner.c2d_inflight.lock() {
            inflight.retain(|device, (_, carrier)| carrier != connection && device != connection);
        }
    }

    /// Removes expired messages (recording feedback) and feedback nobody collected, and
    /// sends the feedback owed to other processes of a cluster. Blocking; run every second
    /// (not per acknowledgement: a read of the store per C2D message was not worth the
    /// second it saves).
    pub(crate) fn expire_c2d(&self) {
        let registry = Arc::clone(&self.inner.registry);
        let generation = move |d: &str| {
            registry
                .get(d)
                .map(|r| r.generation_id.clone())
                .unwrap_or_default()
        };
        match self.inner.c2d.expire(weir_core::time::now_ms(), generation) {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "cloud-to-device messages expired undelivered"),
            Err(e) => tracing::error!(error = %e, "cannot expire cloud-to-device messages"),
        }
        self.forward_feedback();
    }
}
