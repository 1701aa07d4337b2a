//! One MQTT connection: CONNECT, then a loop that reads (telemetry → ingest, requests →
//! hub services), writes what the hub sends the device, and acknowledges.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::{Instant, timeout_at};
use weir_core::time::now_secs;
use weir_core::{DevicePublish, Event, EventSource, Feature, ServiceError};

use super::Shared;
use super::codec::{self, Inbound, Publish};
use super::connect::{Identity, Revocation, authenticate};
use super::requests::{self, DeviceRequest};
use super::sessions::{Features, Kick, KickReason, Outbox, feature_of};
use super::topic::{DeviceTopic, classify, decode_bag};
use crate::metrics::GatewayMetrics;

/// Reads are sized to what the peer sends: small while idle, up to this when busy.
const MAX_READ: usize = 64 * 1024;
const MIN_READ: usize = 64;

/// Why a connection ended; logged once.
enum End {
    PeerClosed,
    Disconnect,
    Replaced,
    Revoked(Revocation),
    ShuttingDown,
    NotStored,
    KeepAlive,
    Io(std::io::Error),
    Violation(String),
}

impl From<KickReason> for End {
    fn from(k: KickReason) -> End {
        match k {
            KickReason::Replaced => End::Replaced,
            KickReason::Revoked(r) => End::Revoked(r),
        }
    }
}

/// What the handshake learned.
struct Accepted {
    identity: Arc<Identity>,
    keep_alive: u16,
    clean_session: bool,
}

/// The instant a credential valid until `expiry` (seconds since the epoch, inclusive)
/// stops being valid; `None` when that is too far away to matter.
fn expiry_instant(expiry: i64) -> Option<Instant> {
    let ms = (expiry + 1)
        .saturating_mul(1000)
        .saturating_sub(weir_core::time::now_ms());
    let ms = u64::try_from(ms).unwrap_or(0);
    // Beyond a year the idle timeout comes first anyway; this keeps the addition in range.
    (ms < 366 * 86_400_000).then(|| Instant::now() + Duration::from_millis(ms))
}

