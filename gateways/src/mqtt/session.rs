//! One MQTT session as a state machine without I/O, in the style of `quinn-proto`: the
//! driver (`driver.rs`) feeds it what the socket delivered, what the hub answered and how
//! time passes; it says what to write and what to ask of the hub ([`Action`]). Protocol
//! decisions live here (authentication through the dialect, topic ACLs, subscriptions,
//! packet ids, the order of PUBACKs, keep-alive and token expiry), so Rust tests drive them
//! directly, with no socket and no clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;
use weir_core::{
    Event, EventSource, Feature, Features, Identity, IngestError, Peer, ProvisionReply, Revocation,
    Role, ServiceError, ToDevice,
};

pub use super::action::{Action, End};
use super::codec::{self, CodecError, Inbound, Publish};
use super::dialect::{C2dLock, Dialect, Incoming};
use crate::throttle::ConnectThrottle;

/// Limits a session enforces.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Largest packet after CONNECT (remaining length).
    pub max_packet: usize,
    /// Largest CONNECT, checked before it is buffered.
    pub max_connect: usize,
    /// Time a client has to send CONNECT (after TLS).
    pub connect_timeout: Duration,
}

/// A PUBACK waiting for its turn: MQTT 3.1.1 §4.6 wants them in PUBLISH order, and
/// telemetry's must wait until it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    Ready(u16),
    Durable(u16),
}

/// An authenticated session.
struct Open {
    identity: Arc<Identity>,
    features: Arc<Features>,
    /// The subscription filters, as stored for a persistent session.
    filters: Vec<String>,
    clean: bool,
    idle: Duration,
    /// When the credential stops being valid.
    expires: Option<Instant>,
    /// Cloud-to-device messages sent and not yet acknowledged: packet id → lock.
    /// A list, not a map: one message per device is in flight (one per child on an
    /// edge's connection), and an empty list costs an idle connection half as much.
    inflight: Vec<(u16, C2dLock)>,
    next_pkid: u16,
    acks: VecDeque<Ack>,
    batch: Vec<Event>,
    /// The transport, stamped on every event (`$weirGateway`).
    gateway: Arc<str>,
    /// Telemetry handed to the driver and not yet durable.
    ingesting: bool,
    registered: bool,
    /// DISCONNECT arrived while telemetry was being made durable: close once it is.
    disconnecting: bool,
}

enum State {
    AwaitConnect { deadline: Instant },
    Open(Box<Open>),
    Closed,
}

pub struct Session {
    dialect: Arc<dyn Dialect>,
    /// From [`SessionConfig`]: what a session needs once it has started.
    max_packet: u32,
    max_connect: u32,
    peer: Peer,
    state: State,
    last_activity: Instant,
    out: BytesMut,
    actions: VecDeque<Action>,
    /// The connect rate limits this session's CONNECT is held to, if any.
    throttle: Option<Arc<ConnectThrottle>>,
}

/// The idle limit for a keep-alive: 1.5 times it, as IoT Hub does, with 0 meaning the
/// hub's maximum.
pub fn idle_limit(keep_alive: u16) -> Duration {
    let ka = if keep_alive == 0 {
        1767
    } else {
        keep_alive.min(1767)
    };
    Duration::from_millis(u64::from(ka) * 1500)
}

/// The instant a credential valid until `expiry` (seconds since the epoch, inclusive)
/// stops being valid, given the wall clock `now_ms`; `None` when that is too far away to
/// matter.
fn expiry_instant(expiry: i64, now: Instant, now_ms: i64) -> Option<Instant> {
    let ms = (expiry + 1).saturating_mul(1000).saturating_sub(now_ms);
    let ms = u64::try_from(ms).unwrap_or(0);
    // Beyond a year the idle timeout comes first anyway; this keeps the addition in range.
    (ms < 366 * 86_400_000).then(|| now + Duration::from_millis(ms))
}

impl Session {
    pub fn new(dialect: Arc<dyn Dialect>, config: SessionConfig, peer: Peer, now: Instant) -> Self {
        Session {
            dialect,
            max_packet: u32::try_from(config.max_packet).unwrap_or(u32::MAX),
            max_connect: u32::try_from(config.max_connect).unwrap_or(u32::MAX),
            peer,
            state: State::AwaitConnect {
                deadline: now + config.connect_timeout,
            },
            last_activity: now,
            out: BytesMut::new(),
            actions: VecDeque::new(),
            throttle: None,
        }
    }

