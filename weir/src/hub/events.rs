//! Events the hub itself produces (twin changes, lifecycle, connection state), appended to
//! the ingest log so they flow through the same dataflow and rules as telemetry.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use weir_core::{AuthMethod, DeviceId, Event, EventSource, Ingest, SystemProperties};

/// Appends hub events to the log from any thread.
#[derive(Clone)]
pub struct Events {
    hostname: String,
    ingest: Arc<dyn Ingest>,
    runtime: tokio::runtime::Handle,
}

impl Events {
    pub fn new(
        hostname: String,
        ingest: Arc<dyn Ingest>,
        runtime: tokio::runtime::Handle,
    ) -> Events {
        Events {
            hostname,
            ingest,
            runtime,
        }
    }

    /// Emits an event for `device`. IoT Hub stamps these application properties on them.
    pub fn emit(&self, device: &str, source: EventSource, op_type: &str, body: Value) {
        let Ok(device_id) = DeviceId::parse(device) else {
            return;
        };
        let schema = match source {
            EventSource::TwinChangeEvents => "twinChangeNotification",
            EventSource::DeviceLifecycleEvents => "deviceLifecycleNotification",
            EventSource::DeviceConnectionStateEvents => "deviceConnectionStateNotification",
            EventSource::DeviceMessages => "deviceMessage",
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let event = Event {
            source,
            device_id: device_id.clone(),
            module_id: None,
            generation_id: None,
            auth_method: AuthMethod::Internal,
            enqueued_ms: 0,
            offset: 0,
            packet_id: None,
            redelivered: false,
            system: SystemProperties {
                content_type: Some("application/json".into()),
                content_encoding: Some("utf-8".into()),
                ..SystemProperties::default()
            },
            properties: vec![
                ("hubName".into(), self.hostname.clone()),
                ("deviceId".into(), device.to_owned()),
                ("opType".into(), op_type.to_owned()),
                ("iothub-message-schema".into(), schema.to_owned()),
                ("operationTimestamp".into(), now),
            ],
            body: Bytes::from(body.to_string()),
        };
        let ingest = Arc::clone(&self.ingest);
        let op = op_type.to_owned();
        self.runtime.spawn(async move {
            let stored = match ingest.ingest(&device_id, vec![event]).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            if let Err(e) = stored {
                tracing::warn!(device = %device_id, op = %op, error = %e, "could not log a hub event");
            }
        });
    }
}
