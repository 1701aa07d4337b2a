//! Runs one MQTT [`Session`] over a byte stream: reads into its buffer, writes what it
//! produces, carries out its [`Action`]s against the hub, delivers what the hub sends, and
//! wakes it when time is up. Protocol decisions are the session's; this file only does
//! I/O and waiting.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};
use weir_core::{Connection, DeviceId, Outbox, Peer, Registration, Role};

use super::Mqtt;
use super::dialect::C2dLock;
use super::session::{Action, End, Session};
use crate::context::Admitted;
use crate::metrics::ProtocolMetrics;

/// Reads are sized to what the peer sends: small while idle, up to this when busy.
const MAX_READ: usize = 64 * 1024;
const MIN_READ: usize = 64;

/// A registered connection: how the hub reaches it and ends it.
struct Live {
    registration: Registration,
    outbox: Arc<Outbox>,
    device: DeviceId,
}

/// Counts the connection for as long as it lives.
struct Counted<'a>(&'a ProtocolMetrics);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// Something was queued for the connection, or it was told to end.
async fn signalled(live: &Option<Live>) {
    match live {
        Some(l) => l.outbox.ready.notified().await,
        None => std::future::pending().await,
    }
}

pub async fn serve<S>(mut stream: S, peer: Peer, mqtt: &Mqtt, admitted: Admitted)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    mqtt.metrics.opened();
    let _counted = Counted(&mqtt.metrics);
    let Admitted {
        connection: _slot,
        pending,
    } = admitted;
    let mut pending = Some(pending);
    let mut shutdown = mqtt.ctx.shutdown.clone();
    let addr = peer.addr;
    let mut session = Session::new(
        Arc::clone(&mqtt.dialect),
        mqtt.session,
        peer,
        Instant::now(),
    );
    if !mqtt.ctx.admission.throttle.is_off() {
        session.throttle(Arc::clone(&mqtt.ctx.admission.throttle));
    }
    let mut buf = BytesMut::new();
    let mut read_size = MIN_READ;
    let mut live: Option<Live> = None;
    // An authenticated registration with the provisioning service (no `live` entry).
    let mut registering = false;
    let end = loop {
        if let Some(out) = session.output() {
            if let Err(e) = stream.write_all(out).await {
                session.close(End::Io(e));
            }
            session.written();
        }
        if let Some(action) = session.next_action() {
            if let Action::Close(end) = action {
                break end;
            }
            // Boxed: rare, and it would otherwise grow every connection's future (an idle
            // connection should stay under 2 KiB).
            if let Action::Register { identity, .. } = &action {
                registering = identity.role == Role::Registration;
            }
            Box::pin(act(action, &mut session, &mut live, &mut buf, mqtt)).await;
            if live.is_some() || registering {
                // Authenticated: its pre-authentication slot is free for others.
                pending.take();
            }
            continue;
        }
        if buf.is_empty() && read_size == MIN_READ {
            // Quiet (nothing buffered, small reads): about to wait, give back what a
            // busier moment grew.
            if buf.capacity() > MIN_READ {
                buf = BytesMut::new();
            }
            session.shrink();
        }
        if buf.capacity() - buf.len() < read_size {
            buf.reserve(read_size);
        }
        let deadline = session.deadline().unwrap_or_else(Instant::now);
        tokio::select! {
            biased;
            _ = shutdown.changed() => session.close(End::ShuttingDown),
            () = signalled(&live) => {
                if let Some(l) = &live {
                    if let Some(why) = l.outbox.kicked() {
                        session.close(End::from(why));
                        continue;
                    }
                    for m in l.outbox.take() {
                        if let Err(e) = session.to_device(&m) {
                            tracing::error!(device = %l.device, error = %e, "a message for the device cannot be sent over MQTT; dropped");
                        }
                    }
                }
            }
            r = timeout_at(deadline, stream.read_buf(&mut buf)) => match r {
                Err(_) => session.timeout(Instant::now()),
                Ok(Ok(0)) => session.close(End::PeerClosed),
                Ok(Ok(n)) => {
                    ProtocolMetrics::inc(&mqtt.metrics.bytes_in, n as u64);
                    // Grow reads while the peer keeps them full; shrink back when it goes
                    // quiet.
                    read_size = if n >= read_size {
                        (read_size * 2).min(MAX_READ)
                    } else {
                        MIN_READ.max(n)
                    };
                    session.received(&mut buf, Instant::now(), weir_core::time::now_ms());
                }
                Ok(Err(e)) => session.close(End::Io(e)),
            },
        }
    };
    if let Some(out) = session.output() {
        let _ = stream.write_all(out).await;
    }
    let _ = stream.shutdown().await;
    if registering {
        tracing::debug!(peer = %addr, ?end, "registration connection ended");
        return;
    }
    finish(end, &session, live, mqtt, addr).await;
}

