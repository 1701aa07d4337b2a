//! Runs one MQTT [`Session`] over a byte stream: reads into its buffer, writes what it
//! produces, carries out its [`Action`]s against the hub, delivers what the hub sends, and
//! wakes it when time is up. Protocol decisions are the session's; this file only does
//! I/O and waiting.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep, sleep_until};
use weir_core::{Connection, DeviceId, Identity, Outbox, Peer, Registration, Role};

use super::Mqtt;
use super::dialect::C2dLock;
use super::session::{Action, End, Session};
use crate::context::Admitted;
use crate::metrics::ProtocolMetrics;

/// Reads are sized to what the peer sends: small while idle, up to this when busy.
const MAX_READ: usize = 64 * 1024;
const MIN_READ: usize = 64;
/// A quiet connection (nothing buffered, small reads) reads into the stack and copies
/// what came: while it waits it holds no read buffer at all.
const STACK_READ: usize = 512;

/// A registered connection: how the hub reaches it and ends it.
struct Live {
    registration: Registration,
    outbox: Arc<Outbox>,
    identity: Arc<Identity>,
}

impl Live {
    fn device(&self) -> &DeviceId {
        &self.identity.device_id
    }
}

/// What ended a wait.
enum Woke {
    /// The hub is stopping (seen by a connection not yet registered).
    Stopping,
    /// Something was queued for the connection, or it was told to end.
    Signalled,
    Read(std::io::Result<usize>),
    /// The session's deadline passed.
    Deadline,
}

type Stopping = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The hub's shutdown, watched by a connection until it registers (from then on the
/// connection registry tells it through its outbox). Boxed, so a registered connection
/// gives it back.
fn stopping(mqtt: &Mqtt) -> Stopping {
    let mut shutdown = mqtt.ctx.shutdown.clone();
    Box::pin(async move {
        let _ = shutdown.changed().await;
    })
}

