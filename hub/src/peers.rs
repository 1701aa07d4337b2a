//! Direct methods for a device connected to another process of the cluster (decision 039).
//!
//! A call for a device that is not connected here is written to this process's log as a
//! `Cluster` message; the engine brings it to every other process, and each answers once,
//! the same way: the device's answer, "timed out", or "not connected here". The caller
//! has its answer with the first real one, or "not online" once every other process has
//! said so. A call or move read again (a restarted dataflow reads the logs from its floor)
//! is recognised by its id and not acted on twice.
//!
//! A device's connection also ends when the device connects to another process later, as
//! a newer connection replaces an older one within a process, and its queued C2D messages
//! follow it there: the process that holds them sends them, the other queues them and
//! says which it took, and only then are they dropped where they were (a message may be
//! delivered twice if a process dies in between, never lost). Feedback for a message that
//! moved goes back to the process it was sent through, where the service reads it: owed
//! feedback waits in the C2D store until this process's log has it, and the receiver
//! records each once (at least once across a restart of the receiver).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use weir_core::feed::device_hash;
use weir_core::{AuthMethod, DeviceId, Event, EventSource};
use weir_storage::c2d::{C2dMessage, FEEDBACK_TTL_MS, Feedback};

use crate::Hub;
use crate::elsewhere::Elsewhere;
use crate::methods::MethodError;

/// This process's place in its cluster, and the calls it waits for elsewhere.
pub(crate) struct Peers {
    process: u32,
    processes: u32,
    waiting: Mutex<HashMap<String, Waiting>>,
    elsewhere: Mutex<Elsewhere>,
    /// Messages acted on, until they expire: a restarted dataflow reads the logs again
    /// from its floor, and a call or move seen twice must not run twice.
    seen: Mutex<HashMap<String, i64>>,
}

struct Waiting {
    answer: oneshot::Sender<Outcome>,
    /// Processes that said the device is not connected there.
    not_here: HashSet<u32>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Message {
    Method {
        id: String,
        origin: u32,
        method: String,
        payload: Value,
        deadline_ms: i64,
    },
    MethodResult {
        id: String,
        origin: u32,
        /// The process that answers.
        from: u32,
        outcome: Outcome,
    },
    /// The device connected to process `origin` at `at_ms`: an older connection of it
    /// elsewhere ends, as within one process.
    Connected { origin: u32, at_ms: i64 },
    /// Process `origin` hands the device's queued C2D messages to process `to`.
    C2dMove {
        id: String,
        origin: u32,
        to: u32,
        sent_ms: i64,
        messages: Vec<C2dMessage>,
    },
    /// Process `to` has queued these (sequence number at `origin`, message id): `origin`
    /// drops them.
    C2dMoved {
        origin: u32,
        to: u32,
        sent_ms: i64,
        taken: Vec<(u64, String)>,
    },
    /// Feedback for a message sent through process `to` and finished elsewhere; `id` is
    /// the sender's process and sequence number.
    Feedback {
        id: String,
        to: u32,
        feedback: Feedback,
    },
}

/// Moves and connects older than this are from a replay of the log after a restart: the
/// messages they concern stay where they are until the device connects again.
const STALE_MS: i64 = 10_000;

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
enum Outcome {
    Answered { status: i32, payload: Value },
    NotOnline,
    Timeout,
}

impl Peers {
    pub(crate) fn new(process: usize, processes: usize) -> Peers {
        Peers {
            process: u32::try_from(process).unwrap_or(u32::MAX),
            processes: u32::try_from(processes).unwrap_or(u32::MAX),
            waiting: Mutex::default(),
            elsewhere: Mutex::default(),
            seen: Mutex::default(),
        }
    }

    /// True the first time `key` is seen before `until_ms`.
    fn first_time(&self, key: String, until_ms: i64) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return true;
        };
        if seen.len() >= 4096 {
            let now = weir_core::time::now_ms();
            seen.retain(|_, until| *until > now);
        }
        seen.insert(key, until_ms).is_none()
    }
}