/// `pending` is the connection's slot among those still authenticating; it is given back
/// once the handshake is over.
pub(crate) async fn serve<S>(
    mut stream: S,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    pending: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let deadline = Instant::now() + shared.config.connect_timeout;
    let handshake = handshake(&mut stream, &mut buf, &mut out, &shared, deadline).await;
    drop(pending);
    let accepted = match handshake {
        Ok(x) => x,
        Err(reason) => {
            GatewayMetrics::inc(&shared.metrics.connects_refused, 1);
            if let Some(suppressed) = shared.refusals.allow() {
                tracing::warn!(%peer, %reason, suppressed, "connection refused");
            }
            let _ = stream.write_all(&out).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    let device = accepted.identity.device_id.clone();
    // A persistent session (clean session 0) keeps its subscriptions across connections:
    // the Azure SDK never subscribes again after it reconnects.
    let services = Arc::clone(&shared.services);
    let (d, clean) = (device.clone(), accepted.clean_session);
    let filters = Box::pin(blocking(move || {
        if clean {
            services.store_subscriptions(&d, &[]);
            Vec::new()
        } else {
            services.stored_subscriptions(&d)
        }
    }))
    .await
    .unwrap_or_default();
    let features = Arc::new(Features::default());
    for f in &filters {
        if let Some(feature) = feature_of(f, device.as_str()) {
            features.set(feature, true);
        }
    }
    let outbox = Arc::new(Outbox::default());
    let registration = shared.sessions.register(
        Arc::clone(&accepted.identity),
        Arc::clone(&outbox),
        Arc::clone(&features),
    );
    tracing::debug!(%peer, %device, "device connected");
    codec::connack(0, !filters.is_empty(), &mut out);
    let services = Arc::clone(&shared.services);
    let d = device.clone();
    Box::pin(blocking(move || services.connected(&d))).await;
    let end = match stream.write_all(&out).await {
        Ok(()) => {
            // An idle connection keeps no buffers: they are allocated again on demand.
            out = BytesMut::new();
            if buf.is_empty() {
                buf = BytesMut::new();
            }
            let mut conn = Connection {
                shared: &shared,
                id: &accepted.identity,
                features: &features,
                filters,
                clean_session: accepted.clean_session,
                inflight: HashMap::new(),
                next_pkid: 0,
            };
            conn.run(
                &mut stream,
                buf,
                out,
                &outbox,
                accepted.keep_alive,
                &registration.kick,
                &mut shutdown,
            )
            .await
        }
        Err(e) => End::Io(e),
    };
    let current = shared.sessions.unregister(&device, registration.id);
    if current {
        let services = Arc::clone(&shared.services);
        let d = device.clone();
        Box::pin(blocking(move || services.disconnected(&d))).await;
    }
    let _ = stream.shutdown().await;
    match end {
        End::Violation(why) => {
            GatewayMetrics::inc(&shared.metrics.protocol_errors, 1);
            if let Some(suppressed) = shared.refusals.allow() {
                tracing::warn!(%peer, %device, reason = %why, suppressed, "connection closed");
            }
        }
        End::Io(e) => tracing::debug!(%peer, %device, error = %e, "connection lost"),
        End::KeepAlive => tracing::info!(%peer, %device, "keep-alive expired; connection closed"),
        End::Replaced => {
            tracing::info!(%peer, %device, "a newer connection for this device replaced this one")
        }
        End::Revoked(why) => {
            shared.metrics.revoked(why);
            let reason = match why {
                Revocation::Deleted => "the device was deleted",
                Revocation::Disabled => "the device was disabled",
                Revocation::Credential => "the key it authenticated with was replaced",
                Revocation::Expired => "its SAS token expired",
            };
            tracing::info!(%peer, %device, reason, "connection closed by the hub")
        }
        End::PeerClosed | End::Disconnect | End::ShuttingDown | End::NotStored => {
            tracing::debug!(%peer, %device, "device disconnected")
        }
    }
}

/// Runs a hub-service call off the I/O threads (it may touch the registry on disk).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Reads the CONNECT within the deadline and authenticates it. On refusal `out` holds the
/// CONNACK to send.
async fn handshake<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    shared: &Shared,
    deadline: Instant,
) -> Result<Accepted, String>
where
    S: AsyncRead + Unpin,
{
    loop {
        match codec::decode(buf, super::MAX_CONNECT_BYTES) {
            Ok(Some(Inbound::Connect { connect, login, .. })) => {
                let hub = &shared.hub_name;
                return match authenticate(
                    &connect,
                    login.as_ref(),
                    hub,
                    &*shared.directory,
                    now_secs(),
                ) {
                    Ok(identity) => Ok(Accepted {
                        identity: Arc::new(identity),
                        keep_alive: connect.keep_alive,
                        clean_session: connect.clean_session,
                    }),
                    Err(refusal) => {
                        codec::connack(refusal.code, false, out);
                        Err(format!("{} (CONNACK {})", refusal.reason, refusal.code))
                    }
                };
            }
            Ok(Some(other)) => {
                return Err(format!(
                    "first packet must be CONNECT, got {}",
                    other.name()
                ));
            }
            Err(codec::CodecError::TooLarge(n)) => {
                return Err(format!(
                    "first packet claims {n} bytes; a CONNECT may have at most {}",
                    super::MAX_CONNECT_BYTES
                ));
            }
            Err(codec::CodecError::ProtocolLevel(l)) => {
                codec::connack(1, false, out);
                return Err(format!(
                    "unsupported MQTT protocol level {l}; Weir speaks MQTT 3.1.1"
                ));
            }
            Err(e) => return Err(e.to_string()),
            Ok(None) => {}
        }
        buf.reserve(128);
        match timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) => return Err("no CONNECT within the connect timeout".into()),
            Ok(Ok(0)) => return Err("closed before CONNECT".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("read error before CONNECT: {e}")),
        }
    }
}

/// The idle limit for a keep-alive: 1.5 times it, as IoT Hub does, with 0 meaning the
/// hub's maximum.
fn idle_limit(keep_alive: u16) -> Duration {
    let ka = if keep_alive == 0 {
        1767
    } else {
        keep_alive.min(1767)
    };
    Duration::from_millis(u64::from(ka) * 1500)
}

