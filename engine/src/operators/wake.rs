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

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::operators::generic::operator::source;

    use super::*;

    #[test]
    fn an_operator_woken_often_by_others_still_has_one_timer() {
        timely::execute_directly(|worker| {
            let tick = Duration::from_millis(50);
            let runs = Rc::new(Cell::new(0u32));
            let poke: Rc<RefCell<Option<Activator>>> = Rc::default();
            let done = Rc::new(Cell::new(false));
            let (counted, handle, finish) = (Rc::clone(&runs), Rc::clone(&poke), Rc::clone(&done));
            worker.dataflow::<u64, _, _>(move |scope| {
                source::<_, CapacityContainerBuilder<Vec<()>>, _, _>(
                    scope,
                    "Ticking",
                    move |cap, info| {
                        *handle.borrow_mut() = Some(scope.activator_for(info.address.clone()));
                        let mut wake = Wake::new(scope.activator_for(info.address.clone()), tick);
                        // Held until the test is done: the dataflow stays up while it steps it.
                        let mut cap = Some(cap);
                        move |_output| {
                            if finish.get() {
                                cap = None;
                            }
                            if cap.is_none() {
                                return;
                            }
                            counted.set(counted.get() + 1);
                            wake.later();
                        }
                    },
                );
            });
            // Woken 40 times by something else, a millisecond apart: with a timer queued
            // at each run, 40 timers would each wake it once a tick from then on.
            for _ in 0..40 {
                if let Some(a) = poke.borrow().as_ref() {
                    a.activate();
                }
                worker.step();
                std::thread::sleep(Duration::from_millis(1));
            }
            let before = runs.get();
            let until = Instant::now() + tick * 10;
            while Instant::now() < until {
                worker.step_or_park(Some(tick));
            }
            let timer_runs = runs.get() - before;
            done.set(true);
            if let Some(a) = poke.borrow().as_ref() {
                a.activate();
            }
            assert!(
                (3..=20).contains(&timer_runs),
                "{timer_runs} runs in 10 ticks"
            );
        });
    }
}
