//! Live connections by device: one per device id (a new connection closes the old one),
//! each with the features it subscribed to and a queue of publishes the hub sends it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use weir_core::{DeviceId, DevicePublish, DeviceRecord, Feature};

use super::connect::{Identity, Revocation};

/// Publishes waiting for one connection; beyond this the hub's sends fail (and are retried
/// by whoever sent them: cloud-to-device messages stay queued).
pub const OUTBOUND_QUEUE: usize = 64;

/// A connection's queue of publishes from the hub. Unlike a channel it allocates nothing
/// until used, which matters when most of 100k connections never receive anything.
#[derive(Default)]
pub struct Outbox {
    queue: Mutex<VecDeque<DevicePublish>>,
    pub ready: Notify,
}

impl Outbox {
    pub fn push(&self, p: DevicePublish) -> bool {
        let Ok(mut q) = self.queue.lock() else {
            return false;
        };
        if q.len() >= OUTBOUND_QUEUE {
            return false;
        }
        q.push_back(p);
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Everything queued, oldest first.
    pub fn take(&self) -> VecDeque<DevicePublish> {
        self.queue
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default()
    }
}

fn bit(f: Feature) -> u8 {
    match f {
        Feature::Methods => 1,
        Feature::CloudToDevice => 2,
        Feature::TwinResponses => 4,
        Feature::DesiredPatches => 8,
    }
}

/// The feature a subscription filter turns on, if it is one a device may use.
pub fn feature_of(filter: &str, device: &str) -> Option<Feature> {
    match filter {
        "$iothub/methods/POST/#" => Some(Feature::Methods),
        "$iothub/twin/res/#" => Some(Feature::TwinResponses),
        "$iothub/twin/PATCH/properties/desired/#" => Some(Feature::DesiredPatches),
        f if f
            .strip_prefix("devices/")
            .and_then(|r| r.strip_prefix(device))
            == Some("/messages/devicebound/#") =>
        {
            Some(Feature::CloudToDevice)
        }
        _ => None,
    }
}

/// The features of one connection, shared between it and the session table.
#[derive(Default)]
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

/// Why the hub ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// A newer connection for the same device took its place.
    Replaced,
    Revoked(Revocation),
}

impl KickReason {
    fn code(self) -> u8 {
        match self {
            KickReason::Replaced => 1,
            KickReason::Revoked(r) => {
                2 + Revocation::ALL.iter().position(|x| *x == r).unwrap_or(0) as u8
            }
        }
    }

    fn from_code(c: u8) -> Option<KickReason> {
        match c {
            0 => None,
            1 => Some(KickReason::Replaced),
            c => Revocation::ALL
                .get(usize::from(c - 2))
                .map(|r| KickReason::Revoked(*r)),
        }
    }
}

/// How the hub tells a connection to end: the first reason given wins.
#[derive(Default)]
pub struct Kick {
    reason: AtomicU8,
    notify: Notify,
}

impl Kick {
    pub fn kick(&self, why: KickReason) {
        let _ = self
            .reason
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire);
        self.notify.notify_one();
    }

    /// Set once the connection has been told to end; it must not acknowledge anything
    /// more.
    pub fn reason(&self) -> Option<KickReason> {
        KickReason::from_code(self.reason.load(Ordering::Acquire))
    }

    pub async fn kicked(&self) -> KickReason {
        loop {
            if let Some(r) = self.reason() {
                return r;
            }
            self.notify.notified().await;
        }
    }
}

struct Entry {
    id: u64,
    identity: Arc<Identity>,
    kick: Arc<Kick>,
    outbox: Arc<Outbox>,
    features: Arc<Features>,
}

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<DeviceId, Entry>>,
    next: AtomicU64,
}

/// A registered connection; `kick` fires when another connection takes its place or the
/// hub revokes its credential.
pub struct Registration {
    pub id: u64,
    pub kick: Arc<Kick>,
}

impl Sessions {
    pub fn register(
        &self,
        identity: Arc<Identity>,
        outbox: Arc<Outbox>,
        features: Arc<Features>,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Kick::default());
        let device = identity.device_id.clone();
        let entry = Entry {
            id,
            identity,
            kick: Arc::clone(&kick),
            outbox,
            features,
        };
        if let Ok(mut live) = self.live.lock()
            && let Some(old) = live.insert(device, entry)
        {
            old.kick.kick(KickReason::Replaced);
        }
        Registration { id, kick }
    }

    /// Checks the device's connection against its current registry record (`None`:
    /// deleted) and tells it to end if that no longer admits it.
    pub fn revalidate(&self, device: &str, current: Option<&DeviceRecord>) -> Option<Revocation> {
        let live = self.live.lock().ok()?;
        let e = live.get(device)?;
        let why = e.identity.revoked_by(current)?;
        e.kick.kick(KickReason::Revoked(why));
        Some(why)
    }

    /// Removes the entry if it is still this connection's; true when it was.
    pub fn unregister(&self, device: &DeviceId, id: u64) -> bool {
        let Ok(mut live) = self.live.lock() else {
            return false;
        };
        if live.get(device).is_some_and(|e| e.id == id) {
            live.remove(device);
            return true;
        }
        false
    }

    pub fn is_connected(&self, device: &str) -> bool {
        self.live.lock().is_ok_and(|l| l.contains_key(device))
    }

    pub fn subscribed(&self, device: &str, f: Feature) -> bool {
        self.live
            .lock()
            .is_ok_and(|l| l.get(device).is_some_and(|e| e.features.has(f)))
    }

    /// Queues a publish for the device's connection without waiting.
    pub fn send(&self, device: &str, p: DevicePublish) -> bool {
        let outbox = match self.live.lock() {
            Ok(l) => l.get(device).map(|e| Arc::clone(&e.outbox)),
            Err(_) => None,
        };
        outbox.is_some_and(|o| o.push(p))
    }

    pub fn connected(&self) -> usize {
        self.live.lock().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_map_to_features_only_for_the_own_device() {
        assert_eq!(
            feature_of("devices/d1/messages/devicebound/#", "d1"),
            Some(Feature::CloudToDevice)
        );
        assert_eq!(feature_of("devices/d1/messages/devicebound/#", "d2"), None);
        assert_eq!(feature_of("devices/d10/messages/devicebound/#", "d1"), None);
        assert_eq!(
            feature_of("$iothub/methods/POST/#", "d1"),
            Some(Feature::Methods)
        );
        assert_eq!(feature_of("#", "d1"), None);
        let f = Features::default();
        f.set(Feature::Methods, true);
        f.set(Feature::TwinResponses, true);
        f.set(Feature::Methods, false);
        assert!(!f.has(Feature::Methods) && f.has(Feature::TwinResponses));
    }
}
