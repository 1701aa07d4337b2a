//! What gateways ask of the hub, answered off their I/O threads.

use bytes::Bytes;
use serde_json::{Value, json};
use weir_core::{DeviceId, DeviceServices, EventSource, ServiceError, ServiceFuture};

use crate::error::service_error;
use crate::{Hub, blocking};

fn sequence() -> Value {
    json!({ "sequenceNumber": weir_core::time::now_ms().to_string() })
}

impl DeviceServices for Hub {
    fn twin(&self, device: &DeviceId) -> ServiceFuture<Result<Value, ServiceError>> {
        let (hub, d) = (self.clone(), device.clone());
        Box::pin(async move {
            blocking(move || hub.device_twin(d.as_str()))
                .await
                .map_err(service_error)
        })
    }

    fn patch_reported(
        &self,
        device: &DeviceId,
        patch: Bytes,
    ) -> ServiceFuture<Result<u64, ServiceError>> {
        let (hub, d) = (self.clone(), device.clone());
        Box::pin(async move {
            blocking(move || hub.patch_reported(d.as_str(), &patch))
                .await
                .map_err(service_error)
        })
    }

    fn children(&self, edge: &DeviceId) -> ServiceFuture<Result<Value, ServiceError>> {
        let children: Vec<Value> = self
            .inner
            .registry
            .children(edge.as_str())
            .iter()
            .map(|rec| {
                let mut doc = crate::documents::device_json(rec, false, 0);
                doc["properties"] = json!({ "desired": rec.desired.for_device() });
                doc
            })
            .collect();
        Box::pin(std::future::ready(Ok(Value::Array(children))))
    }

    fn method_response(&self, device: &DeviceId, rid: &str, status: i32, payload: Bytes) {
        self.inner
            .methods
            .answer(device.as_str(), rid, status, payload);
    }

    fn c2d_acknowledged(&self, device: &DeviceId, lock: u64) -> ServiceFuture<()> {
        let (hub, d) = (self.clone(), device.clone());
        Box::pin(async move {
            let _ =
                tokio::task::spawn_blocking(move || hub.c2d_acknowledged(d.as_str(), lock)).await;
        })
    }

    fn stored_subscriptions(&self, device: &DeviceId) -> ServiceFuture<Vec<String>> {
        let (hub, d) = (self.clone(), device.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || hub.inner.registry.subscriptions(d.as_str()))
                .await
                .unwrap_or_default()
        })
    }

    fn store_subscriptions(&self, device: &DeviceId, filters: Vec<String>) -> ServiceFuture<()> {
        let (hub, d) = (self.clone(), device.clone());
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = hub.inner.registry.set_subscriptions(d.as_str(), &filters) {
                    tracing::error!(device = %d, error = %e, "cannot store the session's subscriptions");
                }
            })
            .await;
        })
    }

    fn connected(&self, device: &DeviceId) -> ServiceFuture<()> {
        let (hub, d) = (self.clone(), device.clone());
        Box::pin(async move {
            hub.connection_changed(d.as_str(), "deviceConnected");
            hub.connected_here(d.as_str());
            let _ = tokio::task::spawn_blocking(move || hub.deliver_c2d(d.as_str())).await;
        })
    }

    fn disconnected(&self, device: &DeviceId) -> ServiceFuture<()> {
        let (hub, d) = (self.clone(), device.clone());
        Box::pin(async move {
            hub.connection_changed(d.as_str(), "deviceDisconnected");
            // A child gone from the hub is reached through its edge from now on.
            if weir_core::DeviceDirectory::get(hub.inner.registry.as_ref(), d.as_str())
                .is_some_and(|r| r.parent.is_some())
            {
                let _ = tokio::task::spawn_blocking(move || hub.deliver_c2d(d.as_str())).await;
            }
        })
    }

    fn c2d_ready(&self, device: &DeviceId) -> ServiceFuture<()> {
        let (hub, d) = (self.clone(), device.clone());
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || hub.c2d_ready(d.as_str())).await;
        })
    }
}

impl Hub {
    /// A C2D message in flight on the earlier connection (one that vanished without a
    /// clean disconnect, e.g. after a NAT rebinding) goes out again on the next one, and
    /// routes see the change as a connection-state event.
    fn connection_changed(&self, device: &str, op_type: &'static str) {
        self.c2d_connection_changed(device);
        self.inner.events.emit(
            device,
            EventSource::DeviceConnectionStateEvents,
            op_type,
            sequence(),
        );
    }
}
