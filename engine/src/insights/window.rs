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
use std::sync::Arc;

use hashbrown::HashMap;
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

#[derive(Debug, Clone)]
struct Group {
    /// The highest event time seen, and the wall-clock time it arrived.
    high: i64,
    arrived: i64,
    /// The clock at which the first open window is due, and at which the first closed one
    /// is forgotten: kept here so a flush can pass over a group without looking into its
    /// trees (10,000 groups, most with nothing to do, is the common case).
    due_at: i64,
    evict_at: i64,
    /// The clock as of the last flush: a group's clock never goes back (a device whose
    /// timestamps run slower than Weir's clock does not reopen what closed), and every
    /// closed window ends (plus lateness) at or below it.
    floor: i64,
    open: BTreeMap<(i64, i64), Accumulator>,
    closed: BTreeMap<(i64, i64), Closed>,
    /// Closed windows with a result to emit.
    dirty: BTreeSet<(i64, i64)>,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            high: 0,
            arrived: 0,
            due_at: i64::MAX,
            evict_at: i64::MAX,
            floor: i64::MIN,
            open: BTreeMap::new(),
            closed: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }
}

impl Group {
    /// Recomputes `due_at` from the open windows (ordered by start, and so by end).
    fn recount_due(&mut self, lateness: i64) {
        self.due_at = self
            .open
            .first_key_value()
            .map_or(i64::MAX, |(w, _)| w.1.saturating_add(lateness));
    }

    fn clock(&self, wall_ms: i64) -> i64 {
        self.high
            .saturating_add(wall_ms.saturating_sub(self.arrived).max(0))
            .max(self.floor)
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
    funcs: Arc<[(AggFn, f64)]>,
    groups: HashMap<String, Group>,
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
            funcs: Arc::from(funcs),
            groups: HashMap::default(),
        }
    }

    /// The fixed windows `[start, end)` that contain `t` (tumbling and hopping), oldest
    /// first.
    fn fixed(&self, t: i64) -> impl Iterator<Item = (i64, i64)> + use<> {
        let (size, hop) = match self.window {
            Window::Tumbling { size } => (ms(size), ms(size)),
            Window::Hopping { size, hop } => (ms(size), ms(hop)),
            Window::Session { .. } => (0, 1),
        };
        let last = t.div_euclid(hop) * hop;
        (0..size / hop)
            .rev()
            .map(move |k| last - k * hop)
            .filter(move |s| *s + size > t)
            .map(move |s| (s, s + size))
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
            _ => self.fixed(t).any(|(_, end)| end + self.lateness <= clock),
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
        self.push_closing(group, t, offset, values, wall_ms, None)
    }

    /// [`Windows::push`], then, when `closed` is given and one of the group's windows is
    /// due, closes what is due into it: a group's own events close its windows without
    /// waiting for the next flush of all (one lookup of the group for both).
    pub fn push_closing(
        &mut self,
        group: &str,
        t: i64,
        offset: u64,
        values: &[Option<f64>],
        wall_ms: i64,
        closed: Option<&mut Vec<WindowResult>>,
    ) -> Arrival {
        let windows = self.fixed(t);
        let (lateness, retention) = (self.lateness, self.retention);
        let funcs = &self.funcs;
        // `entry_ref`: the key is copied only when the group is new.
        let g = self.groups.entry_ref(group).or_default();
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
            let arrival = session.push(g, funcs, t, offset, values);
            g.recount_due(lateness);
            close_due(g, group, wall_ms, lateness, retention, closed);
            return arrival;
        }
        let (mut late, mut included) = (false, false);
        for w in windows {
            // Only a window at or below the floor can have been closed.
            if w.1 + lateness <= g.floor && g.correct(w, t, offset, values) {
                (late, included) = (true, true);
            } else if w.1 + lateness + retention <= clock {
                late = true;
            } else {
                // A window not seen before may already be due: it is emitted at the next
                // flush (revision 0), and the event counts as late.
                late |= w.1 + lateness <= clock;
                included = true;
                g.due_at = g.due_at.min(w.1.saturating_add(lateness));
                g.open
                    .entry(w)
                    .or_insert_with(|| Accumulator::shared(funcs))
                    .add(t, offset, values);
            }
        }
        close_due(g, group, wall_ms, lateness, retention, closed);
        match (included, late) {
            (false, _) => Arrival::TooLate,
            (true, true) => Arrival::Late,
            (true, false) => Arrival::OnTime,
        }
    }

    /// The lowest log offset any window kept (open, or closed and kept for corrections)
    /// holds; `None` when it keeps none.
    pub fn floor(&self) -> Option<u64> {
        self.groups
            .values()
            .flat_map(|g| {
                let closed = g.closed.values().map(|c| c.acc.lowest);
                g.open.values().map(|a| a.lowest).chain(closed)
            })
            .min()
    }

    /// Emits every window whose group clock has passed its end plus lateness (revision 0)
    /// and every correction, in group and window order, and forgets closed windows past
    /// retention.
    pub fn flush(&mut self, wall_ms: i64, out: &mut Vec<WindowResult>) {
        let (lateness, retention) = (self.lateness, self.retention);
        let first = out.len();
        for (name, g) in self.groups.iter_mut() {
            g.flush(name, wall_ms, lateness, retention, out);
        }
        self.groups
            .retain(|_, g| !(g.open.is_empty() && g.closed.is_empty()));
        // Groups are kept in a hash map for speed; results go out in a fixed order.
        out[first..].sort_by(|a, b| (&a.group, a.start).cmp(&(&b.group, b.start)));
    }
}

