//! The feed source: reads this worker's partition and advances time with it.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Events;
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;
use weir_core::{Event, EventFeed, FeedReader};

use crate::metrics::EngineMetrics;
use crate::sinks::Floors;

/// Events taken per activation before yielding to the rest of the dataflow.
const EVENTS_PER_ACTIVATION: usize = 8192;
/// Read-buffer capacity (in events) kept between reads when the feed is quiet.
const RETAINED_CAPACITY: usize = 512;
/// Reads in a row smaller than [`RETAINED_CAPACITY`] after which a burst is over.
const SMALL_READS_BEFORE_SHRINK: u32 = 64;

/// Emits the partition's events at their offsets and holds its capability at the reader's
/// position, so the frontier downstream says which offsets are complete. The returned cell
/// holds that position, for the sink's final commit.
pub(crate) fn feed_source<'s>(
    scope: Scope<'s, u64>,
    mut reader: Box<dyn FeedReader>,
    feed: &dyn EventFeed,
    tick: Duration,
    metrics: Arc<EngineMetrics>,
    cluster: Option<Arc<Floors>>,
) -> (Events<'s>, Rc<Cell<u64>>) {
    let end = Rc::new(Cell::new(0u64));
    let position = Rc::clone(&end);
    let stream = source(scope, "Feed", |cap, info| {
        let mut wake = super::Wake::new(scope.activator_for(info.address.clone()), tick);
        let remote = scope.worker().sync_activator_for(info.address.to_vec());
        feed.on_data(Box::new(move || {
            let _ = remote.activate();
        }));
        let mut cap = Some(cap);
        let mut buf = Vec::new();
        let mut small_reads = 0u32;
        let mut last_error: Option<Instant> = None;
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            match reader.read(EVENTS_PER_ACTIVATION, &mut buf) {
                Ok(frontier) => {
                    if let Some(first) = buf.first() {
                        let t = first.offset.max(*c.time());
                        let n = buf.len();
                        EngineMetrics::add(&metrics.events_in, n as u64);
                        output
                            .session(&c.delayed(&t))
                            .give_iterator(buf.drain(..).map(Arc::new));
                        if n == EVENTS_PER_ACTIVATION {
                            wake.now();
                        } else if n < RETAINED_CAPACITY && buf.capacity() > RETAINED_CAPACITY {
                            // A burst (a connect storm's connection events) is over: give
                            // its megabytes back rather than hold them while idle. Not at
                            // the first small read: under load, small and full reads
                            // alternate, and each regrowth cost fresh pages.
                            small_reads += 1;
                            if small_reads >= SMALL_READS_BEFORE_SHRINK {
                                buf.shrink_to(RETAINED_CAPACITY);
                                small_reads = 0;
                            }
                        }
                        if n >= RETAINED_CAPACITY {
                            small_reads = 0;
                        }
                    }
                    if frontier > *c.time() {
                        c.downgrade(&frontier);
                    }
                    position.set(position.get().max(frontier));
                    if reader.finished() {
                        // In a cluster the capability is held (at this log's last
                        // promise) until every process's log is closed.
                        if let Some(floors) = &cluster {
                            floors.close_local();
                        }
                        if cluster.as_ref().is_none_or(|f| f.all_closed()) {
                            EngineMetrics::add(&metrics.sources_ended, 1);
                            cap = None;
                            return;
                        }
                    }
                }
                Err(e) => {
                    if last_error.is_none_or(|t| t.elapsed().as_secs() >= 10) {
                        last_error = Some(Instant::now());
                        tracing::error!(error = %e, "reading the event feed failed; retrying");
                    }
                }
            }
            wake.later();
        }
    })
    .container::<Vec<Arc<Event>>>();
    (stream, end)
}
