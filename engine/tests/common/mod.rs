//! What the insight tests' references share.

/// The windows containing `t`, as the reference sees them: every start on the hop grid
/// whose window covers `t`.
pub fn windows_of(t: i64, size: i64, hop: i64) -> Vec<(i64, i64)> {
    let mut s = t.div_euclid(hop) * hop;
    let mut out = Vec::new();
    while s + size > t {
        out.push((s, s + size));
        s -= hop;
    }
    out
}
