//! Event-time windows of one insight, per group: which windows an event falls in, when a
//! window is complete, and corrections for data that comes after that. No I/O, no clock:
//! the caller passes wall-clock time in, so replays and tests are deterministic.
//!
//! A group's **clock** is the highest event time it has sent, advanced by the wall-clock
//! time since that event arrived: while a device sends, its own timestamps drive its
//! windows (whatever the skew between its clock and Weir's); once it goes quiet, its
//! windows still close as time passes. A window is **closed** (its result emitted with
//! revision 0) once the clock reaches its end plus `allowed_lateness`. An event for a
//! closed window is **late**: it updates the window, which is emitted again with the next
//! revision at the next flush. Closed windows are kept `retention` beyond their close for
//! that; an event older than that cannot be merged and is reported as too late.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use weir_rules::insight::{AggFn, Window};

use super::aggregate::Accumulator;

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// It is in every window it belongs to, before their results.
    OnTime,
    /// At least one of its windows had been emitted: corrections follow.
    Late,
    /// Its windows are older than the retention: it could not be included.
    TooLate,
}

/// One result: a window of a group, as of `revision`.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    pub group: String,
    pub start: i64,
    pub end: i64,
    pub revision: u32,
    pub events: u64,
    /// One value per aggregate; `None` where there was nothing to aggregate.
    pub values: Vec<Option<f64>>,
}

#[derive(Debug, Clone)]
struct Closed {
    acc: Accumulator,
    /// The revision its next result gets.
    next: u32,
    /// Changed since its last result.
    dirty: bool,
}

#[derive(Debug, Clone, Default)]
struct Group {
    /// The highest event time seen, and the wall-clock time it arrived.
    high: i64,
    arrived: i64,
    open: BTreeMap<(i64, i64), Accumulator>,
    closed: BTreeMap<(i64, i64), Closed>,
    /// Closed windows with a result to emit.
    dirty: BTreeSet<(i64, i64)>,
}

impl Group {
    fn clock(&self, wall_ms: i64) -> i64 {
        self.high
            .saturating_add(wall_ms.saturating_sub(self.arrived).max(0))
    }

    /// Adds an event to the closed window `w` if there is one: a correction to emit.
    fn correct(&mut self, w: (i64, i64), t: i64, offset: u64, values: &[Option<f64>]) -> bool {
        let Some(c) = self.closed.get_mut(&w) else {
            return false;
        };
        c.acc.add(t, offset, values);
        c.dirty = true;
        self.dirty.insert(w);
        true
    }
}

