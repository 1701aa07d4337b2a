//! Events the hub itself produces (twin changes, lifecycle, connection state), appended to
//! the ingest log so they flow through the same dataflow and rules as telemetry.
//!
//! Lifecycle and twin-change events are committed with the registry change that causes
//! them (the registry's outbox) and moved to the log by [`dispatch_outbox`], so a crash
//! loses neither. Connection-state events describe sockets, not stored state, and are
//! appended directly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{Notify, watch};
use weir_core::{AuthMethod, DeviceId, Event, EventSource, Ingest, IngestError, SystemProperties};
use weir_storage::Registry;

/// Builds hub events and appends the direct ones from any thread.
#[derive(Clone)]
pub struct Events {
    hostname: String,
    ingest: Arc<dyn Ingest>,
    runtime: tokio::runtime::Handle,
    /// Wakes the outbox dispatcher after a registry change staged events.
    pub staged: Arc<Notify>,
    /// One outbox drain at a time (the dispatcher's, or a change settling its events), so
    /// an event is not appended twice by two drains that read it together.
    draining: Arc<tokio::sync::Mutex<()>>,
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
            staged: Arc::new(Notify::new()),
            draining: Arc::default(),
        }
    }

    /// Moves what a registry change staged into the log before the change is answered, so
    /// whatever a device sends after the answer has a later offset than the change (the
    /// device context, tags as of each event, then sees it). A log that does not take
    /// them within `SETTLE` leaves them to the dispatcher; the change itself is committed.
    pub async fn settle(&self, registry: &Arc<Registry>) {
        let work = async {
            let _one = self.draining.lock().await;
            loop {
                match drain_outbox(registry, &self.ingest).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(SETTLE, work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "a registry change's events wait in the registry until the log takes them");
            }
            Err(_) => {
                tracing::warn!(
                    "the log did not take a registry change's events within 5 s; they follow"
                );
            }
        }
    }

    /// An event for `device` with the application properties IoT Hub stamps on them and a
    /// unique message id (so a copy replayed from the outbox is recognised as a repeat).
    pub fn event(
        &self,
        device: &str,
        source: EventSource,
        op_type: &str,
        body: Value,
    ) -> Option<Event> {
        let device_id = DeviceId::parse(device).ok()?;
        let schema = match source {
            EventSource::TwinChangeEvents => "twinChangeNotification",
            EventSource::DeviceLifecycleEvents => "deviceLifecycleNotification",
            EventSource::DeviceConnectionStateEvents => "deviceConnectionStateNotification",
            EventSource::DeviceMessages
            | EventSource::Insights
            | EventSource::EdgeDrops
            | EventSource::Clock
            | EventSource::Registry
            | EventSource::Cluster => "deviceMessage",
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let message_id = weir_storage::secret::random_hex(16)
            .unwrap_or_else(|_| format!("{}-{}", op_type, weir_core::time::now_ms()));
        Some(Event {
            source,
            device_id,
            module_id: None,
            generation_id: None,
            auth_method: AuthMethod::Internal,
            gateway: None,
            dead_letter: None,
            enqueued_ms: 0,
            offset: 0,
            packet_id: None,
            redelivered: false,
            system: SystemProperties {
                message_id: Some(message_id.into()),
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
        })
    }

    /// Marks an event that changes a device's tags with the tags before and after (`None`
    /// after: the device is gone), from which the engine builds its device context.
    pub fn with_tags(mut e: Event, before: Option<&Value>, after: Option<&Value>) -> Event {
        let after = after.map_or_else(|| "null".to_owned(), Value::to_string);
        e.properties
            .push((weir_core::twin::TAGS_PROPERTY.into(), after));
        if let Some(b) = before {
            e.properties
                .push((weir_core::twin::TAGS_BEFORE_PROPERTY.into(), b.to_string()));
        }
        e
    }

    /// Appends an event for `device` directly (connection state: nothing stored backs it).
    pub fn emit(&self, device: &str, source: EventSource, op_type: &str, body: Value) {
        if let Some(event) = self.event(device, source, op_type, body) {
            self.append(event, op_type);
        }
    }

    /// Appends `event` to the log in the background; `what` names it in a warning if the
    /// log does not take it.
    pub(crate) fn append(&self, event: Event, what: &str) {
        self.append_then(event, what, || {});
    }

    /// Appends `event` to the log in the background and calls `stored` once the log has
    /// it durably (not at all if it does not).
    pub(crate) fn append_then(
        &self,
        event: Event,
        what: &str,
        stored: impl FnOnce() + Send + 'static,
    ) {
        let ingest = Arc::clone(&self.ingest);
        let what = what.to_owned();
        self.runtime.spawn(async move {
            let device_id = event.device_id.clone();
            let result = match ingest.ingest(&device_id, vec![event]).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => stored(),
                Err(e) => {
                    tracing::warn!(device = %device_id, op = %what, error = %e, "could not log a hub event");
                }
            }
        });
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }
}

/// Moves one batch of events from the registry's outbox to the ingest log, oldest first,
/// and removes them once the log has them durably. Returns how many moved (0: the outbox
/// is empty).
pub async fn drain_outbox(
    registry: &Arc<Registry>,
    ingest: &Arc<dyn Ingest>,
) -> Result<usize, IngestError> {
    let r = Arc::clone(registry);
    let pending = match tokio::task::spawn_blocking(move || r.outbox(512)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(IngestError::Unavailable(e.to_string())),
        Err(e) => return Err(IngestError::Unavailable(e.to_string())),
    };
    // One append per device keeps each device's events in order.
    let mut by_device: BTreeMap<DeviceId, (Vec<u64>, Vec<Event>)> = BTreeMap::new();
    for (seq, e) in pending {
        let slot = by_device.entry(e.device_id.clone()).or_default();
        slot.0.push(seq);
        slot.1.push(e);
    }
    let mut done = Vec::new();
    let mut error = None;
    for (device, (seqs, events)) in by_device {
        let stored = match ingest.ingest(&device, events).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match stored {
            Ok(()) => done.extend(seqs),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let moved = done.len();
    if !done.is_empty() {
        let r = Arc::clone(registry);
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || r.outbox_done(&done)).await {
            tracing::error!(error = %e, "cannot clear delivered hub events; they are logged again (and dropped as repeats)");
        }
    }
    error.map_or(Ok(moved), Err)
}

/// How long a registry change waits for its events to reach the log.
const SETTLE: Duration = Duration::from_secs(5);

/// Runs [`drain_outbox`] whenever a registry change staged events, until `shutdown`; what
/// is left is moved at the next start.
pub async fn dispatch_outbox(
    registry: Arc<Registry>,
    events: Events,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failing = false;
    let (ingest, wake) = (Arc::clone(&events.ingest), Arc::clone(&events.staged));
    loop {
        let drained = {
            let _one = events.draining.lock().await;
            drain_outbox(&registry, &ingest).await
        };
        let wait = match drained {
            Ok(0) => {
                failing = false;
                Duration::from_secs(5)
            }
            Ok(_) => {
                failing = false;
                continue;
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, "hub events wait in the registry until the ingest log takes them again");
                }
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = wake.notified(), if !failing => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