impl Hub {
    /// Makes this hub process `process` of a cluster of `processes`: its registry changes
    /// go to the others, and direct methods, C2D messages and connects reach devices
    /// connected to them. Set once, before it serves.
    pub fn join_cluster(&self, process: usize, processes: usize) {
        self.inner.registry.replicate_as(process);
        let _ = self.inner.peers.set(Peers::new(process, processes));
    }

    /// Runs a direct method on a device connected to another process; `NotOnline` when
    /// none has it.
    pub(crate) async fn invoke_elsewhere(
        &self,
        device: &str,
        method: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<(i32, Value), MethodError> {
        let Some(peers) = self.inner.peers.get().filter(|p| p.processes > 1) else {
            return Err(MethodError::NotOnline);
        };
        let id = weir_storage::secret::random_hex(16).map_err(|_| MethodError::NotOnline)?;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = peers.waiting.lock() {
            w.insert(
                id.clone(),
                Waiting {
                    answer: tx,
                    not_here: HashSet::new(),
                },
            );
        }
        let deadline_ms = weir_core::time::now_ms()
            .saturating_add(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX));
        let call = Message::Method {
            id: id.clone(),
            origin: peers.process,
            method: method.to_owned(),
            payload: payload.clone(),
            deadline_ms,
        };
        self.send_peers(device, &call);
        let outcome = tokio::time::timeout(timeout, rx).await;
        if let Ok(mut w) = peers.waiting.lock() {
            w.remove(&id);
        }
        match outcome {
            Ok(Ok(Outcome::Answered { status, payload })) => Ok((status, payload)),
            Ok(Ok(Outcome::NotOnline)) => Err(MethodError::NotOnline),
            _ => Err(MethodError::Timeout),
        }
    }

