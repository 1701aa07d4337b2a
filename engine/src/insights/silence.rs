//! Silence insights: a group that has sent nothing for `after` (wall-clock time since its
//! last event arrived) is reported silent once, and reported back when it sends again.

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Silent,
    Back,
}

/// One report: the group, the change, and when the group was last heard of (wall-clock
/// arrival, ms) and its last event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilenceReport {
    pub group: String,
    pub change: Change,
    pub last_arrival: i64,
    pub last_time: i64,
}

struct Seen {
    arrival: i64,
    time: i64,
    /// The log offset of its last event.
    offset: u64,
    silent: bool,
}

pub struct Silences {
    after: i64,
    groups: BTreeMap<String, Seen>,
}

impl Silences {
    pub fn new(after: Duration) -> Silences {
        Silences {
            after: i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            groups: BTreeMap::new(),
        }
    }

    /// `group` sent an event at event time `t`, arriving at `wall_ms`; a silent group is
    /// back.
    pub fn push(
        &mut self,
        group: &str,
        t: i64,
        offset: u64,
        wall_ms: i64,
    ) -> Option<SilenceReport> {
        let seen = self.groups.entry(group.to_owned()).or_insert(Seen {
            arrival: wall_ms,
            time: t,
            offset,
            silent: false,
        });
        let back = seen.silent.then(|| SilenceReport {
            group: group.to_owned(),
            change: Change::Back,
            last_arrival: seen.arrival,
            last_time: seen.time,
        });
        seen.arrival = seen.arrival.max(wall_ms);
        seen.time = seen.time.max(t);
        seen.offset = seen.offset.max(offset);
        seen.silent = false;
        back
    }

    /// The lowest log offset a replay needs to know of the groups not reported silent. A
    /// silent group is not held for: after a restart it is new when it sends again.
    pub fn floor(&self) -> Option<u64> {
        self.groups
            .values()
            .filter(|s| !s.silent)
            .map(|s| s.offset)
            .min()
    }

    /// Reports every group that has been quiet for `after` by `wall_ms`, once.
    pub fn flush(&mut self, wall_ms: i64, out: &mut Vec<SilenceReport>) {
        for (group, seen) in &mut self.groups {
            if !seen.silent && wall_ms.saturating_sub(seen.arrival) >= self.after {
                seen.silent = true;
                out.push(SilenceReport {
                    group: group.clone(),
                    change: Change::Silent,
                    last_arrival: seen.arrival,
                    last_time: seen.time,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_once_then_back() {
        let mut s = Silences::new(Duration::from_secs(5));
        let mut out = Vec::new();
        assert!(s.push("d", 100, 1, 1_000).is_none());
        s.flush(5_999, &mut out);
        assert!(out.is_empty());
        s.flush(6_000, &mut out);
        s.flush(9_000, &mut out);
        assert_eq!(out.len(), 1, "reported once");
        assert_eq!(
            (out[0].change, out[0].last_arrival),
            (Change::Silent, 1_000)
        );
        let back = s.push("d", 200, 2, 10_000).expect("back");
        assert_eq!((back.change, back.last_time), (Change::Back, 100));
        s.flush(12_000, &mut out);
        assert_eq!(out.len(), 1, "not silent again yet");
    }
}
