//! Live device connections across every gateway: one per device (a new connection on any
//! transport replaces the old one on any other), each with the features it subscribed to,
//! a queue of what the hub sends it, and a way for the hub to end it.
//!
//! What the hub sends is typed ([`ToDevice`]); each gateway encodes it in its protocol.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use tokio::time::Instant;

use crate::device::DeviceRecord;
use crate::identity::{Credential, Identity, Revocation};
use crate::ids::DeviceId;

/// A cloud-to-device message on its way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2dDelivery {
    /// Handed back in `DeviceServices::c2d_acknowledged` when the device acknowledges.
    pub lock: u64,
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub properties: Vec<(String, String)>,
    pub payload: Bytes,
}

/// What the hub sends a connected device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToDevice {
    /// The twin's desired properties changed: the merge patch, with its `$version`.
    DesiredPatch { version: u64, patch: Bytes },
    /// A direct method call; the device answers with the same `rid`.
    MethodRequest {
        rid: String,
        method: String,
        payload: Bytes,
    },
    /// A cloud-to-device message, delivered at least once until acknowledged.
    CloudToDevice(C2dDelivery),
    /// To an edge: a direct method for its child `child`, which the edge runs and answers
    /// for it within `timeout_secs`.
    ChildMethodRequest {
        child: String,
        rid: String,
        method: String,
        payload: Bytes,
        timeout_secs: u64,
    },
    /// To an edge: the desired properties of its child `child` changed (the merge patch,
    /// with its `$version`), for the edge to pass on.
    ChildDesiredPatch {
        child: String,
        version: u64,
        patch: Bytes,
    },
    /// To an edge: a cloud-to-device message for its child `child`, which the edge
    /// acknowledges once it holds the message itself (and delivers it to the child).
    ChildCloudToDevice { child: String, message: C2dDelivery },
}

/// The features a device turns on by subscribing (spec §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    Methods,
    CloudToDevice,
    TwinResponses,
    DesiredPatches,
    /// Answers of the provisioning service (`$dps/registrations/res/#`).
    Registrations,
    /// An edge's requests about its children and changes for them (`$weir/edge/#`).
    Edge,
}

fn bit(f: Feature) -> u8 {
    match f {
        Feature::Methods => 1,
        Feature::CloudToDevice => 2,
        Feature::TwinResponses => 4,
        Feature::DesiredPatches => 8,
        Feature::Registrations => 16,
        Feature::Edge => 32,
    }
}

/// The features of one connection, shared between it and the registry.
#[derive(Default, Debug)]
pub struct Features(AtomicU8);

impl Features {
    pub fn set(&self, f: Feature, on: bool) {
        if on {
            self.0.fetch_or(bit(f), Ordering::Relaxed);
        } else {
            self.0.fetch_and(!bit(f), Ordering::Relaxed);
        }
    }

    pub fn has(&self, f: Feature) -> bool {
        self.0.load(Ordering::Relaxed) & bit(f) != 0
    }
}

/// Messages waiting for one connection; beyond this the hub's sends fail (and are retried
/// by whoever sent them: cloud-to-device messages stay queued).
pub const OUTBOUND_QUEUE: usize = 64;

/// A connection's queue of what the hub sends it, and the hub's word that it must end.
/// Unlike a channel it allocates nothing until used, which matters when most of 100k
/// connections never receive anything. It holds the connection's waker itself (no
/// `Notified` future per waiting connection), since an idle connection's memory is
/// mostly what it waits on.
#[derive(Default)]
pub struct Outbox {
    queue: Mutex<VecDeque<ToDevice>>,
    /// Why the connection must end ([`KickReason`] code; 0: it need not).
    kick: AtomicU8,
    /// Something was queued, or the connection was told to end, since it last looked.
    signalled: AtomicBool,
    waker: AtomicWaker,
    /// When the connection's session must next look at the time (keep-alive, credential
    /// expiry), in ms of its registry's clock; 0: no deadline. The registry's sweep
    /// signals the connection once it has passed, so no connection holds a timer.
    deadline_ms: AtomicU64,
}

impl Outbox {
    pub fn push(&self, m: ToDevice) -> bool {
        let Ok(mut q) = self.queue.lock() else {
            return false;
        };
        if q.len() >= OUTBOUND_QUEUE {
            return false;
        }
        q.push_back(m);
        drop(q);
        self.signal();
        true
    }