/// Closes `g`'s due windows into `out`, if there is an `out` and something is due.
fn close_due(
    g: &mut Group,
    name: &str,
    wall_ms: i64,
    lateness: i64,
    retention: i64,
    out: Option<&mut Vec<WindowResult>>,
) {
    if let Some(out) = out
        && g.clock(wall_ms) >= g.due_at
    {
        // One group's results come out in window order already (its `dirty` set is).
        g.flush(name, wall_ms, lateness, retention, out);
    }
}

impl Group {
    /// Closes what its clock has passed, emits corrections, forgets what is past retention.
    fn flush(
        &mut self,
        name: &str,
        wall_ms: i64,
        lateness: i64,
        retention: i64,
        out: &mut Vec<WindowResult>,
    ) {
        let clock = self.clock(wall_ms);
        self.floor = clock;
        if clock < self.due_at && clock < self.evict_at && self.dirty.is_empty() {
            return;
        }
        // Open windows are ordered by start, and (within a group) so are their ends:
        // the due ones are a prefix.
        while let Some(entry) = self.open.first_entry() {
            let w = *entry.key();
            if w.1 + lateness > clock {
                break;
            }
            let c = Closed {
                acc: entry.remove(),
                next: 0,
                dirty: true,
            };
            self.evict_at = self
                .evict_at
                .min(w.1.saturating_add(lateness).saturating_add(retention));
            self.closed.insert(w, c);
            self.dirty.insert(w);
        }
        self.recount_due(lateness);
        for w in std::mem::take(&mut self.dirty) {
            let Some(c) = self.closed.get_mut(&w) else {
                continue;
            };
            if !c.dirty {
                continue;
            }
            out.push(WindowResult {
                group: name.to_owned(),
                start: w.0,
                end: w.1,
                revision: c.next,
                events: c.acc.events,
                values: c.acc.values(),
            });
            c.next += 1;
            c.dirty = false;
        }
        self.evict_at = i64::MAX;
        while let Some(entry) = self.closed.first_entry() {
            let until = entry
                .key()
                .1
                .saturating_add(lateness)
                .saturating_add(retention);
            if until > clock {
                self.evict_at = until;
                break;
            }
            entry.remove();
        }
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
        funcs: &Arc<[(AggFn, f64)]>,
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
        let mut acc = Accumulator::shared(funcs);
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