/// The windows of one insight, every group.
pub struct Windows {
    window: Window,
    lateness: i64,
    retention: i64,
    funcs: Vec<(AggFn, f64)>,
    groups: BTreeMap<String, Group>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Windows {
    pub fn new(
        window: Window,
        lateness: Duration,
        retention: Duration,
        funcs: Vec<(AggFn, f64)>,
    ) -> Windows {
        Windows {
            window,
            lateness: ms(lateness),
            retention: ms(retention),
            funcs,
            groups: BTreeMap::new(),
        }
    }

    /// The fixed windows `[start, end)` that contain `t` (tumbling and hopping), oldest
    /// first.
    fn fixed(&self, t: i64) -> Vec<(i64, i64)> {
        let (size, hop) = match self.window {
            Window::Tumbling { size } => (ms(size), ms(size)),
            Window::Hopping { size, hop } => (ms(size), ms(hop)),
            Window::Session { .. } => return Vec::new(),
        };
        let last = t.div_euclid(hop) * hop;
        let mut out: Vec<(i64, i64)> = (0..size / hop)
            .map(|k| last - k * hop)
            .filter(|s| *s + size > t)
            .map(|s| (s, s + size))
            .collect();
        out.reverse();
        out
    }

    /// True when an event of `group` at event time `t` would be late now: one of its
    /// windows has been (or would at once be) emitted.
    pub fn is_late(&self, group: &str, t: i64, wall_ms: i64) -> bool {
        let Some(g) = self.groups.get(group) else {
            return false;
        };
        let clock = g.clock(wall_ms);
        match self.window {
            Window::Session { gap } => {
                g.closed.keys().any(|(s, e)| *s <= t && t < *e)
                    || t + ms(gap) + self.lateness <= clock
            }
            _ => self
                .fixed(t)
                .iter()
                .any(|(_, end)| end + self.lateness <= clock),
        }
    }

    /// Adds one event of `group` at event time `t` (log offset `offset`) with its value for
    /// each aggregate. `wall_ms` is when it arrived.
    pub fn push(
        &mut self,
        group: &str,
        t: i64,
        offset: u64,
        values: &[Option<f64>],
        wall_ms: i64,
    ) -> Arrival {
        let windows = self.fixed(t);
        let (lateness, retention) = (self.lateness, self.retention);
        let funcs = &self.funcs;
        let g = self.groups.entry(group.to_owned()).or_default();
        let fresh = g.open.is_empty() && g.closed.is_empty();
        // A group seen for the first time (or again after everything of it was forgotten)
        // has no clock yet: nothing of it is late.
        let clock = if fresh { i64::MIN } else { g.clock(wall_ms) };
        if fresh || t > g.high {
            g.high = if fresh { t } else { t.max(g.high) };
            g.arrived = wall_ms;
        }
        if let Window::Session { gap } = self.window {
            let session = Session {
                gap: ms(gap),
                lateness,
                retention,
                clock,
            };
            return session.push(g, funcs, t, offset, values);
        }
        let (mut late, mut included) = (false, false);
        for w in windows {
            if g.correct(w, t, offset, values) {
                (late, included) = (true, true);
            } else if w.1 + lateness + retention <= clock {
                late = true;
            } else {
                // A window not seen before may already be due: it is emitted at the next
                // flush (revision 0), and the event counts as late.
                late |= w.1 + lateness <= clock;
                included = true;
                g.open
                    .entry(w)
                    .or_insert_with(|| Accumulator::new(funcs))
                    .add(t, offset, values);
            }
        }
        match (included, late) {
            (false, _) => Arrival::TooLate,
            (true, true) => Arrival::Late,
            (true, false) => Arrival::OnTime,
        }
    }

    /// Emits every window whose group clock has passed its end plus lateness (revision 0)
    /// and every correction, in group and window order, and forgets closed windows past
    /// retention.
    pub fn flush(&mut self, wall_ms: i64, out: &mut Vec<WindowResult>) {
        let (lateness, retention) = (self.lateness, self.retention);
        for (name, g) in self.groups.iter_mut() {
            let clock = g.clock(wall_ms);
            let due: Vec<(i64, i64)> = g
                .open
                .keys()
                .copied()
                .filter(|w| w.1 + lateness <= clock)
                .collect();
            for w in due {
                if let Some(acc) = g.open.remove(&w) {
                    let c = Closed {
                        acc,
                        next: 0,
                        dirty: true,
                    };
                    g.closed.insert(w, c);
                    g.dirty.insert(w);
                }
            }
            for w in std::mem::take(&mut g.dirty) {
                let Some(c) = g.closed.get_mut(&w) else {
                    continue;
                };
                if !c.dirty {
                    continue;
                }
                out.push(WindowResult {
                    group: name.clone(),
                    start: w.0,
                    end: w.1,
                    revision: c.next,
                    events: c.acc.events,
                    values: c.acc.values(),
                });
                c.next += 1;
                c.dirty = false;
            }
            g.closed
                .retain(|w, _| w.1.saturating_add(lateness).saturating_add(retention) > clock);
        }
        self.groups
            .retain(|_, g| !(g.open.is_empty() && g.closed.is_empty()));
    }
}

/// Session windows of one group: an event joins the open session it falls in or within
/// `gap` of, merging the sessions it bridges. A session `[start, end)` ends `gap` after
/// its last event. An event inside a closed session corrects it (without moving its end).
struct Session {
    gap: i64,
    lateness: i64,
    retention: i64,
    clock: i64,
}

impl Session {
    fn push(
        &self,
        g: &mut Group,
        funcs: &[(AggFn, f64)],
        t: i64,
        offset: u64,
        values: &[Option<f64>],
    ) -> Arrival {
        let closed = g.closed.keys().copied().find(|(s, e)| *s <= t && t < *e);
        if let Some(w) = closed {
            g.correct(w, t, offset, values);
            return Arrival::Late;
        }
        let end = t + self.gap;
        if end + self.lateness + self.retention <= self.clock {
            return Arrival::TooLate;
        }
        let touching: Vec<(i64, i64)> = g
            .open
            .keys()
            .copied()
            .filter(|(s, e)| end >= *s && t < *e)
            .collect();
        let mut acc = Accumulator::new(funcs);
        let (mut lo, mut hi) = (t, end);
        for w in touching {
            if let Some(a) = g.open.remove(&w) {
                acc.merge(&a);
                lo = lo.min(w.0);
                hi = hi.max(w.1);
            }
        }
        acc.add(t, offset, values);
        g.open.insert((lo, hi), acc);
        if end + self.lateness <= self.clock {
            Arrival::Late
        } else {
            Arrival::OnTime
        }
    }
}
