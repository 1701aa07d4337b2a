//! The ingress source: drains a worker's queue into the dataflow.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use timely::dataflow::Scope;
use timely::dataflow::Stream;
use timely::dataflow::operators::generic::operator::source;
use timely::scheduling::SyncActivator;
use tokio::sync::mpsc::{self, error::TryRecvError};
use weir_core::Event;
use weir_core::time::now_ms;

use crate::ingress::Batch;
use crate::metrics::EngineMetrics;

/// Batches taken per activation before yielding to the rest of the dataflow.
const BATCHES_PER_ACTIVATION: usize = 64;

/// Emits queued events at their enqueued time (or the source's current time, if that is
/// later) and advances the source's time with the clock, so downstream frontiers move
/// even when no events arrive.
pub(crate) fn ingress_source<'s>(
    scope: Scope<'s, i64>,
    mut rx: mpsc::Receiver<Batch>,
    activator_slot: &OnceLock<SyncActivator>,
    shutdown: Arc<AtomicBool>,
    tick: Duration,
    metrics: Arc<EngineMetrics>,
) -> Stream<'s, i64, Vec<Event>> {
    source(scope, "Ingress", |cap, info| {
        let activator = scope.activator_for(info.address.clone());
        let _ = activator_slot.set(scope.worker().sync_activator_for(info.address.to_vec()));
        let mut cap = Some(cap);
        let mut closing = false;
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            if shutdown.load(Ordering::Relaxed) && !closing {
                // Refuse new sends but keep draining what is already queued.
                rx.close();
                closing = true;
            }
            let mut taken = 0;
            loop {
                match rx.try_recv() {
                    Ok(batch) => {
                        let first = batch
                            .iter()
                            .map(|e| e.enqueued_ms)
                            .min()
                            .unwrap_or(*c.time());
                        let t = first.max(*c.time());
                        EngineMetrics::add(&metrics.events_in, batch.len() as u64);
                        output
                            .session(&c.delayed(&t))
                            .give_iterator(batch.into_iter());
                        taken += 1;
                        if taken == BATCHES_PER_ACTIVATION {
                            activator.activate();
                            break;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        cap = None;
                        return;
                    }
                }
            }
            let now = now_ms();
            if now > *c.time() {
                c.downgrade(&now);
            }
            if closing {
                activator.activate();
            } else {
                activator.activate_after(tick);
            }
        }
    })
    .container::<Vec<Event>>()
}
