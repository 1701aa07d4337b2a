//! Gateway counters; the binary exposes them on `/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::mqtt::connect::Revocation;

#[derive(Debug, Default)]
pub struct GatewayMetrics {
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    pub connects_refused: AtomicU64,
    pub connections_rejected_limit: AtomicU64,
    /// Connections closed at once because `max_pending_connections` were still
    /// authenticating.
    pub connections_rejected_pending: AtomicU64,
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Connections the hub closed because their credential was revoked or expired, by
    /// [`Revocation::ALL`] order.
    pub revoked: [AtomicU64; 4],
}

impl GatewayMetrics {
    pub fn revoked(&self, why: Revocation) {
        if let Some(i) = Revocation::ALL.iter().position(|r| *r == why) {
            Self::inc(&self.revoked[i], 1);
        }
    }

    pub fn inc(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