    /// A message from another process (a `Cluster` event's body), from the engine's thread.
    pub fn cluster_message(&self, device: &DeviceId, body: &[u8]) {
        let Some(peers) = self.inner.peers.get() else {
            return;
        };
        let message: Message = match serde_json::from_slice(body) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable message from the cluster; ignored");
                return;
            }
        };
        match message {
            Message::Method {
                id,
                origin,
                method,
                payload,
                deadline_ms,
            } if origin != peers.process => {
                let left = deadline_ms - weir_core::time::now_ms();
                let Ok(left) = u64::try_from(left) else {
                    return;
                };
                if !peers.first_time(format!("m/{id}"), deadline_ms) {
                    return;
                }
                let from = peers.process;
                let hub = self.clone();
                let device = device.clone();
                self.inner.events.runtime().spawn(async move {
                    let outcome = match hub
                        .invoke_here(
                            device.as_str(),
                            &method,
                            &payload,
                            Duration::from_millis(left),
                        )
                        .await
                    {
                        Ok((status, payload)) => Outcome::Answered { status, payload },
                        Err(MethodError::NotOnline) => Outcome::NotOnline,
                        Err(MethodError::Timeout) => Outcome::Timeout,
                    };
                    let answer = Message::MethodResult {
                        id,
                        origin,
                        from,
                        outcome,
                    };
                    hub.send_peers(device.as_str(), &answer);
                });
            }
            Message::MethodResult {
                id,
                origin,
                from,
                outcome,
            } if origin == peers.process => {
                let Ok(mut w) = peers.waiting.lock() else {
                    return;
                };
                let done = match (&outcome, w.get_mut(&id)) {
                    (_, None) => false,
                    (Outcome::NotOnline, Some(waiting)) => {
                        waiting.not_here.insert(from);
                        waiting.not_here.len() + 1 >= peers.processes as usize
                    }
                    (_, Some(_)) => true,
                };
                if done && let Some(waiting) = w.remove(&id) {
                    let _ = waiting.answer.send(outcome);
                }
            }
            Message::Connected { origin, at_ms } if origin != peers.process => {
                if weir_core::time::now_ms() - at_ms > STALE_MS {
                    return;
                }
                let connections = &self.inner.connections;
                let replaced = connections.replaced_elsewhere(device.as_str(), at_ms);
                if replaced {
                    tracing::info!(%device, process = origin, "the device connected to another process; its connection here ends");
                } else if connections.is_connected(device.as_str()) {
                    // It connected here since.
                    return;
                }
                if let Ok(mut e) = peers.elsewhere.lock() {
                    e.insert(device_hash(device.as_str()), origin);
                }
                if self.inner.c2d.nothing_waits() {
                    return;
                }
                let hub = self.clone();
                let device = device.clone();
                self.inner
                    .events
                    .runtime()
                    .spawn_blocking(move || hub.move_c2d(device.as_str(), true));
            }
            Message::C2dMove {
                id,
                origin,
                to,
                sent_ms,
                mut messages,
            } if to == peers.process && weir_core::time::now_ms() - sent_ms <= STALE_MS => {
                if !peers.first_time(format!("c/{id}"), sent_ms + STALE_MS) {
                    return;
                }
                // Feedback goes to where each was sent, which is not always `origin`: a
                // queue can move more than once.
                for m in &mut messages {
                    let sent_through = *m.origin.get_or_insert(origin);
                    if sent_through == peers.process {
                        m.origin = None;
                    }
                }
                let hub = self.clone();
                let device = device.clone();
                self.inner.events.runtime().spawn_blocking(move || {
                    match hub.inner.c2d.take_in(messages) {
                        Ok(taken) if !taken.is_empty() => {
                            let moved = Message::C2dMoved {
                                origin,
                                to,
                                sent_ms: weir_core::time::now_ms(),
                                taken,
                            };
                            hub.send_peers(device.as_str(), &moved);
                            hub.deliver_c2d(device.as_str());
                            // It may have connected elsewhere meanwhile: on they go.
                            hub.move_c2d(device.as_str(), false);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(%device, error = %e, "cannot take in cloud-to-device messages from another process; they stay there");
                        }
                    }
                });
            }
            Message::C2dMoved {
                origin,
                sent_ms,
                taken,
                ..
            } if origin == peers.process && weir_core::time::now_ms() - sent_ms <= STALE_MS => {
                let hub = self.clone();
                let device = device.clone();
                self.inner.events.runtime().spawn_blocking(move || {
                    if let Err(e) = hub.inner.c2d.moved_out(device.as_str(), &taken) {
                        tracing::warn!(%device, error = %e, "cannot drop cloud-to-device messages another process took; they may be delivered twice");
                    }
                });
            }
            Message::Feedback { id, to, feedback } if to == peers.process => {
                let now = weir_core::time::now_ms();
                if !peers.first_time(format!("f/{id}"), now + FEEDBACK_TTL_MS) {
                    return;
                }
                let hub = self.clone();
                self.inner.events.runtime().spawn_blocking(move || {
                    if let Err(e) = hub.inner.c2d.record_feedback(feedback) {
                        tracing::error!(error = %e, "cannot record feedback from another process");
                    }
                });
            }
            _ => {}
        }
    }

    /// Sends the feedback this process owes others to them (blocking). Each record leaves
    /// the C2D store once this process's log has it; until then it is sent again on the
    /// next call, and the receiver keeps one.
    pub(crate) fn forward_feedback(&self) {
        let Some(peers) = self.inner.peers.get().filter(|p| p.processes > 1) else {
            return;
        };
        let owed = match self.inner.c2d.owed_feedback(100) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the feedback owed to other processes");
                return;
            }
        };
        for (seq, owed) in owed {
            let device = owed.feedback.device_id.clone();
            let message = Message::Feedback {
                id: format!("{}/{seq}", peers.process),
                to: owed.to,
                feedback: owed.feedback,
            };
            let hub = self.clone();
            self.send_peers_then(&device, &message, move || {
                if let Err(e) = hub.inner.c2d.feedback_sent(seq) {
                    tracing::warn!(error = %e, "cannot mark feedback as sent; it is sent again");
                }
            });
        }
    }

    /// Tells the other processes that `device` connected here, so that an older connection
    /// of it there ends and its C2D messages there come here.
    pub(crate) fn connected_here(&self, device: &str) {
        let Some(peers) = self.inner.peers.get().filter(|p| p.processes > 1) else {
            return;
        };
        if let Ok(mut e) = peers.elsewhere.lock() {
            e.remove(device_hash(device));
        }
        let message = Message::Connected {
            origin: peers.process,
            at_ms: weir_core::time::now_ms(),
        };
        self.send_peers(device, &message);
    }

    /// Hands the device's queued C2D messages to the process it last connected to, when
    /// that is another one and it is not connected here (`replaced`: its connection here
    /// is older and ending). Blocking (reads the queue).
    pub(crate) fn move_c2d(&self, device: &str, replaced: bool) {
        let Some(peers) = self.inner.peers.get() else {
            return;
        };
        let to = peers
            .elsewhere
            .lock()
            .ok()
            .and_then(|e| e.get(device_hash(device)));
        let Some(to) = to else { return };
        if !replaced && self.inner.connections.is_connected(device) {
            return;
        }
        let messages = match self.inner.c2d.queued(device) {
            Ok(m) if m.is_empty() => return,
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(device, error = %e, "cannot read cloud-to-device messages to move");
                return;
            }
        };
        let Ok(id) = weir_storage::secret::random_hex(16) else {
            return;
        };
        let message = Message::C2dMove {
            id,
            origin: peers.process,
            to,
            sent_ms: weir_core::time::now_ms(),
            messages,
        };
        self.send_peers(device, &message);
    }

    fn send_peers(&self, device: &str, message: &Message) {
        if let Some(e) = cluster_event(device, message) {
            self.inner.events.append(e, "cluster message");
        }
    }

    /// As [`Hub::send_peers`], then `stored` once this process's log has it.
    fn send_peers_then(
        &self,
        device: &str,
        message: &Message,
        stored: impl FnOnce() + Send + 'static,
    ) {
        if let Some(e) = cluster_event(device, message) {
            self.inner.events.append_then(e, "cluster message", stored);
        }
    }
}

