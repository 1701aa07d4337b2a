//! Direct methods: a request published to the device, its response matched by `$rid`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;
use weir_core::{ConnectionRegistry, Feature, ToDevice};

/// Why an invocation produced no device answer.
#[derive(Debug, PartialEq, Eq)]
pub enum MethodError {
    /// The device is not connected or not listening for methods (IoT Hub: 404).
    NotOnline,
    /// No answer within the response timeout (IoT Hub: 504).
    Timeout,
}

/// A waiting invocation, by device and `$rid`: where the device's answer goes.
type Waiters = HashMap<(String, String), oneshot::Sender<(i32, Bytes)>>;

#[derive(Default)]
pub struct Methods {
    pending: Mutex<Waiters>,
    next: AtomicU64,
}

impl Methods {
    /// Sends `method` to `device` and waits up to `timeout` for its answer: (status, payload).
    /// A device that is not connected itself is reached through its edge (`via`) when
    /// that edge is connected.
    pub async fn invoke(
        &self,
        link: &ConnectionRegistry,
        device: &str,
        via: Option<&str>,
        method: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<(i32, Value), MethodError> {
        let direct = link.subscribed(device, Feature::Methods);
        let edge = via.filter(|e| !direct && link.subscribed(e, Feature::Edge));
        if !direct && edge.is_none() {
            return Err(MethodError::NotOnline);
        }
        let rid = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, rx) = oneshot::channel();
        let key = (device.to_owned(), rid.clone());
        if let Ok(mut p) = self.pending.lock() {
            p.insert(key.clone(), tx);
        }
        let payload = Bytes::from(payload.to_string());
        let method = method.to_owned();
        let (to, request) = match edge {
            Some(e) => (
                e,
                ToDevice::ChildMethodRequest {
                    child: device.to_owned(),
                    rid,
                    method,
                    payload,
                    timeout_secs: timeout.as_secs(),
                },
            ),
            None => (
                device,
                ToDevice::MethodRequest {
                    rid,
                    method,
                    payload,
                },
            ),
        };
        if !link.send(to, request) {
            self.forget(&key);
            return Err(MethodError::NotOnline);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok((status, body))) => {
                let value = if body.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&body).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&body).into_owned())
                    })
                };
                Ok((status, value))
            }
            _ => {
                self.forget(&key);
                Err(MethodError::Timeout)
            }
        }
    }

    fn forget(&self, key: &(String, String)) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(key);
        }
    }

    /// A device answered; unknown or late answers are dropped.
    pub fn answer(&self, device: &str, rid: &str, status: i32, payload: Bytes) {
        let tx = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&(device.to_owned(), rid.to_owned())));
        match tx {
            Some(tx) => {
                let _ = tx.send((status, payload));
            }
            None => tracing::debug!(device, rid, "method response nobody waits for"),
        }
    }
}
