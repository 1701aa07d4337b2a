//! Gateway counters, per protocol; the binary exposes them on `/metrics` with a `protocol`
//! label.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use weir_core::Revocation;

/// One protocol's counters.
#[derive(Debug, Default)]
pub struct ProtocolMetrics {
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    pub connects_refused: AtomicU64,
    /// Closed at once because `mqtt.max_connections` was reached.
    pub rejected_limit: AtomicU64,
    /// Closed at once because `mqtt.max_pending_connections` were still authenticating.
    pub rejected_pending: AtomicU64,
    /// Answered CONNACK 3 because a connect rate limit was reached.
    pub connects_throttled: AtomicU64,
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Connections the hub closed because their credential was revoked or expired, by
    /// [`Revocation::ALL`] order.
    pub revoked: [AtomicU64; 4],
}

impl ProtocolMetrics {
    pub fn inc(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn revoked(&self, why: Revocation) {
        if let Some(i) = Revocation::ALL.iter().position(|r| *r == why) {
            Self::inc(&self.revoked[i], 1);
        }
    }

    pub fn opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        Self::inc(&self.connections_total, 1);
    }

    pub fn closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every protocol's counters.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    protocols: Mutex<Vec<(&'static str, Arc<ProtocolMetrics>)>>,
}

impl GatewayMetrics {
    /// The counters of `protocol`, created on first use.
    pub fn protocol(&self, protocol: &'static str) -> Arc<ProtocolMetrics> {
        let Ok(mut v) = self.protocols.lock() else {
            return Arc::default();
        };
        if let Some((_, m)) = v.iter().find(|(p, _)| *p == protocol) {
            return Arc::clone(m);
        }
        let m = Arc::new(ProtocolMetrics::default());
        v.push((protocol, Arc::clone(&m)));
        m
    }

    /// Every protocol that has counters, in the order they were first used.
    pub fn all(&self) -> Vec<(&'static str, Arc<ProtocolMetrics>)> {
        self.protocols.lock().map(|v| v.clone()).unwrap_or_default()
    }
}
