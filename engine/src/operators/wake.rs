//! An operator's own timer, with at most one wake-up queued.

use std::time::{Duration, Instant};

use timely::scheduling::Activator;

/// Runs an operator again `tick` after it asked, with at most one wake-up queued.
///
/// Timely queues every `activate_after` as a timer of its own and never merges them. An
/// operator that asks each time it runs, and also runs for other reasons (data, a moving
/// frontier: in a cluster, the peers' progress several times a tick), gathers several
/// timers, each of which wakes the worker and queues the next. An idle process of a
/// three-process cluster woke ~2 000 times a second that way and spent ~17 % of a core.
pub(crate) struct Wake {
    activator: Activator,
    tick: Duration,
    due: Option<Instant>,
}

impl Wake {
    pub(crate) fn new(activator: Activator, tick: Duration) -> Wake {
        Wake {
            activator,
            tick,
            due: None,
        }
    }

    /// Runs the operator again within `tick`, unless a wake-up is queued already.
    pub(crate) fn later(&mut self) {
        let now = Instant::now();
        if self.due.is_some_and(|due| due > now) {
            return;
        }
        // Timely stamps the timer after this instant, so it fires no earlier than `due`
        // and the run it causes sees the wake-up as spent.
        self.due = Some(now + self.tick);
        self.activator.activate_after(self.tick);
    }

    /// Runs the operator again at once.
    pub(crate) fn now(&self) {
        self.activator.activate();
    }
}
