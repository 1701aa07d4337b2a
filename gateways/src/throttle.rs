//! Connect rate limits, hub-wide and per source address: token buckets refilled at
//! `rate` a second, holding up to one second's worth. After a network outage every device
//! reconnects at once; past the limits a client gets CONNACK 3 (server unavailable), which
//! the device SDKs answer by retrying with backoff, instead of every handshake, token
//! check and session setup competing for the cores the connected devices need.
//! I/O-free: the caller passes the clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.max(1.0),
            at: now,
        }
    }

    /// Tokens now, refilled since the last look.
    fn refill(&mut self, rate: f64, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * rate).min(rate.max(1.0));
        self.at = now;
    }
}

/// Which limit refused a connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// `mqtt.connect_rate`.
    Hub,
    /// `mqtt.connect_rate_per_address`.
    Address,
}

impl Throttled {
    pub fn reason(self) -> &'static str {
        match self {
            Throttled::Hub => "connect rate limit reached (mqtt.connect_rate)",
            Throttled::Address => {
                "connect rate limit for this address reached (mqtt.connect_rate_per_address)"
            }
        }
    }
}

/// Entries for addresses idle long enough to be full again are dropped once the map holds
/// this many.
const SWEEP_AT: usize = 4096;

pub struct ConnectThrottle {
    /// Connects a second over the whole hub (0: no limit).
    rate: f64,
    per_address: f64,
    hub: Mutex<Option<Bucket>>,
    addresses: Mutex<HashMap<IpAddr, Bucket>>,
    sweep_at: Mutex<usize>,
}

impl ConnectThrottle {
    /// `rate` and `per_address` connects a second; 0 turns a limit off.
    pub fn new(rate: u32, per_address: u32) -> ConnectThrottle {
        ConnectThrottle {
            rate: f64::from(rate),
            per_address: f64::from(per_address),
            hub: Mutex::new(None),
            addresses: Mutex::new(HashMap::new()),
            sweep_at: Mutex::new(SWEEP_AT),
        }
    }

    pub fn is_off(&self) -> bool {
        self.rate == 0.0 && self.per_address == 0.0
    }

    /// Takes a token from both buckets, or from neither when one is empty.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Throttled> {
        if self.is_off() {
            return Ok(());
        }
        let mut hub = self.hub.lock().map_err(|_| Throttled::Hub)?;
        if self.rate > 0.0 {
            let b = hub.get_or_insert_with(|| Bucket::full(self.rate, now));
            b.refill(self.rate, now);
            if b.tokens < 1.0 {
                return Err(Throttled::Hub);
            }
        }
        if self.per_address > 0.0 {
            let mut map = self.addresses.lock().map_err(|_| Throttled::Address)?;
            self.sweep(&mut map, now);
            let b = map
                .entry(ip)
                .or_insert_with(|| Bucket::full(self.per_address, now));
            b.refill(self.per_address, now);
            if b.tokens < 1.0 {
                return Err(Throttled::Address);
            }
            b.tokens -= 1.0;
        }
        if let Some(b) = hub.as_mut() {
            b.tokens -= 1.0;
        }
        Ok(())
    }

    /// Forgets addresses whose bucket has refilled: they would start full anyway. Runs
    /// when the map has doubled since the last sweep, so its cost is spread thin.
    fn sweep(&self, map: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let Ok(mut at) = self.sweep_at.lock() else {
            return;
        };
        if map.len() < *at {
            return;
        }
        let rate = self.per_address;
        map.retain(|_, b| {
            let mut b = *b;
            b.refill(rate, now);
            b.tokens < rate.max(1.0)
        });
        *at = (map.len() * 2).max(SWEEP_AT);
    }

    /// Addresses the per-address limit remembers (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.addresses.lock().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn the_hub_limit_allows_a_second_of_connects_then_refills() {
        let t = ConnectThrottle::new(10, 0);
        let now = Instant::now();
        let ok = (0..15)
            .filter(|i| t.check(ip(*i as u8), now).is_ok())
            .count();
        assert_eq!(ok, 10);
        assert_eq!(t.check(ip(1), now), Err(Throttled::Hub));
        // A tenth of a second later, one more.
        let later = now + Duration::from_millis(100);
        assert!(t.check(ip(1), later).is_ok());
        assert_eq!(t.check(ip(1), later), Err(Throttled::Hub));
        // Idle for long, it holds no more than a second's worth.
        let much_later = now + Duration::from_secs(60);
        let ok = (0..30)
            .filter(|_| t.check(ip(1), much_later).is_ok())
            .count();
        assert_eq!(ok, 10);
    }

    #[test]
    fn one_address_cannot_use_up_the_hub() {
        let t = ConnectThrottle::new(100, 5);
        let now = Instant::now();
        let ok = (0..50).filter(|_| t.check(ip(9), now).is_ok()).count();
        assert_eq!(ok, 5);
        assert_eq!(t.check(ip(9), now), Err(Throttled::Address));
        // Its refused attempts took nothing from the hub: others still get 95.
        let others = (0..200)
            .filter(|i| t.check(ip(10 + (*i % 100) as u8), now).is_ok())
            .count();
        assert_eq!(others, 95);
    }

    #[test]
    fn off_limits_allow_everything_and_idle_addresses_are_forgotten() {
        let t = ConnectThrottle::new(0, 0);
        assert!((0..10_000).all(|_| t.check(ip(1), Instant::now()).is_ok()));
        let t = ConnectThrottle::new(0, 2);
        let now = Instant::now();
        for i in 0..SWEEP_AT as u32 {
            let a = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            assert!(t.check(a, now).is_ok());
        }
        assert_eq!(t.tracked(), SWEEP_AT);
        // Seconds later every bucket is full again: the next check sweeps them.
        assert!(t.check(ip(1), now + Duration::from_secs(5)).is_ok());
        assert_eq!(t.tracked(), 1);
    }
}
