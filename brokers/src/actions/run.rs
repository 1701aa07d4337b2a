//! The tasks behind `method` and `c2d` endpoints: they take actions in the order the
//! sink hands them over and confirm each once it was attempted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use weir_core::ActionOptions;
use weir_hub::{Hub, HubError, NewC2dMessage};

use super::{Action, Payload};
use crate::link::Link;
use crate::template::Template;

/// Direct methods in flight per endpoint and worker: a device that takes its time to
/// answer does not hold up the others.
const CONCURRENT_METHODS: usize = 256;

/// What a `method` or `c2d` endpoint renders per message.
struct Render {
    endpoint: Arc<str>,
    method: Option<Template>,
    payload: Option<Payload>,
}

impl Render {
    fn new(o: &ActionOptions, endpoint: &str) -> Render {
        // The options were checked when the rules were loaded.
        let payload = o
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .and_then(|v| Payload::parse(&v).ok());
        Render {
            endpoint: Arc::from(endpoint),
            method: Template::parse(&o.method).ok(),
            payload,
        }
    }

    /// The payload as bytes (a C2D message): the rendered template, or the body as is.
    fn payload(&self, a: &Action) -> Bytes {
        match &self.payload {
            Some(p) => Bytes::from(p.render(&a.delivery, &self.endpoint).to_string()),
            None => a.delivery.event.body.clone(),
        }
    }

    /// The payload as JSON (a method's): the rendered template, or the body parsed.
    fn value(&self, a: &Action) -> serde_json::Value {
        match &self.payload {
            Some(p) => p.render(&a.delivery, &self.endpoint),
            None => {
                serde_json::from_slice(&a.delivery.event.body).unwrap_or(serde_json::Value::Null)
            }
        }
    }
}

/// Invokes a direct method per message.
pub fn methods(
    rt: &tokio::runtime::Handle,
    hub: Hub,
    o: ActionOptions,
    endpoint: String,
) -> Link<Action> {
    let render = Render::new(&o, &endpoint);
    let timeout = Duration::from_secs(u64::from(o.timeout_secs));
    Link::spawn(rt, endpoint, move |mut rx, progress| async move {
        let mut running = FuturesOrdered::new();
        let mut method = String::new();
        loop {
            tokio::select! {
                Some(()) = running.next(), if !running.is_empty() => progress.confirm_oldest(),
                next = rx.recv(), if running.len() < CONCURRENT_METHODS => {
                    let Some(out) = next else { break };
                    let a: Action = out.message;
                    if let Some(t) = &render.method {
                        t.render(&a.delivery, &render.endpoint, &mut method);
                    }
                    let payload = render.value(&a);
                    running.push_back(invoke(hub.clone(), Arc::clone(&render.endpoint), a.target, method.clone(), payload, timeout));
                }
            }
        }
        while running.next().await.is_some() {
            progress.confirm_oldest();
        }
        Ok(())
    })
}

async fn invoke(
    hub: Hub,
    endpoint: Arc<str>,
    device: String,
    method: String,
    payload: serde_json::Value,
    timeout: Duration,
) {
    let started = Instant::now();
    match hub.invoke(&device, &method, &payload, timeout).await {
        Ok((status, _)) => tracing::info!(
            endpoint = %endpoint,
            device,
            method,
            status,
            ms = started.elapsed().as_millis() as u64,
            "direct method answered"
        ),
        Err(e) => tracing::warn!(
            endpoint = %endpoint,
            device,
            method,
            error = %e,
            "direct method not run; the action is not retried"
        ),
    }
}

/// Queues a cloud-to-device message per message.
pub fn c2d(
    rt: &tokio::runtime::Handle,
    hub: Hub,
    o: ActionOptions,
    endpoint: String,
) -> Link<Action> {
    let render = Render::new(&o, &endpoint);
    let ttl_ms = i64::from(o.timeout_secs) * 1000;
    Link::spawn(rt, endpoint, move |mut rx, progress| async move {
        while let Some(out) = rx.recv().await {
            let a: Action = out.message;
            let msg = NewC2dMessage {
                device_id: a.target.clone(),
                // The same message again after a retry of the endpoint gets the same id.
                message_id: Some(format!("{}-{}", render.endpoint, a.delivery.event.offset)),
                properties: vec![("weir-route".into(), a.delivery.route.to_string())],
                payload: render.payload(&a),
                expiry_ms: Some(chrono::Utc::now().timestamp_millis() + ttl_ms),
                ..NewC2dMessage::default()
            };
            match hub.send_c2d(msg).await {
                Ok(()) => {}
                Err(
                    e @ (HubError::Internal(_)
                    | HubError::Registry(weir_storage::RegistryError::Storage(_))),
                ) => {
                    return Err(format!("cannot queue a cloud-to-device message: {e}"));
                }
                Err(e) => tracing::warn!(
                    endpoint = %render.endpoint,
                    device = a.target,
                    error = %e,
                    "cloud-to-device message not queued; the action is not retried"
                ),
            }
            progress.confirm_oldest();
        }
        Ok(())
    })
}