/// The state of an authenticated connection's loop.
struct Connection<'a> {
    shared: &'a Shared,
    id: &'a Identity,
    features: &'a Features,
    /// The subscription filters, as stored for a persistent session.
    filters: Vec<String>,
    clean_session: bool,
    /// Cloud-to-device messages sent and not yet acknowledged: packet id → lock.
    inflight: HashMap<u16, u64>,
    next_pkid: u16,
}

impl Connection<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn run<S>(
        &mut self,
        stream: &mut S,
        mut buf: BytesMut,
        mut out: BytesMut,
        outbox: &Outbox,
        keep_alive: u16,
        kick: &Kick,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let idle = idle_limit(keep_alive);
        let expires = self.id.expires.and_then(expiry_instant);
        let mut deadline = Instant::now() + idle;
        let mut read_size = MIN_READ;
        let mut batch: Vec<Event> = Vec::new();
        let mut acks: Vec<u16> = Vec::new();
        loop {
            if buf.capacity() - buf.len() < read_size {
                buf.reserve(read_size);
            }
            let wake_at = expires.map_or(deadline, |x| x.min(deadline));
            let n = tokio::select! {
                biased;
                why = kick.kicked() => return End::from(why),
                _ = shutdown.changed() => return End::ShuttingDown,
                _ = outbox.ready.notified() => {
                    for p in outbox.take() {
                        self.encode_outbound(p, &mut out);
                    }
                    if let Err(e) = stream.write_all(&out).await {
                        return End::Io(e);
                    }
                    out.clear();
                    continue;
                }
                r = timeout_at(wake_at, stream.read_buf(&mut buf)) => match r {
                    Err(_) if expires.is_some_and(|x| Instant::now() >= x) => {
                        return End::Revoked(Revocation::Expired);
                    }
                    Err(_) => return End::KeepAlive,
                    Ok(Ok(0)) => return End::PeerClosed,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return End::Io(e),
                },
            };
            deadline = Instant::now() + idle;
            GatewayMetrics::inc(&self.shared.metrics.bytes_in, n as u64);
            // Grow reads while the peer keeps them full; shrink back when it goes quiet.
            read_size = if n >= read_size {
                (read_size * 2).min(MAX_READ)
            } else {
                MIN_READ.max(n)
            };

            let mut disconnect = false;
            loop {
                let packet = match codec::decode(&mut buf, self.shared.config.max_message_bytes) {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(codec::CodecError::TooLarge(n)) => {
                        return End::Violation(format!(
                            "message of {n} bytes exceeds the limit of {} bytes (mqtt.max_message_bytes)",
                            self.shared.config.max_message_bytes
                        ));
                    }
                    Err(e) => return End::Violation(e.to_string()),
                };
                match packet {
                    Inbound::Publish(p) => {
                        if p.qos > 1 {
                            return End::Violation("QoS 2 is not supported".into());
                        }
                        let topic = match p.topic_str() {
                            Ok(t) => t.to_owned(),
                            Err(e) => return End::Violation(e.to_string()),
                        };
                        if let Some(req) = requests::parse(&topic) {
                            // PUBACKs go out in the order the PUBLISHes came (MQTT 3.1.1
                            // §4.6): behind telemetry still waiting to be durable, this one
                            // waits too.
                            if p.qos == 1 && acks.is_empty() {
                                codec::puback(p.pkid, &mut out);
                            } else if p.qos == 1 {
                                acks.push(p.pkid);
                            }
                            // Boxed: rare, and it would otherwise grow every connection's
                            // future (an idle connection should stay under 2 KiB).
                            Box::pin(self.request(req, p.payload, &mut out)).await;
                        } else if let Err(why) =
                            accept_publish(p, &topic, self.id, &mut batch, &mut acks)
                        {
                            return End::Violation(why);
                        }
                    }
                    Inbound::PingReq => codec::pingresp(&mut out),
                    Inbound::Subscribe(s) => {
                        let mut granted = Vec::with_capacity(s.filters.len());
                        for f in &s.filters {
                            let Some(feature) = feature_of(&f.path, self.id.device_id.as_str())
                            else {
                                return End::Violation(format!(
                                    "subscription to {:?} is not allowed for this device",
                                    clip(&f.path)
                                ));
                            };
                            self.features.set(feature, true);
                            if !self.filters.contains(&f.path) {
                                self.filters.push(f.path.clone());
                            }
                            granted.push(Some((f.qos as u8).min(1)));
                        }
                        Box::pin(self.store_filters()).await;
                        codec::suback(s.pkid, &granted, &mut out);
                        if s.filters.iter().any(|f| {
                            feature_of(&f.path, self.id.device_id.as_str())
                                == Some(Feature::CloudToDevice)
                        }) {
                            // Messages may have been waiting for this subscription.
                            let services = Arc::clone(&self.shared.services);
                            let d = self.id.device_id.clone();
                            tokio::task::spawn_blocking(move || services.c2d_ready(&d));
                        }
                    }
                    Inbound::Unsubscribe(u) => {
                        for f in &u.filters {
                            if let Some(feature) = feature_of(f, self.id.device_id.as_str()) {
                                self.features.set(feature, false);
                            }
                            self.filters.retain(|x| x != f);
                        }
                        Box::pin(self.store_filters()).await;
                        codec::unsuback(u.pkid, &mut out);
                    }
                    Inbound::PubAck(pkid) => {
                        if let Some(lock) = self.inflight.remove(&pkid) {
                            let services = Arc::clone(&self.shared.services);
                            let d = self.id.device_id.clone();
                            Box::pin(blocking(move || services.c2d_acknowledged(&d, lock))).await;
                        }
                    }
                    Inbound::Disconnect => {
                        disconnect = true;
                        break;
                    }
                    other => {
                        return End::Violation(format!("unexpected {} packet", other.name()));
                    }
                }
            }
            // Nothing is acknowledged once the hub has told this connection to end, or
            // after its token expired: the REST call that revoked it has returned.
            if let Some(why) = kick.reason() {
                return End::from(why);
            }
            if expires.is_some_and(|x| Instant::now() >= x) {
                return End::Revoked(Revocation::Expired);
            }
            if !batch.is_empty() {
                let count = batch.len() as u64;
                // Waiting here is the backpressure: nothing more is read from this device
                // until its events are queued, and, for QoS 1, durable.
                let queued = self
                    .shared
                    .ingest
                    .ingest(&self.id.device_id, std::mem::take(&mut batch))
                    .await;
                let durable = match queued {
                    Ok(ack) if !acks.is_empty() => ack.await,
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = durable {
                    tracing::warn!(device = %self.id.device_id, error = %e, "messages not stored; closing without acknowledging them");
                    return End::NotStored;
                }
                GatewayMetrics::inc(&self.shared.metrics.messages_in, count);
                for pkid in acks.drain(..) {
                    codec::puback(pkid, &mut out);
                }
            }
            if !out.is_empty() {
                if let Err(e) = stream.write_all(&out).await {
                    return End::Io(e);
                }
                out.clear();
            }
            if disconnect {
                return End::Disconnect;
            }
            if buf.is_empty() && read_size == MIN_READ && buf.capacity() > 4 * MIN_READ {
                // Give an idle connection's buffer back.
                buf = BytesMut::new();
            }
        }
    }

    async fn store_filters(&self) {
        if self.clean_session {
            return;
        }
        let services = Arc::clone(&self.shared.services);
        let (d, filters) = (self.id.device_id.clone(), self.filters.clone());
        blocking(move || services.store_subscriptions(&d, &filters)).await;
    }

    /// Encodes a publish from the hub; QoS 1 ones get a packet id and are tracked until
    /// the device acknowledges them. One MQTT cannot carry is dropped and logged.
    fn encode_outbound(&mut self, p: DevicePublish, out: &mut BytesMut) {
        let mut pkid = 0;
        if p.qos > 0 {
            loop {
                self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
                if !self.inflight.contains_key(&self.next_pkid) {
                    break;
                }
            }
            pkid = self.next_pkid;
        }
        match codec::publish(&p.topic, &p.payload, p.qos.min(1), pkid, false, out) {
            Ok(()) => {
                if let Some(lock) = p.lock.filter(|_| pkid != 0) {
                    self.inflight.insert(pkid, lock);
                }
            }
            Err(e) => {
                tracing::error!(device = %self.id.device_id, error = %e, "a message for the device cannot be sent over MQTT; dropped")
            }
        }
    }

    /// Answers a twin request or passes on a method response. Twin responses go out even
    /// without a subscription to `$iothub/twin/res/#` (the SDK relies on it).
    async fn request(&self, req: DeviceRequest<'_>, payload: Bytes, out: &mut BytesMut) {
        let services = Arc::clone(&self.shared.services);
        let d = self.id.device_id.clone();
        match req {
            DeviceRequest::TwinGet { rid } => {
                let outcome = blocking(move || services.twin(&d)).await;
                let (topic, body) = twin_reply(rid, outcome, |twin| (200, None, twin.to_string()));
                self.reply(&topic, &body, out);
            }
            DeviceRequest::TwinPatchReported { rid } => {
                let outcome = blocking(move || services.patch_reported(&d, &payload)).await;
                let (topic, body) =
                    twin_reply(rid, outcome, |version| (204, Some(version), String::new()));
                self.reply(&topic, &body, out);
            }
            DeviceRequest::MethodResponse { status, rid } => {
                let rid = rid.to_owned();
                blocking(move || services.method_response(&d, &rid, status, payload)).await;
            }
        }
    }
}