/// The `Cluster` event that carries `message`.
fn cluster_event(device: &str, message: &Message) -> Option<Event> {
    let id = DeviceId::parse(device).ok()?;
    let body = match serde_json::to_vec(message) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a message for the cluster");
            return None;
        }
    };
    let mut e = Event::telemetry(id, 0, body.into());
    e.source = EventSource::Cluster;
    e.auth_method = AuthMethod::Internal;
    Some(e)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use serde_json::{Value, json};
    use weir_core::{
        AckFuture, ConnectionRegistry, DeviceId, Event, EventSource, Ingest, IngestFuture,
    };
    use weir_storage::Registry;
    use weir_storage::c2d::C2dStore;

    use crate::methods::MethodError;
    use crate::{Events, Hub};

    /// Stands in for the log: keeps the messages the hub sends to its peers.
    #[derive(Default)]
    struct Sent(Mutex<Vec<Event>>);

    impl Ingest for Sent {
        fn ingest(&self, _device: &DeviceId, batch: Vec<Event>) -> IngestFuture {
            if let Ok(mut v) = self.0.lock() {
                v.extend(batch);
            }
            Box::pin(async { Ok(Box::pin(async { Ok(()) }) as AckFuture) })
        }
    }

    impl Sent {
        /// The bodies of the `Cluster` messages sent so far, as JSON.
        fn messages(&self) -> Vec<Value> {
            self.0.lock().map_or_else(
                |_| Vec::new(),
                |v| {
                    v.iter()
                        .filter(|e| e.source == EventSource::Cluster)
                        .filter_map(|e| serde_json::from_slice(&e.body).ok())
                        .collect()
                },
            )
        }

        async fn wait_for(&self, n: usize) -> Vec<Value> {
            for _ in 0..200 {
                if self.messages().len() >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.messages()
        }
    }

    /// Process `process` of three.
    fn hub(process: usize) -> (tempfile::TempDir, Hub, Arc<Sent>) {
        let dir = tempfile::tempdir().expect("tmp");
        let registry = Arc::new(Registry::open(&dir.path().join("r.redb")).expect("registry"));
        let c2d = Arc::new(C2dStore::open(&dir.path().join("c.redb")).expect("c2d"));
        let sent = Arc::new(Sent::default());
        let events = Events::new(
            "hub".into(),
            Arc::clone(&sent) as Arc<dyn Ingest>,
            tokio::runtime::Handle::current(),
        );
        let hub = Hub::new(
            registry,
            c2d,
            events,
            Arc::new(ConnectionRegistry::default()),
        );
        hub.join_cluster(process, 3);
        (dir, hub, sent)
    }

    fn device() -> DeviceId {
        DeviceId::parse("d1").expect("id")
    }

    fn deliver(hub: &Hub, message: &Value) {
        hub.cluster_message(&device(), message.to_string().as_bytes());
    }

    /// Calls a method from `hub` and returns its call message and the call.
    async fn call(
        hub: &Hub,
        sent: &Sent,
    ) -> (
        String,
        tokio::task::JoinHandle<Result<(i32, Value), MethodError>>,
    ) {
        let caller = hub.clone();
        let task = tokio::spawn(async move {
            caller
                .invoke_elsewhere("d1", "reboot", &json!({"in": 1}), Duration::from_secs(5))
                .await
        });
        let sent = sent.wait_for(1).await;
        assert_eq!(sent[0]["kind"], "method");
        assert_eq!(sent[0]["origin"], 0);
        let id = sent[0]["id"].as_str().expect("id").to_owned();
        (id, task)
    }

    #[tokio::test]
    async fn the_first_answer_from_another_process_is_the_callers() {
        let (_d, hub, sent) = hub(0);
        let (id, task) = call(&hub, &sent).await;
        deliver(
            &hub,
            &json!({"kind": "method-result", "id": id, "origin": 0, "from": 1,
                    "outcome": {"outcome": "not-online"}}),
        );
        deliver(
            &hub,
            &json!({"kind": "method-result", "id": id, "origin": 0, "from": 2,
                              "outcome": {"outcome": "answered", "status": 201, "payload": {"ok": true}}}),
        );
        let got = task.await.expect("task");
        assert_eq!(got.ok(), Some((201, json!({"ok": true}))));
    }

    #[tokio::test]
    async fn not_online_once_every_other_process_said_so() {
        let (_d, hub, sent) = hub(0);
        let (id, task) = call(&hub, &sent).await;
        let not_here = |from: u32| json!({"kind": "method-result", "id": id, "origin": 0, "from": from, "outcome": {"outcome": "not-online"}});
        deliver(&hub, &not_here(1));
        deliver(&hub, &not_here(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !task.is_finished(),
            "one of two other processes answered, twice"
        );
        deliver(&hub, &not_here(2));
        let got = tokio::time::timeout(Duration::from_secs(1), task).await;
        assert_eq!(
            got.expect("at once").expect("task"),
            Err(MethodError::NotOnline)
        );
    }

    #[tokio::test]
    async fn a_process_without_the_device_says_so_and_ignores_stale_calls() {
        let (_d, hub, sent) = hub(1);
        let now = weir_core::time::now_ms();
        deliver(
            &hub,
            &json!({"kind": "method", "id": "old", "origin": 0, "method": "m",
                              "payload": null, "deadline_ms": now - 1}),
        );
        deliver(
            &hub,
            &json!({"kind": "method", "id": "own", "origin": 1, "method": "m",
                              "payload": null, "deadline_ms": now + 5000}),
        );
        let new = json!({"kind": "method", "id": "new", "origin": 0, "method": "m",
                         "payload": null, "deadline_ms": now + 5000});
        deliver(&hub, &new);
        // The same call read again (a restarted dataflow re-reads the logs): run once.
        deliver(&hub, &new);
        sent.wait_for(1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answers = sent.messages();
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0]["id"], "new");
        assert_eq!(answers[0]["origin"], 0);
        assert_eq!(answers[0]["from"], 1);
        assert_eq!(answers[0]["outcome"]["outcome"], "not-online");
        deliver(&hub, &json!("garbage"));
    }
}
