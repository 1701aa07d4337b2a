//! Wall-clock helpers. Weir's event time is milliseconds since the Unix epoch, UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> i64 {
    now_ms() / 1000
}

/// The start of the UTC hour containing `ms`.
pub fn hour_floor(ms: i64) -> i64 {
    ms.div_euclid(3_600_000) * 3_600_000
}