/// Reads what the peer sent into `buf`: through the stack when `quiet`, otherwise into
/// the room reserved in `buf`.
fn poll_read<S: AsyncRead + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    quiet: bool,
) -> Poll<std::io::Result<usize>> {
    if quiet {
        let mut stack = [0u8; STACK_READ];
        let mut read = ReadBuf::new(&mut stack);
        ready!(Pin::new(stream).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        return Poll::Ready(Ok(read.filled().len()));
    }
    pin!(stream.read_buf(buf)).poll(cx)
}

/// Serves one connection until it ends. Not an `async fn`: its arguments would be kept
/// in the future beside the state built from them, and every idle connection holds this
/// future.
pub fn serve<S>(
    stream: S,
    peer: Peer,
    mqtt: Arc<Mqtt>,
    admitted: Admitted,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn::new(stream, peer, mqtt, admitted);
    async move { conn.run().await }
}

/// One connection: its stream, its session, and what the driver keeps between waits.
struct Conn<S> {
    stream: S,
    session: Session,
    mqtt: Arc<Mqtt>,
    buf: BytesMut,
    /// How much the next read asks for (at most [`MAX_READ`]).
    read_size: u32,
    live: Option<Live>,
    /// An authenticated registration with the provisioning service (no `live` entry).
    registering: bool,
    /// Until the connection registers (boxed: a registered connection holds 8 bytes).
    unregistered: Option<Box<Unregistered>>,
    _slot: OwnedSemaphorePermit,
}

/// What a connection holds until it registers.
struct Unregistered {
    /// The pre-authentication slot, given back once it authenticates.
    pending: Option<OwnedSemaphorePermit>,
    /// The hub's shutdown; once registered, the connection registry tells it instead.
    stopping: Stopping,
    /// The session's deadline; once registered, the registry's sweep enforces it
    /// instead (`ConnectionRegistry::sweep`).
    timer: Pin<Box<Sleep>>,
}

impl<S> Drop for Conn<S> {
    fn drop(&mut self) {
        self.mqtt.metrics.closed();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S, peer: Peer, mqtt: Arc<Mqtt>, admitted: Admitted) -> Self {
        mqtt.metrics.opened();
        let mut session = Session::new(
            Arc::clone(&mqtt.dialect),
            mqtt.session,
            peer,
            Instant::now(),
        );
        if !mqtt.ctx.admission.throttle.is_off() {
            session.throttle(Arc::clone(&mqtt.ctx.admission.throttle));
        }
        Conn {
            stream,
            session,
            unregistered: Some(Box::new(Unregistered {
                pending: Some(admitted.pending),
                stopping: stopping(&mqtt),
                timer: Box::pin(sleep_until(Instant::now())),
            })),
            mqtt,
            buf: BytesMut::new(),
            read_size: MIN_READ as u32,
            live: None,
            registering: false,
            _slot: admitted.connection,
        }
    }

    async fn run(&mut self) {
        let end = self.until_end().await;
        // Boxed: run once, and its state would otherwise be held by every idle connection.
        Box::pin(self.close(end)).await;
    }

    /// Sends what is left, closes the stream, and unregisters the connection.
    async fn close(&mut self, end: End) {
        if let Some(out) = self.session.output() {
            let _ = self.stream.write_all(out).await;
        }
        let _ = self.stream.shutdown().await;
        let addr = self.session.peer().addr;
        if self.registering {
            tracing::debug!(peer = %addr, ?end, "registration connection ended");
            return;
        }
        finish(end, &self.session, self.live.take(), &self.mqtt, addr).await;
    }

    /// Serves the session until it ends, and says how.
    async fn until_end(&mut self) -> End {
        loop {
            if let Some(out) = self.session.output() {
                if let Err(e) = self.stream.write_all(out).await {
                    self.session.close(End::Io(e));
                }
                self.session.written();
            }
            if self.session.has_action() {
                // Boxed: an action's state would otherwise grow every connection's future.
                match Box::pin(self.act_next()).await {
                    Some(end) => return end,
                    None => continue,
                }
            }
            let quiet = self.ready_to_wait();
            let woke = self.wait(quiet).await;
            self.woke(woke, quiet);
        }
    }

    /// Gives back what a busier moment grew and sets the session's deadline where it is
    /// enforced. True when the connection is quiet (see [`STACK_READ`]).
    fn ready_to_wait(&mut self) -> bool {
        let read_size = self.read_size as usize;
        let quiet = self.buf.is_empty() && read_size <= STACK_READ;
        if quiet {
            if self.buf.capacity() > 0 {
                self.buf = BytesMut::new();
            }
            self.session.shrink();
        } else if self.buf.capacity() - self.buf.len() < read_size {
            self.buf.reserve(read_size);
        }
        let deadline = self.session.deadline().unwrap_or_else(Instant::now);
        if let Some(u) = self.unregistered.as_mut() {
            if u.timer.deadline() != deadline {
                u.timer.as_mut().reset(deadline);
            }
        } else if let Some(l) = &self.live {
            l.outbox
                .set_deadline(self.mqtt.ctx.connections.clock_ms(deadline));
        }
        quiet
    }

    /// Waits for the first wake-up source, in this order of priority. One future over
    /// all of them: a registered idle connection holds nothing for it but its waker, in
    /// the outbox.
    fn wait(&mut self, quiet: bool) -> impl Future<Output = Woke> + '_ {
        poll_fn(move |cx| {
            if let Some(u) = self.unregistered.as_mut()
                && u.stopping.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Woke::Stopping);
            }
            if let Some(l) = &self.live
                && l.outbox.poll_signalled(cx).is_ready()
            {
                return Poll::Ready(Woke::Signalled);
            }
            if let Poll::Ready(r) = poll_read(&mut self.stream, cx, &mut self.buf, quiet) {
                return Poll::Ready(Woke::Read(r));
            }
            if let Some(u) = self.unregistered.as_mut()
                && u.timer.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Woke::Deadline);
            }
            Poll::Pending
        })
    }

    fn woke(&mut self, woke: Woke, quiet: bool) {
        let session = &mut self.session;
        match woke {
            Woke::Stopping => {
                // Its future is done: never polled again.
                self.unregistered = None;
                session.close(End::ShuttingDown);
            }
            Woke::Signalled => {
                let Some(l) = &self.live else { return };
                if let Some(why) = l.outbox.kicked() {
                    session.close(End::from(why));
                    return;
                }
                for m in l.outbox.take() {
                    if let Err(e) = session.to_device(&m) {
                        tracing::error!(device = %l.device(), error = %e, "a message for the device cannot be sent over MQTT; dropped");
                    }
                }
                // Also how the registry's sweep says a deadline passed.
                session.timeout(Instant::now());
            }
            Woke::Deadline => session.timeout(Instant::now()),
            Woke::Read(Ok(0)) => session.close(End::PeerClosed),
            Woke::Read(Ok(n)) => {
                ProtocolMetrics::inc(&self.mqtt.metrics.bytes_in, n as u64);
                // Grow reads while the peer keeps them full; shrink back when it goes
                // quiet.
                let room = if quiet {
                    STACK_READ
                } else {
                    self.read_size as usize
                };
                let next = if n >= room {
                    (room * 2).min(MAX_READ)
                } else {
                    MIN_READ.max(n)
                };
                // At most MAX_READ: it fits.
                self.read_size = next as u32;
                session.received(&mut self.buf, Instant::now(), weir_core::time::now_ms());
            }
            Woke::Read(Err(e)) => session.close(End::Io(e)),
        }
    }

    /// Carries out the session's next action; its end when that is to close.
    async fn act_next(&mut self) -> Option<End> {
        let action = self.session.next_action()?;
        if let Action::Close(end) = action {
            return Some(end);
        }
        if let Action::Register { identity, .. } = &action {
            self.registering = identity.role == Role::Registration;
        }
        act(
            action,
            &mut self.session,
            &mut self.live,
            &mut self.buf,
            &self.mqtt,
        )
        .await;
        if self.live.is_some() {
            // The connection registry tells it of the shutdown now, and its
            // pre-authentication slot is free for others.
            self.unregistered = None;
        } else if self.registering
            && let Some(u) = self.unregistered.as_mut()
        {
            u.pending = None;
        }
        None
    }
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
                identity: Arc::clone(&identity),
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
                identity,
            });
            session.registered(filters);
            // Packets that came with the CONNECT.
            session.received(buf, Instant::now(), weir_core::time::now_ms());
        }
        Action::Connected => {
            if let Some(l) = live {
                services.connected(l.device()).await;
            }
        }
        Action::Ingest { events, acks } => {
            let Some(l) = live.as_ref() else { return };
            let count = events.len() as u64;
            // Waiting here is the backpressure: nothing more is read from this device
            // until its events are queued, and, for QoS 1, durable.
            let stored = match mqtt.ctx.ingest.ingest(l.device(), events).await {
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
                let twin = services.twin(l.device()).await;
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
                let children = services.children(l.device()).await;
                session.children_read(&rid, children);
            }
        }
        Action::TwinPatch { rid, patch } => {
            if let Some(l) = live {
                let version = services.patch_reported(l.device(), patch).await;
                session.twin_patched(&rid, version);
            }
        }
        Action::MethodResponse {
            rid,
            status,
            payload,
        } => {
            if let Some(l) = live {
                services.method_response(l.device(), &rid, status, payload);
            }
        }
        Action::C2dAcknowledged(C2dLock { lock, child }) => {
            // A child's id came from the hub's own delivery, never from the device.
            let device = live.as_ref().and_then(|l| match child.as_deref() {
                Some(c) => DeviceId::parse(c).ok(),
                None => Some(l.device().clone()),
            });
            if let Some(d) = device {
                services.c2d_acknowledged(&d, lock).await;
            }
        }
        Action::StoreSubscriptions(filters) => {
            if let Some(l) = live {
                services.store_subscriptions(l.device(), filters).await;
            }
        }
        Action::C2dReady => {
            if let Some(l) = live {
                tokio::spawn(services.c2d_ready(l.device()));
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
        .unregister(l.device(), l.registration.id)
    {
        mqtt.ctx.services.disconnected(l.device()).await;
    }
    let device = l.device();
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
