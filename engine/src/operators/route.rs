//! The route operator: evaluates the live rule set on each event.

use std::sync::Arc;
use std::time::Instant;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use weir_core::{DeviceDirectory, EventSource};
use weir_rules::{EventView, Outcome};

use super::{Events, Routed};
use crate::engine::{RulesHandle, TraceFn};
use crate::metrics::EngineMetrics;

pub(crate) trait Route<'s> {
    /// Routes each event to the endpoints the current rule set picks, with enrichments
    /// and typed columns evaluated. Problems are counted as dead letters, never panics.
    fn route(
        self,
        rules: RulesHandle,
        directory: Arc<dyn DeviceDirectory>,
        trace: Option<TraceFn>,
        metrics: Arc<EngineMetrics>,
    ) -> Stream<'s, u64, Vec<Routed>>;
}

impl<'s> Route<'s> for Events<'s> {
    fn route(
        self,
        rules: RulesHandle,
        directory: Arc<dyn DeviceDirectory>,
        trace: Option<TraceFn>,
        metrics: Arc<EngineMetrics>,
    ) -> Stream<'s, u64, Vec<Routed>> {
        self.unary(Pipeline, "Route", move |_cap, _info| {
            let mut outcome = Outcome::default();
            let mut last_warning: Option<Instant> = None;
            move |input, output| {
                let rules = rules.load();
                let reads_body = rules.reads_body();
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    let (mut routed, mut unrouted, mut deliveries, mut dead) = (0, 0, 0, 0);
                    for event in data.drain(..) {
                        // The insights' clock: no route can select it.
                        if event.source == EventSource::Clock {
                            continue;
                        }
                        let view = EventView::new(&event, &*directory);
                        rules.evaluate_event(&view, &event, &mut outcome);
                        if reads_body && view.body_is_malformed() {
                            dead += 1;
                            if last_warning.is_none_or(|t| t.elapsed().as_secs() >= 10) {
                                last_warning = Some(Instant::now());
                                tracing::warn!(
                                    device = %event.device_id,
                                    offset = event.offset,
                                    "message body is not valid JSON; $body conditions treat it as undefined (counted as a dead letter)"
                                );
                            }
                        }
                        if let Some(t) = &trace {
                            t(&event, &rules, &outcome);
                        }
                        if outcome.endpoints.is_empty() {
                            unrouted += 1;
                            continue;
                        }
                        routed += 1;
                        for &ep in &outcome.endpoints {
                            deliveries += 1;
                            session.give(Routed {
                                endpoint: Arc::clone(&rules.endpoints[ep]),
                                delivery: rules.delivery(ep, &outcome, &view, &event),
                            });
                        }
                    }
                    EngineMetrics::add(&metrics.events_routed, routed);
                    EngineMetrics::add(&metrics.events_unrouted, unrouted);
                    EngineMetrics::add(&metrics.deliveries, deliveries);
                    EngineMetrics::add(&metrics.dead_letters, dead);
                });
            }
        })
    }
}