    /// Tells the connection to end; the first reason given wins. Out of band of the
    /// queue, so it overtakes whatever is queued.
    pub fn kick(&self, why: KickReason) {
        let _ = self
            .kick
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire);
        self.signal();
    }

    fn signal(&self) {
        self.signalled.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once something was queued or the connection was told to end since the last
    /// time this was ready; otherwise wakes the task when that happens.
    pub fn poll_signalled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signalled.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A signal between the first look and the registration woke no one.
        if self.signalled.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Sets the deadline the registry's sweep wakes the connection at (see
    /// [`ConnectionRegistry::clock_ms`]).
    pub fn set_deadline(&self, at_ms: u64) {
        self.deadline_ms.store(at_ms, Ordering::Relaxed);
    }

    /// Set once the connection has been told to end; it must not acknowledge anything
    /// more.
    pub fn kicked(&self) -> Option<KickReason> {
        KickReason::from_code(self.kick.load(Ordering::Acquire))
    }

    /// Everything queued, oldest first.
    pub fn take(&self) -> VecDeque<ToDevice> {
        self.queue
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default()
    }
}

/// Why the hub ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// A newer connection for the same device, on any gateway, took its place.
    Replaced,
    Revoked(Revocation),
    /// The hub is stopping.
    ShuttingDown,
}

impl KickReason {
    fn code(self) -> u8 {
        match self {
            KickReason::Replaced => 1,
            KickReason::ShuttingDown => 2,
            KickReason::Revoked(r) => {
                3 + Revocation::ALL.iter().position(|x| *x == r).unwrap_or(0) as u8
            }
        }
    }

    fn from_code(c: u8) -> Option<KickReason> {
        match c {
            0 => None,
            1 => Some(KickReason::Replaced),
            2 => Some(KickReason::ShuttingDown),
            c => Revocation::ALL
                .get(usize::from(c - 3))
                .map(|r| KickReason::Revoked(*r)),
        }
    }
}

struct Entry {
    id: u64,
    /// When it registered (ms since the epoch): a cluster compares it with the time the
    /// device connected to another process.
    since_ms: i64,
    protocol: &'static str,
    identity: Arc<Identity>,
    outbox: Arc<Outbox>,
    features: Arc<Features>,
}

/// A registered connection. It is told to end through its outbox when another connection
/// takes its place or the hub revokes its credential.
pub struct Registration {
    pub id: u64,
}

/// What a gateway registers for a new connection.
pub struct Connection {
    pub protocol: &'static str,
    pub identity: Arc<Identity>,
    pub outbox: Arc<Outbox>,
    pub features: Arc<Features>,
}

pub struct ConnectionRegistry {
    live: Mutex<Live>,
    next: AtomicU64,
    /// The start of the clock deadlines are given in.
    epoch: Instant,
}

impl Default for ConnectionRegistry {
    fn default() -> Self {
        ConnectionRegistry {
            live: Mutex::default(),
            next: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

/// How often [`ConnectionRegistry::sweep`] looks at every deadline: keep-alive and
/// credential expiry are enforced within this of the time.
pub const SWEEP_EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Live {
    devices: HashMap<DeviceId, Entry>,
    /// The hub is stopping: a connection that registers now is told to end at once.
    shut: bool,
}

impl ConnectionRegistry {
    /// Registers a connection; the device's previous one, on whatever gateway, is told to
    /// end.
    pub fn register(&self, c: Connection) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let device = c.identity.device_id.clone();
        let entry = Entry {
            id,
            since_ms: crate::time::now_ms(),
            protocol: c.protocol,
            identity: c.identity,
            outbox: c.outbox,
            features: c.features,
        };
        if let Ok(mut live) = self.live.lock() {
            if live.shut {
                entry.outbox.kick(KickReason::ShuttingDown);
            }
            if let Some(old) = live.devices.insert(device, entry) {
                old.outbox.kick(KickReason::Replaced);
            }
        }
        Registration { id }
    }

    /// `at` on the clock of [`Outbox::set_deadline`] (never 0, which means none).
    pub fn clock_ms(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX).max(1)
    }

    /// Signals every connection whose deadline has passed; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let now = self.clock_ms(now);
        let Ok(live) = self.live.lock() else {
            return 0;
        };
        let mut n = 0;
        for e in live.devices.values() {
            let at = e.outbox.deadline_ms.load(Ordering::Relaxed);
            if at != 0 && at <= now {
                e.outbox.signal();
                n += 1;
            }
        }
        n
    }

