//! Device context as a differential collection: each device's twin tags, arranged by
//! device, with the log offset of the change that set them as the time. An event reads the
//! tags *as of its own offset*, so an insight groups it by the tags that were valid when it
//! entered the log, also when the log is replayed after a restart (the registry only knows
//! the tags as they are now).
//!
//! The collection is built from the events that change tags (twin changes, device
//! creation and deletion), which the hub marks with the tags after and before the change
//! ([`TAGS_PROPERTY`], [`TAGS_BEFORE_PROPERTY`]). differential's upsert arrangement turns
//! that sequence into a collection (retracting each device's previous tags at the offset of
//! the next change); [`Lookup`] reads the arrangement's trace as of an offset.
//!
//! This is the only module that touches differential-dataflow.

use differential_dataflow::Hashable;
use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::cursor::cursor_list;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::trace::{Cursor, TraceReader};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::progress::Antichain;
use weir_core::twin::{TAGS_BEFORE_PROPERTY, TAGS_PROPERTY};
use weir_core::{AuthMethod, Event, EventSource};

use crate::operators::Events;

/// A device id.
type Key = String;
/// The tags after a change and before it, as JSON text (`null`: none, the device is gone).
type Val = (String, String);
type Spine = ValSpine<Key, Val, u64, isize>;
pub(crate) type Trace = TraceAgent<Spine>;
type Upserts<'s> = Stream<'s, u64, Vec<(Key, Option<Val>, u64)>>;

/// The worker that holds `device`'s context: events that read it are sent there.
pub(crate) fn worker_hash(device: &str) -> u64 {
    (&device).hashed()
}

/// Arranges the tags changes among `events` by device.
pub(crate) fn arrange<'s>(events: Events<'s>) -> Arranged<'s, Trace> {
    let upserts: Upserts<'s> = events.unary(Pipeline, "TagChanges", |_cap, _info| {
        |input, output| {
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                for e in data.drain(..) {
                    if let Some(u) = upsert(&e) {
                        session.give(u);
                    }
                }
            });
        }
    });
    arrange_from_upsert::<ValBuilder<Key, Val, u64, isize>, Spine, Key, Val>(
        upserts,
        "DeviceContext",
    )
}

/// The change an event makes to its device's tags, if it is one the hub wrote.
fn upsert(e: &Event) -> Option<(Key, Option<Val>, u64)> {
    let hub_made = e.auth_method == AuthMethod::Internal
        && matches!(
            e.source,
            EventSource::TwinChangeEvents | EventSource::DeviceLifecycleEvents
        );
    if !hub_made {
        return None;
    }
    let property = |name: &str| {
        e.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let after = property(TAGS_PROPERTY)?;
    let before = property(TAGS_BEFORE_PROPERTY).unwrap_or_else(|| "null".into());
    Some((e.device_id.to_string(), Some((after, before)), e.offset))
}

/// What the arrangement says of a device's tags at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tags {
    /// Set by a change at or before the offset (`null`: deleted).
    Known(serde_json::Value),
    /// Nothing in the log says: the registry's tags hold.
    Unknown,
}

/// Reads one worker's shard of the arrangement.
pub(crate) struct Lookup {
    trace: Trace,
}

impl Lookup {
    pub(crate) fn new(trace: Trace) -> Lookup {
        Lookup { trace }
    }

