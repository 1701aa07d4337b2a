//! One MQTT connection: CONNECT, then a loop of read → decode → ingest → acknowledge.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};
use weir_core::time::now_secs;
use weir_core::{Event, EventSource};

use super::Shared;
use super::codec::{self, Inbound, Publish};
use super::connect::{Identity, authenticate};
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
    ShuttingDown,
    NotStored,
    KeepAlive,
    Io(std::io::Error),
    Violation(String),
}

/// Filters a device may subscribe to (the features of spec §2.3).
fn allowed_filter(filter: &str, device: &str) -> bool {
    let c2d = format!("devices/{device}/messages/devicebound/#");
    filter == c2d
        || filter == "$iothub/methods/POST/#"
        || filter == "$iothub/twin/res/#"
        || filter == "$iothub/twin/PATCH/properties/desired/#"
}

pub(crate) async fn serve<S>(
    mut stream: S,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let deadline = Instant::now() + shared.config.connect_timeout;
    let (identity, keep_alive) =
        match handshake(&mut stream, &mut buf, &mut out, &shared, deadline).await {
            Ok(x) => x,
            Err(reason) => {
                GatewayMetrics::inc(&shared.metrics.connects_refused, 1);
                tracing::warn!(%peer, %reason, "connection refused");
                let _ = stream.write_all(&out).await;
                let _ = stream.shutdown().await;
                return;
            }
        };
    let device = identity.device_id.clone();
    let registration = shared.sessions.register(&device);
    tracing::debug!(%peer, %device, "device connected");
    codec::connack(0, false, &mut out);
    let end = match stream.write_all(&out).await {
        Ok(()) => {
            // An idle connection keeps no buffers: they are allocated again on demand.
            out = BytesMut::new();
            if buf.is_empty() {
                buf = BytesMut::new();
            }
            run(
                &mut stream,
                buf,
                out,
                &identity,
                keep_alive,
                &shared,
                &registration.kicked,
                &mut shutdown,
            )
            .await
        }
        Err(e) => End::Io(e),
    };
    shared.sessions.unregister(&device, registration.id);
    let _ = stream.shutdown().await;
    match end {
        End::Violation(why) => {
            GatewayMetrics::inc(&shared.metrics.protocol_errors, 1);
            tracing::warn!(%peer, %device, reason = %why, "connection closed");
        }
        End::Io(e) => tracing::debug!(%peer, %device, error = %e, "connection lost"),
        End::KeepAlive => tracing::info!(%peer, %device, "keep-alive expired; connection closed"),
        End::Replaced => {
            tracing::info!(%peer, %device, "a newer connection for this device replaced this one")
        }
        End::PeerClosed | End::Disconnect | End::ShuttingDown | End::NotStored => {
            tracing::debug!(%peer, %device, "device disconnected")
        }
    }
}