/// Carries out one action of the session.
async fn act(
    action: Action,
    session: &mut Session,
    live: &mut Option<Live>,
    buf: &mut BytesMut,
    mqtt: &Mqtt,
) {
    let services = &mqtt.ctx.services;
    match action {
        Action::Register {
            identity,
            features,
            clean,
        } => {
            if identity.role == Role::Registration {
                // A registration is no connection of the device: nothing to register,
                // replace or revoke.
                tracing::debug!(peer = %session.peer().addr, registration = %identity.device_id, "device registering");
                session.registered(Vec::new());
                session.received(buf, Instant::now(), weir_core::time::now_ms());
                return;
            }
            let device = identity.device_id.clone();
            let outbox = Arc::new(Outbox::default());
            let registration = mqtt.ctx.connections.register(Connection {
                protocol: mqtt.protocol,
                identity,
                outbox: Arc::clone(&outbox),
                features,
            });
            // A persistent session (clean session 0) keeps its subscriptions across
            // connections: the Azure SDK never subscribes again after it reconnects.
            let filters = if clean {
                Vec::new()
            } else {
                services.stored_subscriptions(&device).await
            };
            tracing::debug!(peer = %session.peer().addr, %device, "device connected");
            *live = Some(Live {
                registration,
                outbox,
                device,
            });
            session.registered(filters);
            // Packets that came with the CONNECT.
            session.received(buf, Instant::now(), weir_core::time::now_ms());
        }
        Action::Connected => {
            if let Some(l) = live {
                services.connected(&l.device).await;
            }
        }
        Action::Ingest { events, acks } => {
            let Some(l) = live.as_ref() else { return };
            let count = events.len() as u64;
            // Waiting here is the backpressure: nothing more is read from this device
            // until its events are queued, and, for QoS 1, durable.
            let stored = match mqtt.ctx.ingest.ingest(&l.device, events).await {
                Ok(ack) if acks => ack.await,
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            // Nothing is acknowledged once the hub has told this connection to end: the
            // REST call that revoked it has returned.
            if let Some(why) = l.outbox.kicked() {
                session.close(End::from(why));
                return;
            }
            if stored.is_ok() {
                ProtocolMetrics::inc(&mqtt.metrics.messages_in, count);
            }
            session.ingested(stored, Instant::now());
        }
        Action::TwinGet { rid } => {
            if let Some(l) = live {
                let twin = services.twin(&l.device).await;
                session.twin_read(&rid, twin);
            }
        }
        Action::ChildMethodResponse {
            child,
            rid,
            status,
            payload,
        } => {
            if live.is_some() {
                services.method_response(&child, &rid, status, payload);
            }
        }
        Action::ChildrenGet { rid } => {
            if let Some(l) = live {
                let children = services.children(&l.device).await;
                session.children_read(&rid, children);
            }
        }
        Action::TwinPatch { rid, patch } => {
            if let Some(l) = live {
                let version = services.patch_reported(&l.device, patch).await;
                session.twin_patched(&rid, version);
            }
        }
        Action::MethodResponse {
            rid,
            status,
            payload,
        } => {
            if let Some(l) = live {
                services.method_response(&l.device, &rid, status, payload);
            }
        }
        Action::C2dAcknowledged(C2dLock { lock, child }) => {
            // A child's id came from the hub's own delivery, never from the device.
            let device = live.as_ref().and_then(|l| match child.as_deref() {
                Some(c) => DeviceId::parse(c).ok(),
                None => Some(l.device.clone()),
            });
            if let Some(d) = device {
                services.c2d_acknowledged(&d, lock).await;
            }
        }
        Action::StoreSubscriptions(filters) => {
            if let Some(l) = live {
                services.store_subscriptions(&l.device, filters).await;
            }
        }
        Action::C2dReady => {
            if let Some(l) = live {
                tokio::spawn(services.c2d_ready(&l.device));
            }
        }
        Action::Provision {
            rid,
            operation_id,
            payload,
        } => {
            let (Some(service), Some(who)) = (&mqtt.ctx.provisioning, session.identity().cloned())
            else {
                return;
            };
            let reply = match operation_id {
                None => service.register(who, payload).await,
                Some(op) => service.status(who, op).await,
            };
            session.provisioned(&rid, reply);
        }
        Action::Close(_) => {}
    }
}

/// Unregisters the connection (the hub hears of the disconnect unless a newer connection
/// took its place) and logs how it ended.
async fn finish(
    end: End,
    session: &Session,
    live: Option<Live>,
    mqtt: &Mqtt,
    peer: std::net::SocketAddr,
) {
    let m = &mqtt.metrics;
    let Some(l) = live else {
        let reason = match end {
            End::ShuttingDown => return,
            End::Throttled(t) => {
                ProtocolMetrics::inc(&m.connects_throttled, 1);
                if let Some(suppressed) = mqtt.ctx.admission.refusals.allow() {
                    tracing::warn!(%peer, reason = t.reason(), suppressed, "CONNACK 3: retry later");
                }
                return;
            }
            End::Refused(r) | End::Violation(r) => r,
            End::PeerClosed | End::Disconnect => "closed before CONNECT".into(),
            End::Io(e) => format!("read error before CONNECT: {e}"),
            other => format!("{other:?}"),
        };
        ProtocolMetrics::inc(&m.connects_refused, 1);
        if let Some(suppressed) = mqtt.ctx.admission.refusals.allow() {
            tracing::warn!(%peer, %reason, suppressed, "connection refused");
        }
        return;
    };
    if mqtt
        .ctx
        .connections
        .unregister(&l.device, l.registration.id)
    {
        mqtt.ctx.services.disconnected(&l.device).await;
    }
    let device = &l.device;
    debug_assert!(session.is_closed());
    match end {
        End::Violation(why) => {
            ProtocolMetrics::inc(&m.protocol_errors, 1);
            if let Some(suppressed) = mqtt.ctx.admission.refusals.allow() {
                tracing::warn!(%peer, %device, reason = %why, suppressed, "connection closed");
            }
        }
        End::Io(e) => tracing::debug!(%peer, %device, error = %e, "connection lost"),
        End::KeepAlive => tracing::info!(%peer, %device, "keep-alive expired; connection closed"),
        End::Replaced => {
            tracing::info!(%peer, %device, "a newer connection for this device replaced this one")
        }
        End::Revoked(why) => {
            m.revoked(why);
            tracing::info!(%peer, %device, reason = why.reason(), "connection closed by the hub")
        }
        End::NotStored(e) => {
            tracing::warn!(%peer, %device, error = %e, "messages not stored; closed without acknowledging them")
        }
        End::Refused(reason) => tracing::warn!(%peer, %device, %reason, "connection refused"),
        End::Throttled(t) => {
            tracing::warn!(%peer, %device, reason = t.reason(), "connection refused")
        }
        End::PeerClosed | End::Disconnect | End::ShuttingDown => {
            tracing::debug!(%peer, %device, "device disconnected")
        }
    }
}