impl Connection<'_> {
    /// Writes a twin response; one whose request id makes the topic too long for MQTT is
    /// dropped (the device chose that id).
    fn reply(&self, topic: &str, body: &str, out: &mut BytesMut) {
        if let Err(e) = codec::publish(topic, body.as_bytes(), 0, 0, false, out)
            && self.shared.refusals.allow().is_some()
        {
            tracing::warn!(device = %self.id.device_id, error = %e, "twin response not sent");
        }
    }
}

/// The response topic and body for a twin request: `ok` gives status, version and body on
/// success; a failed or lost service call answers with its status (500 when lost).
fn twin_reply<T>(
    rid: &str,
    outcome: Option<Result<T, ServiceError>>,
    ok: impl FnOnce(T) -> (u16, Option<u64>, String),
) -> (String, String) {
    let (status, version, body) = match outcome {
        Some(Ok(value)) => ok(value),
        Some(Err(e)) => (e.status, None, error_body(&e.message)),
        None => (500, None, error_body("internal error")),
    };
    (requests::twin_response(status, rid, version), body)
}

/// A topic as a log line shows it: enough to recognise, never kilobytes.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(128) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "message": message }).to_string()
}

fn accept_publish(
    p: Publish,
    topic: &str,
    id: &Identity,
    batch: &mut Vec<Event>,
    acks: &mut Vec<u16>,
) -> Result<(), String> {
    let Some(DeviceTopic::Telemetry { bag }) = classify(topic, id.device_id.as_str()) else {
        return Err(format!(
            "publish to {:?} is not allowed for this device",
            clip(topic)
        ));
    };
    let (system, properties) = decode_bag(bag).map_err(|e| format!("bad property bag: {e}"))?;
    batch.push(Event {
        source: EventSource::DeviceMessages,
        device_id: id.device_id.clone(),
        module_id: None,
        generation_id: Some(Arc::clone(&id.generation_id)),
        auth_method: id.auth,
        // The log assigns the enqueued time and the offset.
        enqueued_ms: 0,
        offset: 0,
        packet_id: (p.qos == 1).then_some(p.pkid),
        redelivered: p.dup,
        system,
        properties,
        body: p.payload,
    });
    if p.qos == 1 {
        acks.push(p.pkid);
    }
    Ok(())
}

impl Shared {
    pub(crate) fn open_connection(&self) {
        self.metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        GatewayMetrics::inc(&self.metrics.connections_total, 1);
    }

    pub(crate) fn close_connection(&self) {
        self.metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}