    /// The tags of each of `devices` as of its offset, in order. Every change below those
    /// offsets must be in the trace (the caller waits for the arrangement's frontier).
    pub(crate) fn tags(&mut self, devices: &[(&str, u64)]) -> Vec<Tags> {
        let mut out = Vec::with_capacity(devices.len());
        let mut upper = Antichain::new();
        self.trace.read_upper(&mut upper);
        let Some(batches) = self.trace.batches_through(upper.borrow()) else {
            return vec![Tags::Unknown; devices.len()];
        };
        let (mut cursor, storage) = cursor_list(batches);
        for &(device, at) in devices {
            let key = device.to_owned();
            cursor.rewind_keys(&storage);
            cursor.seek_key(&storage, &key);
            let mut known: Option<String> = None;
            // The earliest change after `at`: its "before" held at `at`.
            let mut next: Option<(u64, String)> = None;
            if cursor.get_key(&storage) == Some(&key) {
                while let Some((after, before)) = cursor.get_val(&storage) {
                    let (mut now, mut first_after) = (0isize, None::<u64>);
                    cursor.map_times(&storage, |t, d| {
                        if *t <= at {
                            now += *d;
                        } else if *d > 0 {
                            first_after = Some(first_after.map_or(*t, |f| f.min(*t)));
                        }
                    });
                    if now > 0 {
                        known = Some(after.clone());
                    }
                    if let Some(t) = first_after
                        && next.as_ref().is_none_or(|(n, _)| t < *n)
                    {
                        next = Some((t, before.clone()));
                    }
                    cursor.step_val(&storage);
                }
            }
            let tags = match known.or(next.map(|(_, before)| before)) {
                Some(text) => Tags::Known(serde_json::from_str(&text).unwrap_or_default()),
                None => Tags::Unknown,
            };
            out.push(tags);
        }
        out
    }

    /// Nothing will be asked below `offset` any more: history below it may be compacted.
    pub(crate) fn done_below(&mut self, offset: u64) {
        let frontier = Antichain::from_elem(offset);
        self.trace.set_logical_compaction(frontier.borrow());
        self.trace.set_physical_compaction(frontier.borrow());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::InputHandle;
    use timely::dataflow::operators::{Input, Probe};
    use weir_core::DeviceId;

    fn change(device: &str, offset: u64, before: Option<&str>, after: &str) -> Arc<Event> {
        let mut e = Event::telemetry(DeviceId::parse(device).expect("id"), 0, bytes::Bytes::new());
        e.source = EventSource::TwinChangeEvents;
        e.auth_method = AuthMethod::Internal;
        e.offset = offset;
        e.properties.push((TAGS_PROPERTY.into(), after.into()));
        if let Some(b) = before {
            e.properties.push((TAGS_BEFORE_PROPERTY.into(), b.into()));
        }
        Arc::new(e)
    }

    #[test]
    fn tags_are_read_as_of_an_offset() {
        timely::execute_directly(|worker| {
            let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<Arc<Event>>>>::new();
            let (trace, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let arranged = arrange(scope.input_from(&mut input));
                let probe = arranged.stream.clone().probe().0;
                (arranged.trace, probe)
            });
            let a = r#"{"site":"A"}"#;
            let b = r#"{"site":"B"}"#;
            input.send(change("d", 10, Some(a), b));
            input.send(change("d", 20, Some(b), "null"));
            // A telemetry event from a device is no change, whatever its properties say.
            let mut forged = (*change("e", 15, None, b)).clone();
            forged.auth_method = AuthMethod::Sas;
            forged.source = EventSource::DeviceMessages;
            input.send(Arc::new(forged));
            input.advance_to(30);
            while probe.less_than(input.time()) {
                worker.step();
            }
            let mut lookup = Lookup::new(trace);
            let site = |t: &Tags| match t {
                Tags::Known(v) => v.get("site").and_then(|s| s.as_str()).map(str::to_owned),
                Tags::Unknown => Some("registry".into()),
            };
            let got: Vec<Option<String>> = lookup
                .tags(&[("d", 5), ("d", 10), ("d", 19), ("d", 25), ("e", 16)])
                .iter()
                .map(site)
                .collect();
            assert_eq!(
                got,
                vec![
                    Some("A".into()),
                    Some("B".into()),
                    Some("B".into()),
                    None,
                    Some("registry".into())
                ],
                "before the first change, its before; then each change; deleted: no tags"
            );
            lookup.done_below(20);
            let after: Vec<Option<String>> = lookup
                .tags(&[("d", 20), ("d", 29)])
                .iter()
                .map(site)
                .collect();
            assert_eq!(
                after,
                vec![None, None],
                "compaction keeps what is at or after 20"
            );
        });
    }
}
