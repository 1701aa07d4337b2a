//! The sampler: takes each event for every insight of its source, with the device's tags
//! as of the event's offset when an insight reads `$twin.tags` (from the device context,
//! `crate::context`), and sends the samples on by (insight, group).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, Exchange};
use weir_core::{DeviceDirectory, DeviceRecord, Event, EventSource};
use weir_rules::EventView;
use weir_rules::insight::{Insight, Sample};

use super::Events;
use super::insights::Item;
use crate::context::{self, Lookup, Tags};
use crate::engine::RulesHandle;
use crate::metrics::EngineMetrics;

/// The registry with one device's tags as they were at an offset.
struct AsOf<'a> {
    registry: &'a dyn DeviceDirectory,
    device: &'a str,
    tags: &'a serde_json::Value,
}

impl DeviceDirectory for AsOf<'_> {
    fn get(&self, device_id: &str) -> Option<Arc<DeviceRecord>> {
        if device_id != self.device {
            return self.registry.get(device_id);
        }
        let mut record = match self.registry.get(device_id) {
            Some(r) => (*r).clone(),
            None => DeviceRecord::with_tags(device_id, serde_json::Value::Null),
        };
        record.tags = self.tags.clone();
        Some(Arc::new(record))
    }
}

/// Samples `events` for the live insights.
pub(crate) fn sample<'s>(
    events: Events<'s>,
    rules: RulesHandle,
    directory: Arc<dyn DeviceDirectory>,
    metrics: Arc<EngineMetrics>,
) -> Stream<'s, u64, Vec<Item>> {
    let peers = events.scope().peers() as u64;
    let context = context::arrange(events.clone());
    let filter_rules = Arc::clone(&rules);
    // Whether an insight reads tags, as of the rules this worker last saw: only then must
    // an event go to the worker that holds its device's context; otherwise it stays here.
    let needs_context = Rc::new(Cell::new(false));
    let needs = Rc::clone(&needs_context);
    let here = events.scope().index() as u64;
    // Only events some insight takes.
    let wanted = events
        .unary(Pipeline, "ForInsights", move |_cap, _info| {
            move |input, output| {
                let rules = filter_rules.load();
                needs.set(rules.insights.iter().any(Insight::reads_tags));
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
        })
        .exchange(move |e: &Arc<Event>| {
            if needs_context.get() {
                context::worker_hash(e.device_id.as_str())
            } else {
                here
            }
        });
    wanted.binary_frontier(
        context.stream,
        Pipeline,
        Pipeline,
        "Sample",
        move |_cap, _info| {
            let mut lookup = Lookup::new(context.trace);
            let mut held: Vec<(Capability<u64>, Vec<Arc<Event>>)> = Vec::new();
            move |(input, input_frontier), (changes, context_frontier), output| {
                input.for_each(|cap, data| {
                    if let Some(cap) = cap.retain_least(0) {
                        held.push((cap, std::mem::take(data)));
                    }
                });
                changes.for_each(|_cap, data| data.clear());
                let rules = rules.load();
                let reads_tags = rules.insights.iter().any(Insight::reads_tags);
                // An event may read its tags once every change below its offset is arranged.
                let ready = |e: &Event| !reads_tags || !context_frontier.less_equal(&e.offset);
                let mut i = 0;
                while i < held.len() {
                    let (cap, batch) = &mut held[i];
                    // Without an insight that reads tags, every event is ready and none
                    // needs a lookup: the batch goes through as it is.
                    let (now, tags) = if reads_tags {
                        let (now, later): (Vec<_>, Vec<_>) =
                            std::mem::take(batch).into_iter().partition(|e| ready(e));
                        *batch = later;
                        let keys: Vec<(&str, u64)> = now
                            .iter()
                            .map(|e| (e.device_id.as_str(), e.offset))
                            .collect();
                        let tags = lookup.tags(&keys);
                        (now, tags)
                    } else {
                        (std::mem::take(batch), Vec::new())
                    };
                    let mut session = output.session(cap);
                    for (k, e) in now.iter().enumerate() {
                        if e.source == EventSource::Clock {
                            session.give_iterator((0..peers).map(|to| Item::Tick {
                                to,
                                offset: e.offset,
                                wall: e.enqueued_ms,
                            }));
                            continue;
                        }
                        let as_of;
                        let registry: &dyn DeviceDirectory = match tags.get(k) {
                            Some(Tags::Known(t)) => {
                                as_of = AsOf {
                                    registry: &*directory,
                                    device: e.device_id.as_str(),
                                    tags: t,
                                };
                                &as_of
                            }
                            Some(Tags::Unknown) | None => &*directory,
                        };
                        let view = EventView::new(e, registry);
                        for insight in rules.insights.iter().filter(|i| i.source == e.source) {
                            match insight.sample(&view, e.enqueued_ms) {
                                Sample::Take {
                                    group,
                                    time_ms,
                                    values,
                                } => session.give(Item::Sample {
                                    insight: Arc::clone(&insight.name),
                                    group,
                                    time: time_ms,
                                    offset: e.offset,
                                    arrival: e.enqueued_ms,
                                    values,
                                    event: insight.late.map(|_| Arc::clone(e)),
                                }),
                                Sample::NoTime => EngineMetrics::add(&metrics.insight_no_time, 1),
                                Sample::Skip => {}
                            }
                        }
                    }
                    drop(session);
                    if held[i].1.is_empty() {
                        held.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
                let oldest = held
                    .iter()
                    .flat_map(|(_, b)| b.iter().map(|e| e.offset))
                    .min()
                    .or(input_frontier.frontier().first().copied());
                if let Some(o) = oldest {
                    lookup.done_below(o);
                }
            }
        },
    )
}