    /// Holds the CONNECT to connect rate limits: past them it gets CONNACK 3 (server
    /// unavailable) before anything in it is checked, so clients retry later and the hub
    /// spends nothing on authenticating them.
    pub fn throttle(&mut self, limits: Arc<ConnectThrottle>) {
        self.throttle = Some(limits);
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The device, once authenticated.
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        match &self.state {
            State::Open(o) => Some(&o.identity),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True while a CONNECT is awaited (the connection holds a pre-authentication slot).
    pub fn authenticating(&self) -> bool {
        match &self.state {
            State::AwaitConnect { .. } => true,
            State::Open(o) => !o.registered,
            State::Closed => false,
        }
    }

    /// Bytes to write to the peer, if any.
    pub fn output(&mut self) -> Option<&[u8]> {
        (!self.out.is_empty()).then_some(&self.out[..])
    }

    /// The output was written; an idle session gives its buffer back.
    pub fn written(&mut self) {
        self.out.clear();
        if self.out.capacity() > 4096 {
            self.out = BytesMut::new();
        }
    }

    /// Gives back the output and action buffers while they are empty: an idle
    /// connection keeps nothing it is not using (the action queue alone grows to a few
    /// hundred bytes at CONNECT).
    pub fn shrink(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
        if self.actions.is_empty() && self.actions.capacity() > 0 {
            self.actions = VecDeque::new();
        }
    }

    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// True when [`Session::next_action`] has one.
    pub fn has_action(&self) -> bool {
        !self.actions.is_empty()
    }

    /// When the driver must call [`Session::timeout`] if nothing else happens first.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitConnect { deadline } => Some(*deadline),
            State::Open(o) => {
                let idle = self.last_activity + o.idle;
                Some(o.expires.map_or(idle, |e| e.min(idle)))
            }
            State::Closed => None,
        }
    }

    /// Time passed: enforces the connect timeout, keep-alive and token expiry.
    pub fn timeout(&mut self, now: Instant) {
        let end = match &self.state {
            State::AwaitConnect { deadline } if now >= *deadline => {
                Some(End::Refused("no CONNECT within the connect timeout".into()))
            }
            State::Open(o) if o.expires.is_some_and(|e| now >= e) => {
                Some(End::Revoked(Revocation::Expired))
            }
            State::Open(o) if now >= self.last_activity + o.idle => Some(End::KeepAlive),
            _ => None,
        };
        if let Some(e) = end {
            self.close(e);
        }
    }

    /// The hub ended the connection (replaced, revoked) or is stopping.
    pub fn close(&mut self, end: End) {
        if !self.is_closed() {
            self.state = State::Closed;
            self.actions.push_back(Action::Close(end));
        }
    }

