//! The order operator, for a cluster: a worker's events come from every process's log,
//! interleaved as the network delivers them, but the operators after it (dedupe windows,
//! the sinks' commits at "everything below `hi` is written") need them in offset order, as
//! one process reads its own log. Events are held until the frontier passes them and are
//! then released sorted by offset.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use weir_core::Event;

use super::Events;

pub(crate) trait InOffsetOrder<'s> {
    /// Releases events in offset order once the frontier has passed them. `last` gets the
    /// last frontier seen: when the input ends, what is above it is dropped, not released,
    /// since events below it are all that is known complete (the rest are in the logs and
    /// are read again at the next start, from the commit points below them).
    /// `ended` is set once the input has ended.
    fn in_offset_order(self, last: Rc<Cell<u64>>, ended: Rc<Cell<bool>>) -> Events<'s>;
}

impl<'s> InOffsetOrder<'s> for Events<'s> {
    fn in_offset_order(self, last: Rc<Cell<u64>>, ended: Rc<Cell<bool>>) -> Events<'s> {
        self.unary_frontier::<CapacityContainerBuilder<Vec<Arc<Event>>>, _, _, _>(
            Pipeline,
            "InOffsetOrder",
            move |_cap, _info| {
                let mut held: Vec<Arc<Event>> = Vec::new();
                // The earliest time of what is held: events go out at it (an event's
                // offset is never below the time it travelled at).
                let mut cap: Option<Capability<u64>> = None;
                move |(input, frontier), output| {
                    input.for_each(|time, data| {
                        held.append(data);
                        if let Some(t) = time.retain_least(0)
                            && cap.as_ref().is_none_or(|c| t.time() < c.time())
                        {
                            cap = Some(t);
                        }
                    });
                    let Some(through) = frontier.frontier().first().copied() else {
                        if !held.is_empty() {
                            tracing::debug!(
                                dropped = held.len(),
                                above = last.get(),
                                "the input ended: events above the last frontier are left to the next start"
                            );
                        }
                        held.clear();
                        cap = None;
                        ended.set(true);
                        return;
                    };
                    last.set(last.get().max(through));
                    let Some(c) = cap.as_mut() else { return };
                    // A few runs already in offset order (one per sending worker): the
                    // stable sort merges them.
                    held.sort_by_key(|e| e.offset);
                    let n = held.partition_point(|e| e.offset < through);
                    if n > 0 {
                        output.session(&*c).give_iterator(held.drain(..n));
                    }
                    match held.first() {
                        Some(e) => c.downgrade(&e.offset.max(*c.time())),
                        None => cap = None,
                    }
                }
            },
        )
    }
}
