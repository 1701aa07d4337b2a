//! The dedupe operator: drops a device's repeats within a window.
//!
//! Two kinds of repeat: the same `$.mid` from the same device, and an MQTT retransmission
//! (DUP set) of a packet the device already sent (same packet id, same body). Both happen
//! when a device did not see its PUBACK (a dropped connection, a crash of the hub) and
//! sends again. State is per device, bounded by count and time; it is rebuilt after a
//! restart because the engine replays a window of the log before what it must archive.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use ahash::RandomState;

use super::Events;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use weir_core::{DeviceId, Event};

use crate::engine::DedupeConfig;
use crate::metrics::EngineMetrics;

/// A 64-bit digest of what identifies a message: remembering digests instead of ids keeps
/// the window free of allocations (a collision needs ~2^32 ids in one device's window).
/// Digests come from a per-process random key, so a device cannot aim for a collision.
type Key = u64;

/// Digests are already uniformly distributed; hashing them again for the set (SipHash, by
/// default) cost more than the rest of the lookup.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default)]
struct Window {
    seen: HashSet<Key, BuildHasherDefault<DigestHasher>>,
    order: VecDeque<(i64, Key)>,
}

impl Window {
    fn evict(&mut self, now_ms: i64, cfg: &DedupeConfig) {
        let horizon = now_ms - cfg.window.as_millis() as i64;
        while let Some((t, _)) = self.order.front() {
            if *t >= horizon && self.order.len() <= cfg.per_device {
                break;
            }
            if let Some((_, k)) = self.order.pop_front() {
                self.seen.remove(&k);
            }
        }
    }
}

/// True when `e` repeats something in `w`; records `e` either way.
fn is_repeat(w: &mut Window, e: &Event, cfg: &DedupeConfig, keys: &RandomState) -> bool {
    w.evict(e.enqueued_ms, cfg);
    let packet = e.packet_id.map(|p| keys.hash_one((1u8, p, &e.body[..])));
    let mid = e
        .system
        .message_id
        .as_deref()
        .map(|m| keys.hash_one((0u8, m)));
    // One probe per digest: `insert` says whether it was there.
    let mut seen_before = |k: Key| {
        let new = w.seen.insert(k);
        if new {
            w.order.push_back((e.enqueued_ms, k));
        }
        !new
    };
    let mid_repeat = mid.is_some_and(&mut seen_before);
    let packet_repeat = packet.is_some_and(&mut seen_before);
    mid_repeat || (e.redelivered && packet_repeat)
}

/// The recent message ids of every device one worker has seen. The dataflow's operator
/// and a replay each keep their own.
pub(crate) struct DedupeState {
    config: DedupeConfig,
    keys: RandomState,
    devices: HashMap<DeviceId, Window, RandomState>,
}

impl DedupeState {
    pub(crate) fn new(config: DedupeConfig) -> DedupeState {
        DedupeState {
            config,
            keys: RandomState::new(),
            devices: HashMap::default(),
        }
    }

    /// True when `e` repeats a message its device sent within the window; remembers `e`.
    pub(crate) fn is_repeat(&mut self, e: &Event) -> bool {
        // A dead letter carries the message id of a message already seen, on purpose.
        if e.dead_letter.is_some() || (e.system.message_id.is_none() && e.packet_id.is_none()) {
            return false;
        }
        // Looked up before inserting, so a device already known costs no clone of its id.
        if let Some(w) = self.devices.get_mut(&e.device_id) {
            return is_repeat(w, e, &self.config, &self.keys);
        }
        let w = self.devices.entry(e.device_id.clone()).or_default();
        is_repeat(w, e, &self.config, &self.keys)
    }
}

pub(crate) trait Dedupe<'s> {
    fn dedupe(self, config: DedupeConfig, metrics: Arc<EngineMetrics>) -> Events<'s>;
}

impl<'s> Dedupe<'s> for Events<'s> {
    fn dedupe(self, config: DedupeConfig, metrics: Arc<EngineMetrics>) -> Events<'s> {
        let mut state = DedupeState::new(config);
        self.unary(Pipeline, "Dedupe", move |_cap, _info| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut dropped = 0;
                    let mut session = output.session(&cap);
                    for e in data.drain(..) {
                        if state.is_repeat(&e) {
                            dropped += 1;
                        } else {
                            session.give(e);
                        }
                    }
                    EngineMetrics::add(&metrics.duplicates, dropped);
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn ev(ms: i64, mid: Option<&str>, pkid: Option<u16>, dup: bool, body: &'static [u8]) -> Event {
        let mut e = Event::telemetry(
            DeviceId::parse("d").expect("id"),
            ms,
            Bytes::from_static(body),
        );
        e.system.message_id = mid.map(Into::into);
        e.packet_id = pkid;
        e.redelivered = dup;
        e
    }

    #[test]
    fn recognises_repeats_within_the_window_only() {
        let cfg = DedupeConfig {
            window: Duration::from_secs(10),
            per_device: 3,
        };
        let mut w = Window::default();
        let keys = RandomState::new();
        let mut repeat = |e: Event| is_repeat(&mut w, &e, &cfg, &keys);
        assert!(!repeat(ev(0, Some("a"), None, false, b"1")));
        assert!(repeat(ev(1, Some("a"), None, false, b"2")));
        assert!(!repeat(ev(2, None, Some(7), false, b"x")));
        // Same packet id and body, but not marked DUP: a new message that happens to match.
        assert!(!repeat(ev(3, None, Some(7), false, b"x")));
        assert!(repeat(ev(4, None, Some(7), true, b"x")));
        assert!(!repeat(ev(5, None, Some(7), true, b"other body")));
        // Out of the time window.
        assert!(!repeat(ev(20_000, Some("a"), None, false, b"1")));
    }
}