    /// Decodes every complete packet at the front of `buf` (what the socket delivered)
    /// and acts on it. `now_ms` is the wall clock, for token expiry.
    pub fn received(&mut self, buf: &mut BytesMut, now: Instant, now_ms: i64) {
        self.last_activity = now;
        loop {
            if self.is_closed() {
                return;
            }
            let max = match &self.state {
                State::AwaitConnect { .. } => self.max_connect,
                State::Open(o) if !o.registered => return,
                _ => self.max_packet,
            };
            let packet = match codec::decode(buf, max as usize) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    self.decode_error(e);
                    return;
                }
            };
            match &self.state {
                State::AwaitConnect { .. } => self.connect(packet, now, now_ms),
                State::Open(_) => self.packet(packet),
                State::Closed => return,
            }
        }
        self.flush_batch();
    }

    fn decode_error(&mut self, e: CodecError) {
        let end = match (&self.state, e) {
            (State::AwaitConnect { .. }, CodecError::ProtocolLevel(l)) => {
                codec::connack(1, false, &mut self.out);
                End::Refused(format!(
                    "unsupported MQTT protocol level {l}; Weir speaks MQTT 3.1.1"
                ))
            }
            (State::AwaitConnect { .. }, CodecError::TooLarge(n)) => End::Refused(format!(
                "first packet claims {n} bytes; a CONNECT may have at most {}",
                self.max_connect
            )),
            (State::AwaitConnect { .. }, e) => End::Refused(e.to_string()),
            (_, CodecError::TooLarge(n)) => End::Violation(format!(
                "message of {n} bytes exceeds the limit of {} bytes (mqtt.max_message_bytes)",
                self.max_packet
            )),
            (_, e) => End::Violation(e.to_string()),
        };
        self.close(end);
    }

    fn connect(&mut self, packet: Inbound, now: Instant, now_ms: i64) {
        let Inbound::Connect { connect, login, .. } = packet else {
            let why = format!("first packet must be CONNECT, got {}", packet.name());
            self.close(End::Refused(why));
            return;
        };
        if let Some(Err(t)) = self
            .throttle
            .as_ref()
            .map(|l| l.check(self.peer.addr.ip(), now.into_std()))
        {
            codec::connack(3, false, &mut self.out);
            self.close(End::Throttled(t));
            return;
        }
        let identity =
            match self
                .dialect
                .authenticate(&connect, login.as_ref(), &self.peer, now_ms / 1000)
            {
                // The chain was needed only to authenticate; TLS keeps its own copy.
                Ok(id) => {
                    self.peer.client_certs = None;
                    Arc::new(id)
                }
                Err(refusal) => {
                    codec::connack(refusal.code, false, &mut self.out);
                    let why = format!("{} (CONNACK {})", refusal.reason, refusal.code);
                    self.close(End::Refused(why));
                    return;
                }
            };
        let features = Arc::new(Features::default());
        // A registration keeps no session: the device's hub session, under the same id,
        // is not its to read or change.
        let clean = connect.clean_session || identity.role == Role::Registration;
        self.actions.push_back(Action::Register {
            identity: Arc::clone(&identity),
            features: Arc::clone(&features),
            clean,
        });
        self.state = State::Open(Box::new(Open {
            expires: identity
                .expires
                .and_then(|e| expiry_instant(e, now, now_ms)),
            identity,
            features,
            filters: Vec::new(),
            clean,
            idle: idle_limit(connect.keep_alive),
            inflight: Vec::new(),
            next_pkid: 0,
            acks: VecDeque::new(),
            batch: Vec::new(),
            gateway: Arc::from(self.peer.protocol),
            ingesting: false,
            registered: false,
            disconnecting: false,
        }));
    }

    /// The connection is registered; `filters` are the persistent session's stored
    /// subscriptions (empty for a clean session). Writes CONNACK.
    pub fn registered(&mut self, filters: Vec<String>) {
        let State::Open(o) = &mut self.state else {
            return;
        };
        for f in &filters {
            if let Some(feature) = self.dialect.feature(f, &o.identity) {
                o.features.set(feature, true);
            }
        }
        let device = o.identity.role != Role::Registration;
        if o.clean && device {
            self.actions
                .push_back(Action::StoreSubscriptions(Vec::new()));
        }
        codec::connack(0, !filters.is_empty(), &mut self.out);
        o.filters = filters;
        o.registered = true;
        if device {
            self.actions.push_back(Action::Connected);
        }
    }

    fn packet(&mut self, packet: Inbound) {
        match packet {
            Inbound::Publish(p) => self.publish(p),
            Inbound::PingReq => codec::pingresp(&mut self.out),
            Inbound::Subscribe(s) => self.subscribe(s),
            Inbound::Unsubscribe(u) => {
                let State::Open(o) = &mut self.state else {
                    return;
                };
                for f in &u.filters {
                    if let Some(feature) = self.dialect.feature(f, &o.identity) {
                        o.features.set(feature, false);
                    }
                    o.filters.retain(|x| x != f);
                }
                if !o.clean {
                    self.actions
                        .push_back(Action::StoreSubscriptions(o.filters.clone()));
                }
                codec::unsuback(u.pkid, &mut self.out);
            }
            Inbound::PubAck(pkid) => {
                let State::Open(o) = &mut self.state else {
                    return;
                };
                if let Some(i) = o.inflight.iter().position(|(p, _)| *p == pkid) {
                    let (_, lock) = o.inflight.swap_remove(i);
                    self.actions.push_back(Action::C2dAcknowledged(lock));
                }
            }
            Inbound::Disconnect => {
                self.flush_batch();
                match &mut self.state {
                    State::Open(o) if o.ingesting => o.disconnecting = true,
                    _ => self.close(End::Disconnect),
                }
            }
            other => {
                let why = format!("unexpected {} packet", other.name());
                self.close(End::Violation(why));
            }
        }
    }

    fn publish(&mut self, p: Publish) {
        if p.qos > 1 {
            self.close(End::Violation("QoS 2 is not supported".into()));
            return;
        }
        let topic = match p.topic_str() {
            Ok(t) => t.to_owned(),
            Err(e) => {
                self.close(End::Violation(e.to_string()));
                return;
            }
        };
        let State::Open(o) = &mut self.state else {
            return;
        };
        if o.disconnecting {
            return;
        }
        let incoming = self.dialect.classify(&topic, &o.identity);
        let (qos, pkid) = (p.qos, p.pkid);
        let request = |o: &mut Open, out: &mut BytesMut| {
            // PUBACKs go out in PUBLISH order: behind telemetry still waiting to be
            // durable, this one waits too.
            if qos == 1 {
                o.acks.push_back(Ack::Ready(pkid));
                flush_acks(o, out);
            }
        };
        match incoming {
            None => {
                let why = format!(
                    "publish to {:?} is not allowed for this device",
                    clip(&topic)
                );
                self.close(End::Violation(why));
            }
            Some(Incoming::Telemetry { bag, child }) => {
                let (mut system, properties) = match self.dialect.properties(bag) {
                    Ok(x) => x,
                    Err(why) => {
                        self.close(End::Violation(why));
                        return;
                    }
                };
                let (device_id, generation_id) = match child {
                    Some(c) => {
                        system.edge_id = Some(o.identity.device_id.as_str().into());
                        (c.device_id, c.generation_id)
                    }
                    None => (
                        o.identity.device_id.clone(),
                        Arc::clone(&o.identity.generation_id),
                    ),
                };
                o.batch.push(Event {
                    source: EventSource::DeviceMessages,
                    device_id,
                    module_id: None,
                    generation_id: Some(generation_id),
                    auth_method: o.identity.auth,
                    gateway: Some(Arc::clone(&o.gateway)),
                    dead_letter: None,
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
                    o.acks.push_back(Ack::Durable(p.pkid));
                }
            }
            Some(Incoming::TwinGet { rid }) => {
                let rid = rid.to_owned();
                request(o, &mut self.out);
                self.actions.push_back(Action::TwinGet { rid });
            }
            Some(Incoming::TwinPatch { rid }) => {
                let rid = rid.to_owned();
                request(o, &mut self.out);
                self.actions.push_back(Action::TwinPatch {
                    rid,
                    patch: p.payload,
                });
            }
            Some(Incoming::MethodResponse { rid, status }) => {
                let rid = rid.to_owned();
                request(o, &mut self.out);
                self.actions.push_back(Action::MethodResponse {
                    rid,
                    status,
                    payload: p.payload,
                });
            }
            Some(Incoming::ChildMethodResponse { child, rid, status }) => {
                let rid = rid.to_owned();
                request(o, &mut self.out);
                self.actions.push_back(Action::ChildMethodResponse {
                    child,
                    rid,
                    status,
                    payload: p.payload,
                });
            }
            Some(Incoming::ChildrenGet { rid }) => {
                let rid = rid.to_owned();
                request(o, &mut self.out);
                self.actions.push_back(Action::ChildrenGet { rid });
            }
            Some(Incoming::Register { rid }) => {
                let rid = rid.to_owned();
                request(o, &mut self.out);
                self.actions.push_back(Action::Provision {
                    rid,
                    operation_id: None,
                    payload: p.payload,
                });
            }
            Some(Incoming::RegistrationStatus { rid, operation_id }) => {
                let (rid, operation_id) = (rid.to_owned(), Some(operation_id.to_owned()));
                request(o, &mut self.out);
                self.actions.push_back(Action::Provision {
                    rid,
                    operation_id,
                    payload: p.payload,
                });
            }
        }
    }

    /// The provisioning service answered request `rid` (a registration or a status poll).
    pub fn provisioned(&mut self, rid: &str, reply: ProvisionReply) {
        let State::Open(o) = &self.state else {
            return;
        };
        if !o.features.has(Feature::Registrations) {
            return;
        }
        let topic = self
            .dialect
            .registration_response(reply.status, rid, reply.retry_after);
        // A request id too long for the response topic gets no answer.
        let _ = codec::publish(&topic, &reply.body, 0, 0, false, &mut self.out);
    }

    fn subscribe(&mut self, s: rumqttd::protocol::Subscribe) {
        let State::Open(o) = &mut self.state else {
            return;
        };
        let mut granted = Vec::with_capacity(s.filters.len());
        let mut c2d = false;
        for f in &s.filters {
            let Some(feature) = self.dialect.feature(&f.path, &o.identity) else {
                let why = format!(
                    "subscription to {:?} is not allowed for this device",
                    clip(&f.path)
                );
                self.close(End::Violation(why));
                return;
            };
            o.features.set(feature, true);
            // An edge delivers its children's messages.
            c2d |= matches!(feature, Feature::CloudToDevice | Feature::Edge);
            if !o.filters.contains(&f.path) {
                o.filters.push(f.path.clone());
            }
            granted.push(Some((f.qos as u8).min(1)));
        }
        if !o.clean {
            self.actions
                .push_back(Action::StoreSubscriptions(o.filters.clone()));
        }
        codec::suback(s.pkid, &granted, &mut self.out);
        if c2d {
            // Messages may have been waiting for this subscription.
            self.actions.push_back(Action::C2dReady);
        }
    }

    /// Hands the telemetry decoded so far to the driver.
    fn flush_batch(&mut self) {
        let State::Open(o) = &mut self.state else {
            return;
        };
        if o.batch.is_empty() || o.ingesting {
            return;
        }
        o.ingesting = true;
        let acks = o.acks.iter().any(|a| matches!(a, Ack::Durable(_)));
        let events = std::mem::take(&mut o.batch);
        self.actions.push_back(Action::Ingest { events, acks });
    }

    /// The telemetry of the last [`Action::Ingest`] is durable (or not). Nothing is
    /// acknowledged after the credential expired.
    pub fn ingested(&mut self, result: Result<(), IngestError>, now: Instant) {
        let State::Open(o) = &mut self.state else {
            return;
        };
        o.ingesting = false;
        if let Err(e) = result {
            self.close(End::NotStored(e));
            return;
        }
        if o.expires.is_some_and(|e| now >= e) {
            self.close(End::Revoked(Revocation::Expired));
            return;
        }
        for a in o.acks.iter_mut() {
            if let Ack::Durable(pkid) = *a {
                *a = Ack::Ready(pkid);
            }
        }
        flush_acks(o, &mut self.out);
        if o.disconnecting {
            self.close(End::Disconnect);
            return;
        }
        self.flush_batch();
    }

    /// The twin the device asked for with `rid`, or why not. Twin responses go out even
    /// without a subscription to them (the Azure SDK relies on it).
    pub fn twin_read(&mut self, rid: &str, result: Result<serde_json::Value, ServiceError>) {
        let (status, body) = match result {
            Ok(twin) => (200, twin.to_string()),
            Err(e) => (e.status, error_body(&e.message)),
        };
        self.twin_reply(status, rid, None, body);
    }

    /// An edge's children, as it asked with `rid`, or why not.
    pub fn children_read(&mut self, rid: &str, result: Result<serde_json::Value, ServiceError>) {
        let (status, body) = match result {
            Ok(children) => (200, children.to_string()),
            Err(e) => (e.status, error_body(&e.message)),
        };
        let topic = self.dialect.children_response(status, rid);
        let _ = codec::publish(&topic, body.as_bytes(), 0, 0, false, &mut self.out);
    }

    /// The outcome of a reported-properties patch the device sent with `rid`.
    pub fn twin_patched(&mut self, rid: &str, result: Result<u64, ServiceError>) {
        match result {
            Ok(version) => self.twin_reply(204, rid, Some(version), String::new()),
            Err(e) => self.twin_reply(e.status, rid, None, error_body(&e.message)),
        }
    }

    fn twin_reply(&mut self, status: u16, rid: &str, version: Option<u64>, body: String) {
        let topic = self.dialect.twin_response(status, rid, version);
        // A device chose a request id too long for the response topic: it gets none.
        let _ = codec::publish(&topic, body.as_bytes(), 0, 0, false, &mut self.out);
    }

    /// Encodes what the hub sends; a cloud-to-device message gets a packet id and is
    /// tracked until the device acknowledges it. One MQTT cannot carry is dropped.
    pub fn to_device(&mut self, m: &ToDevice) -> Result<(), CodecError> {
        let State::Open(o) = &mut self.state else {
            return Ok(());
        };
        let out = self.dialect.outbound(m, &o.identity);
        let mut pkid = 0;
        if out.qos > 0 {
            loop {
                o.next_pkid = o.next_pkid.wrapping_add(1).max(1);
                if !o.inflight.iter().any(|(p, _)| *p == o.next_pkid) {
                    break;
                }
            }
            pkid = o.next_pkid;
        }
        codec::publish(
            &out.topic,
            &out.payload,
            out.qos.min(1),
            pkid,
            false,
            &mut self.out,
        )?;
        if let Some(lock) = out.lock.filter(|_| pkid != 0) {
            o.inflight.push((pkid, lock));
        }
        Ok(())
    }
}

fn flush_acks(o: &mut Open, out: &mut BytesMut) {
    while let Some(Ack::Ready(pkid)) = o.acks.front().copied() {
        codec::puback(pkid, out);
        o.acks.pop_front();
    }
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
