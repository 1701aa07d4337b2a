//! Gateway counters; the binary exposes them on `/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct GatewayMetrics {
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    pub connects_refused: AtomicU64,
    pub connections_rejected_limit: AtomicU64,
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub protocol_errors: AtomicU64,
}

impl GatewayMetrics {
    pub fn inc(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