/// Reads the CONNECT within the deadline and authenticates it. On refusal `out` holds the
/// CONNACK to send.
async fn handshake<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    shared: &Shared,
    deadline: Instant,
) -> Result<(Identity, u16), String>
where
    S: AsyncRead + Unpin,
{
    loop {
        match codec::decode(buf, shared.config.max_message_bytes) {
            Ok(Some(Inbound::Connect { connect, login, .. })) => {
                let hub = &shared.hub_name;
                return match authenticate(
                    &connect,
                    login.as_ref(),
                    hub,
                    &*shared.directory,
                    now_secs(),
                ) {
                    Ok(id) => Ok((id, connect.keep_alive)),
                    Err(refusal) => {
                        codec::connack(refusal.code, false, out);
                        Err(format!("{} (CONNACK {})", refusal.reason, refusal.code))
                    }
                };
            }
            Ok(Some(other)) => return Err(format!("first packet must be CONNECT, got {other:?}")),
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

#[allow(clippy::too_many_arguments)]
async fn run<S>(
    stream: &mut S,
    mut buf: BytesMut,
    mut out: BytesMut,
    id: &Identity,
    keep_alive: u16,
    shared: &Shared,
    kicked: &tokio::sync::Notify,
    shutdown: &mut watch::Receiver<bool>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let idle = idle_limit(keep_alive);
    let mut deadline = Instant::now() + idle;
    let mut read_size = MIN_READ;
    let mut batch: Vec<Event> = Vec::new();
    let mut acks: Vec<u16> = Vec::new();
    loop {
        if buf.capacity() - buf.len() < read_size {
            buf.reserve(read_size);
        }
        let n = tokio::select! {
            biased;
            _ = kicked.notified() => return End::Replaced,
            _ = shutdown.changed() => return End::ShuttingDown,
            r = timeout_at(deadline, stream.read_buf(&mut buf)) => match r {
                Err(_) => return End::KeepAlive,
                Ok(Ok(0)) => return End::PeerClosed,
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return End::Io(e),
            },
        };
        deadline = Instant::now() + idle;
        GatewayMetrics::inc(&shared.metrics.bytes_in, n as u64);
        // Grow reads while the peer keeps them full; shrink back when it goes quiet.
        read_size = if n >= read_size {
            (read_size * 2).min(MAX_READ)
        } else {
            MIN_READ.max(n)
        };

        let mut disconnect = false;
        loop {
            let packet = match codec::decode(&mut buf, shared.config.max_message_bytes) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(codec::CodecError::TooLarge(n)) => {
                    return End::Violation(format!(
                        "message of {n} bytes exceeds the limit of {} bytes (mqtt.max_message_bytes)",
                        shared.config.max_message_bytes
                    ));
                }
                Err(e) => return End::Violation(e.to_string()),
            };
            match packet {
                Inbound::Publish(p) => {
                    if let Err(why) = accept_publish(p, id, &mut batch, &mut acks) {
                        return End::Violation(why);
                    }
                }
                Inbound::PingReq => codec::pingresp(&mut out),
                Inbound::Subscribe(s) => {
                    if let Some(f) = s
                        .filters
                        .iter()
                        .find(|f| !allowed_filter(&f.path, id.device_id.as_str()))
                    {
                        return End::Violation(format!(
                            "subscription to {:?} is not allowed for this device",
                            f.path
                        ));
                    }
                    let granted: Vec<Option<u8>> = s
                        .filters
                        .iter()
                        .map(|f| Some((f.qos as u8).min(1)))
                        .collect();
                    codec::suback(s.pkid, &granted, &mut out);
                }
                Inbound::Unsubscribe(u) => codec::unsuback(u.pkid, &mut out),
                Inbound::PubAck(_) => {}
                Inbound::Disconnect => {
                    disconnect = true;
                    break;
                }
                other => return End::Violation(format!("unexpected packet {other:?}")),
            }
        }
        if !batch.is_empty() {
            let count = batch.len() as u64;
            // Waiting here is the backpressure: nothing more is read from this device
            // until its events are queued, and, for QoS 1, durable.
            let queued = shared
                .ingest
                .ingest(&id.device_id, std::mem::take(&mut batch))
                .await;
            let durable = match queued {
                Ok(ack) if !acks.is_empty() => ack.await,
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = durable {
                tracing::warn!(device = %id.device_id, error = %e, "messages not stored; closing without acknowledging them");
                return End::NotStored;
            }
            GatewayMetrics::inc(&shared.metrics.messages_in, count);
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

fn accept_publish(
    p: Publish,
    id: &Identity,
    batch: &mut Vec<Event>,
    acks: &mut Vec<u16>,
) -> Result<(), String> {
    if p.qos > 1 {
        return Err("QoS 2 is not supported".into());
    }
    let topic = p.topic_str().map_err(|e| e.to_string())?;
    let Some(DeviceTopic::Telemetry { bag }) = classify(topic, id.device_id.as_str()) else {
        return Err(format!(
            "publish to {topic:?} is not allowed for this device"
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
