//! The sampler: takes each event for every insight of its source, with the device's tags
//! as of the event's offset when an insight reads `$twin.tags` (from the device context,
//! `crate::context`), and sends the samples on by (insight, group).

use std::sync::Arc;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use weir_core::{DeviceDirectory, Event, EventSource};
use weir_rules::RuleSet;
use weir_rules::insight::{Insight, Sample};

use super::Events;
use super::insights::Item;
use crate::context::{AsOf, Context, Seed, Tags, read_as_of};
use crate::engine::RulesHandle;
use crate::metrics::EngineMetrics;

/// Samples `events` for the live insights. Events arrive by partition, where `context`
/// holds their devices' tags.
pub(crate) fn sample<'s>(
    events: Events<'s>,
    context: Context<'s>,
    seed: Arc<Seed>,
    rules: RulesHandle,
    directory: Arc<dyn DeviceDirectory>,
    metrics: Arc<EngineMetrics>,
) -> Stream<'s, u64, Vec<Item>> {
    let peers = events.scope().peers() as u64;
    let filter_rules = Arc::clone(&rules);
    // Only events some insight takes.
    let wanted: Events<'s> = events.unary(Pipeline, "ForInsights", move |_cap, _info| {
        move |input, output| {
            let rules = filter_rules.load();
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                for e in data.drain(..) {
                    // A dead letter (or late letter) was sampled as the original.
                    let wanted = e.source == EventSource::Clock
                        || (e.dead_letter.is_none()
                            && rules.insights.iter().any(|i| i.source == e.source));
                    if wanted {
                        session.give(e);
                    }
                }
            });
        }
    });
    let sampler = Sampler {
        directory,
        metrics,
        peers,
    };
    read_as_of(
        "Sample",
        wanted,
        context,
        seed,
        move || {
            let rules = rules.load_full();
            let reads = rules.insights.iter().any(Insight::reads_tags);
            (rules, reads)
        },
        move |rules, events, tags, give| sampler.batch(rules, events, tags, give),
    )
}

struct Sampler {
    directory: Arc<dyn DeviceDirectory>,
    metrics: Arc<EngineMetrics>,
    peers: u64,
}

impl Sampler {
    /// Samples `events` (with their tags, when the insights read them) for every insight
    /// of their source, and passes clock ticks to every worker.
    fn batch(
        &self,
        rules: &RuleSet,
        events: &[Arc<Event>],
        tags: &[Tags],
        give: &mut dyn FnMut(Item),
    ) {
        for (k, e) in events.iter().enumerate() {
            if e.source == EventSource::Clock {
                for to in 0..self.peers {
                    give(Item::Tick {
                        to,
                        offset: e.offset,
                        wall: e.enqueued_ms,
                    });
                }
                continue;
            }
            let registry = AsOf::new(&*self.directory, e.device_id.as_str(), tags.get(k));
            let view = rules.view(e, &registry);
            for insight in rules.insights.iter().filter(|i| i.source == e.source) {
                match insight.sample(&view, e.enqueued_ms) {
                    Sample::Take {
                        group,
                        time_ms,
                        values,
                    } => give(Item::Sample {
                        insight: Arc::clone(&insight.name),
                        group,
                        time: time_ms,
                        offset: e.offset,
                        arrival: e.enqueued_ms,
                        values,
                        event: insight.late.map(|_| Arc::clone(e)),
                    }),
                    Sample::NoTime => EngineMetrics::add(&self.metrics.insight_no_time, 1),
                    Sample::Skip => {}
                }
            }
        }
    }
}