    /// Enforces the deadlines of registered connections every [`SWEEP_EVERY`] until the
    /// registry is shut or dropped: one timer for all of them, where each connection
    /// would otherwise hold its own.
    pub async fn sweep(registry: std::sync::Weak<ConnectionRegistry>) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(r) = registry.upgrade() else { return };
            if r.live.lock().map_or(true, |l| l.shut) {
                return;
            }
            r.expire(Instant::now());
        }
    }

    /// The hub is stopping: every connection, and any that registers from now on, is
    /// told to end (connections not yet registered watch the hub's shutdown themselves).
    pub fn shut(&self) {
        let Ok(mut live) = self.live.lock() else {
            return;
        };
        live.shut = true;
        for e in live.devices.values() {
            e.outbox.kick(KickReason::ShuttingDown);
        }
    }

    /// The device connected to another process of the cluster at `at_ms`: its connection
    /// here, if older, is told to end as a replaced one. True when one was.
    pub fn replaced_elsewhere(&self, device: &str, at_ms: i64) -> bool {
        let Ok(live) = self.live.lock() else {
            return false;
        };
        match live.devices.get(device) {
            Some(e) if e.since_ms < at_ms => {
                e.outbox.kick(KickReason::Replaced);
                true
            }
            _ => false,
        }
    }

    /// Removes the entry if it is still this connection's; true when it was.
    pub fn unregister(&self, device: &DeviceId, id: u64) -> bool {
        let Ok(mut live) = self.live.lock() else {
            return false;
        };
        if live.devices.get(device).is_some_and(|e| e.id == id) {
            live.devices.remove(device);
            return true;
        }
        false
    }

    pub fn is_connected(&self, device: &str) -> bool {
        self.live
            .lock()
            .is_ok_and(|l| l.devices.contains_key(device))
    }

    /// True when the device is connected and subscribed to `feature`.
    pub fn subscribed(&self, device: &str, f: Feature) -> bool {
        self.live
            .lock()
            .is_ok_and(|l| l.devices.get(device).is_some_and(|e| e.features.has(f)))
    }

    /// Queues `m` for the device's connection without waiting; false when it has none
    /// or its queue is full.
    pub fn send(&self, device: &str, m: ToDevice) -> bool {
        let outbox = match self.live.lock() {
            Ok(l) => l.devices.get(device).map(|e| Arc::clone(&e.outbox)),
            Err(_) => None,
        };
        outbox.is_some_and(|o| o.push(m))
    }

    /// Checks the device's connection against its current registry record (`None`:
    /// deleted) and tells it to end if that no longer admits it.
    pub fn revalidate(&self, device: &str, current: Option<&DeviceRecord>) -> Option<Revocation> {
        let live = self.live.lock().ok()?;
        let e = live.devices.get(device)?;
        let why = e.identity.revoked_by(current)?;
        e.outbox.kick(KickReason::Revoked(why));
        Some(why)
    }

    /// Tells every connection that authenticated with `credential` to end (a CA
    /// certificate was deleted or replaced); returns how many.
    pub fn revoke_credential(&self, credential: Credential, why: Revocation) -> usize {
        let Ok(live) = self.live.lock() else {
            return 0;
        };
        let mut n = 0;
        for e in live
            .devices
            .values()
            .filter(|e| e.identity.credential == credential)
        {
            e.outbox.kick(KickReason::Revoked(why));
            n += 1;
        }
        n
    }

    /// Connected devices, in all.
    pub fn connected(&self) -> usize {
        self.live.lock().map_or(0, |l| l.devices.len())
    }

    /// The protocol of the device's connection, if it has one.
    pub fn protocol(&self, device: &str) -> Option<&'static str> {
        self.live
            .lock()
            .ok()?
            .devices
            .get(device)
            .map(|e| e.protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::AuthMethod;

    fn connection(protocol: &'static str, device: &str) -> Connection {
        Connection {
            protocol,
            identity: Arc::new(Identity {
                role: crate::identity::Role::Device,
                device_id: DeviceId::parse(device).expect("id"),
                generation_id: Arc::from("g"),
                auth: AuthMethod::Sas,
                credential: Credential::SasKey(1),
                expires: None,
            }),
            outbox: Arc::default(),
            features: Arc::default(),
        }
    }

    #[test]
    fn one_connection_per_device_across_protocols() {
        let r = ConnectionRegistry::default();
        let tcp_conn = connection("mqtt", "d1");
        let tcp_outbox = Arc::clone(&tcp_conn.outbox);
        let tcp = r.register(tcp_conn);
        let quic_conn = connection("mqtt-quic", "d1");
        let outbox = Arc::clone(&quic_conn.outbox);
        quic_conn.features.set(Feature::Methods, true);
        let quic = r.register(quic_conn);
        assert_eq!(tcp_outbox.kicked(), Some(KickReason::Replaced));
        assert_eq!(outbox.kicked(), None);
        assert_eq!(r.protocol("d1"), Some("mqtt-quic"));
        assert!(r.subscribed("d1", Feature::Methods));
        let d1 = DeviceId::parse("d1").expect("id");
        assert!(
            !r.unregister(&d1, tcp.id),
            "the old one is no longer the device's"
        );
        assert!(r.send(
            "d1",
            ToDevice::DesiredPatch {
                version: 2,
                patch: Bytes::from_static(b"{}")
            }
        ));
        assert_eq!(outbox.take().len(), 1);
        assert_eq!(r.revalidate("d1", None), Some(Revocation::Deleted));
        assert_eq!(
            outbox.kicked(),
            Some(KickReason::Revoked(Revocation::Deleted))
        );
        assert!(r.unregister(&d1, quic.id));
        assert_eq!(r.connected(), 0);
    }

    #[test]
    fn a_later_connection_on_another_process_replaces_this_one_not_an_earlier_one() {
        let r = ConnectionRegistry::default();
        let c = connection("mqtt", "d1");
        let outbox = Arc::clone(&c.outbox);
        r.register(c);
        let now = crate::time::now_ms();
        assert!(
            !r.replaced_elsewhere("d1", now - 60_000),
            "it connected here later"
        );
        assert_eq!(outbox.kicked(), None);
        assert!(!r.replaced_elsewhere("d2", now + 1), "not connected here");
        assert!(r.replaced_elsewhere("d1", now + 1));
        assert_eq!(outbox.kicked(), Some(KickReason::Replaced));
    }

    #[test]
    fn an_outbox_signal_is_seen_once_and_wakes_the_waiting_task() {
        struct Woken(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Woken {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(Woken(Default::default()));
        let waker = std::task::Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        let o = Outbox::default();
        assert!(o.poll_signalled(&mut cx).is_pending());
        assert!(o.push(ToDevice::DesiredPatch {
            version: 1,
            patch: Bytes::from_static(b"{}"),
        }));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(o.poll_signalled(&mut cx).is_ready());
        assert!(o.poll_signalled(&mut cx).is_pending(), "seen once");
        // Signalled while no one waits: the next look sees it.
        o.kick(KickReason::ShuttingDown);
        assert!(o.poll_signalled(&mut cx).is_ready());
        assert_eq!(o.kicked(), Some(KickReason::ShuttingDown));
    }

    #[test]
    fn a_shut_registry_tells_every_connection_to_end_and_each_later_one() {
        let r = ConnectionRegistry::default();
        let before = connection("mqtt", "d1");
        let before_outbox = Arc::clone(&before.outbox);
        r.register(before);
        r.shut();
        assert_eq!(before_outbox.kicked(), Some(KickReason::ShuttingDown));
        let after = connection("mqtt", "d2");
        let after_outbox = Arc::clone(&after.outbox);
        r.register(after);
        assert_eq!(after_outbox.kicked(), Some(KickReason::ShuttingDown));
        // Revocation reasons still round-trip after the new code.
        let o = Outbox::default();
        o.kick(KickReason::Revoked(Revocation::Disabled));
        assert_eq!(o.kicked(), Some(KickReason::Revoked(Revocation::Disabled)));
    }
}
