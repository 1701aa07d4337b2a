//! The route operator: evaluates the live rule set on each event, with the device's tags as
//! of the event's offset when a route, column or enrichment reads `$twin.tags`.

use std::sync::Arc;
use std::time::Instant;

use timely::dataflow::Stream;
use weir_core::{DeviceDirectory, Event};
use weir_rules::{EventView, Names, Outcome, RuleSet};

use super::{Events, Routed};
use crate::context::{AsOf, Context, Seed, Tags, read_as_of};
use crate::engine::{RulesHandle, TraceFn};
use crate::metrics::EngineMetrics;

/// Everything routing needs besides its input.
pub(crate) struct RouteSetup {
    pub rules: RulesHandle,
    pub directory: Arc<dyn DeviceDirectory>,
    pub seed: Arc<Seed>,
    pub trace: Option<TraceFn>,
    pub metrics: Arc<EngineMetrics>,
}

pub(crate) trait Route<'s> {
    /// Routes each event to the endpoints the current rule set picks, with enrichments
    /// and typed columns evaluated. Problems are counted as dead letters, never panics.
    fn route(self, context: Context<'s>, setup: RouteSetup) -> Stream<'s, u64, Vec<Routed>>;
}

impl<'s> Route<'s> for Events<'s> {
    fn route(self, context: Context<'s>, setup: RouteSetup) -> Stream<'s, u64, Vec<Routed>> {
        let seed = Arc::clone(&setup.seed);
        let rules = Arc::clone(&setup.rules);
        let mut router = Router {
            setup,
            outcomes: Vec::new(),
            last_warning: None,
            matches: Vec::new(),
            fallbacks: 0,
            names: None,
        };
        read_as_of(
            "Route",
            self,
            context,
            seed,
            move || {
                let rules = rules.load_full();
                let reads = rules.reads_tags();
                (rules, reads)
            },
            move |rules, events, tags, give| router.batch(rules, events, tags, give),
        )
    }
}

struct Router {
    setup: RouteSetup,
    /// Each event's routing decision, for one batch at a time.
    outcomes: Vec<Outcome>,
    last_warning: Option<Instant>,
    /// This batch's matches per route index, and the fallback's.
    matches: Vec<u64>,
    fallbacks: u64,
    /// The current rule set and this worker's copies of its names (see
    /// [`RuleSet::names`]).
    names: Option<(Arc<RuleSet>, Names)>,
}

impl Router {
    /// Routes one batch; `tags` holds each event's tags when the rules read them.
    fn batch(
        &mut self,
        rules: &Arc<RuleSet>,
        events: &[Arc<Event>],
        tags: &[Tags],
        give: &mut dyn FnMut(Routed),
    ) {
        let reads_body = rules.reads_body();
        // The rule set is held with its names, so a new one is never at an old address.
        if self
            .names
            .as_ref()
            .is_none_or(|(held, _)| !Arc::ptr_eq(held, rules))
        {
            self.names = Some((Arc::clone(rules), rules.names()));
        }
        let Some((_, names)) = &self.names else {
            return;
        };
        let (mut routed, mut unrouted, mut deliveries, mut dead) = (0, 0, 0, 0);
        self.matches.clear();
        self.matches.resize(rules.routes.len(), 0);
        self.fallbacks = 0;
        let directory = &*self.setup.directory;
        let registries: Vec<AsOf> = events
            .iter()
            .enumerate()
            .map(|(k, e)| AsOf::new(directory, e.device_id.as_str(), tags.get(k)))
            .collect();
        let views: Vec<EventView> = events
            .iter()
            .zip(&registries)
            .map(|(e, registry)| rules.view(e, registry))
            .collect();
        rules.evaluate_batch(&views, &mut self.outcomes);
        for ((event, view), outcome) in events.iter().zip(&views).zip(&self.outcomes) {
            // The insights' clock and registry copies: no route can select them.
            if event.source.is_internal() {
                continue;
            }
            if reads_body && view.body_is_malformed() {
                dead += 1;
                if self
                    .last_warning
                    .is_none_or(|t| t.elapsed().as_secs() >= 10)
                {
                    self.last_warning = Some(Instant::now());
                    tracing::warn!(
                        device = %event.device_id,
                        offset = event.offset,
                        "message body is not valid JSON; $body conditions treat it as undefined (counted as a dead letter)"
                    );
                }
            }
            if let Some(t) = &self.setup.trace {
                t(event, rules, outcome);
            }
            for &r in &outcome.routes {
                if let Some(n) = self.matches.get_mut(r) {
                    *n += 1;
                }
            }
            self.fallbacks += u64::from(outcome.fallback);
            if outcome.endpoints.is_empty() {
                unrouted += 1;
                continue;
            }
            routed += 1;
            for &ep in &outcome.endpoints {
                let Some(endpoint) = names.endpoints.get(ep) else {
                    continue;
                };
                deliveries += 1;
                give(Routed {
                    endpoint: Arc::clone(endpoint),
                    delivery: rules.delivery(names, ep, outcome, view, event),
                });
            }
        }
        let m = &self.setup.metrics;
        EngineMetrics::add(&m.events_routed, routed);
        EngineMetrics::add(&m.events_unrouted, unrouted);
        EngineMetrics::add(&m.deliveries, deliveries);
        EngineMetrics::add(&m.dead_letters, dead);
        let fallback = (Arc::clone(&names.fallback), self.fallbacks);
        m.add_route_matches(
            names
                .routes
                .iter()
                .zip(&self.matches)
                .map(|(r, n)| (Arc::clone(r), *n))
                .chain(std::iter::once(fallback)),
        );
    }
}
