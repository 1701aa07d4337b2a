//! Device context as a differential collection: each device's twin tags, arranged by
//! device, with the log offset of the change that set them as the time. An event reads the
//! tags *as of its own offset*, so routes, enrichments and insights see the tags that were
//! valid when it entered the log, also when the log is replayed after a restart or for an
//! endpoint that failed (the registry only knows the tags as they are now).
//!
//! The collection is built from the events that change tags (twin changes, device
//! creation and deletion), which the hub marks with the tags after and before the change
//! ([`TAGS_PROPERTY`], [`TAGS_BEFORE_PROPERTY`]): each adds its `after` and retracts its
//! `before` at its offset. It starts from a [`Seed`], the tags every device had where the
//! engine starts reading, and is arranged on the worker that owns the device's partition,
//! next to the device's events, so reading it needs no exchange.
//!
//! This is the only module that touches differential-dataflow.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::cursor::cursor_list;
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use differential_dataflow::trace::{Cursor, TraceReader};
use serde_json::Value;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::progress::Antichain;
use timely::progress::frontier::MutableAntichain;
use weir_core::feed::device_hash;
use weir_core::twin::{TAGS_BEFORE_PROPERTY, TAGS_PROPERTY};
use weir_core::{AuthMethod, DeviceDirectory, DeviceRecord, Event, EventFeed, EventSource};

use crate::operators::Events;

/// A device id.
type Key = String;
/// Tags as JSON text (`null`: the device does not exist).
type Val = String;
type Spine = ValSpine<Key, Val, u64, isize>;
pub(crate) type Trace = TraceAgent<Spine>;
/// The arranged context, as the operators that read it take it.
pub(crate) type Context<'s> = Arranged<'s, Trace>;
type Updates<'s> = Stream<'s, u64, Vec<((Key, Val), u64, isize)>>;

/// Arranges the tag changes among `events` by device, on the worker the events are on
/// (they arrive by partition, so a device's changes sit with its events).
pub(crate) fn arrange<'s>(events: Events<'s>) -> Context<'s> {
    let updates: Updates<'s> = events.unary(Pipeline, "TagChanges", |_cap, _info| {
        |input, output| {
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                for e in data.drain(..) {
                    if let Some((after, before)) = change(&e) {
                        let at = cap.least().map_or(e.offset, |t| e.offset.max(*t));
                        let device = e.device_id.to_string();
                        if let Some(before) = before {
                            session.give(((device.clone(), before), at, -1));
                        }
                        session.give(((device, after), at, 1));
                    }
                }
            });
        }
    });
    arrange_core::<_, _, ValBatcher<Key, Val, u64, isize>, Spine>(
        updates,
        Pipeline,
        "DeviceContext",
        ValBatcher::new,
    )
}

/// The tags after and before the change an event makes, if it is one the hub wrote.
fn change(e: &Event) -> Option<(String, Option<String>)> {
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
    Some((property(TAGS_PROPERTY)?, property(TAGS_BEFORE_PROPERTY)))
}

/// Every device's tags where the engine starts reading the log: the registry's tags at
/// start, except that a device whose tags change in the part of the log a restart reads
/// again had the tags from before its first change there.
pub(crate) enum Seed {
    /// Tags by device, and the devices (by [`device_hash`]) that had none. A device in
    /// neither was created after the start: until its creation is arranged (the hub logs
    /// it within milliseconds of the registry change), its tags are the registry's.
    Known {
        tags: HashMap<String, Arc<Value>>,
        empty: HashSet<u64>,
    },
    /// The directory cannot list its devices, or the log could not be read: tags no change
    /// in the log speaks of are the registry's current ones.
    Registry,
}

impl Seed {
    /// Takes the directory's tags and reads the log from `from` to its end for tag changes.
    /// Called before anything else can append to the log or change the registry.
    pub(crate) fn build(feed: &dyn EventFeed, from: u64, directory: &dyn DeviceDirectory) -> Seed {
        let Some(snapshot) = directory.tags_snapshot() else {
            return Seed::Registry;
        };
        let (mut tags, mut empty) = (HashMap::new(), HashSet::new());
        for (device, t) in snapshot {
            if t.as_object().is_some_and(serde_json::Map::is_empty) {
                empty.insert(device_hash(&device));
            } else {
                tags.insert(device, Arc::new(t));
            }
        }
        let mut reader = match feed.reader_from(0, 1, from) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the log's tag changes; a replay reads the registry's current tags");
                return Seed::Registry;
            }
        };
        let mut first: HashMap<String, String> = HashMap::new();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if let Err(e) = reader.read(4096, &mut buf) {
                tracing::warn!(error = %e, "reading the log's tag changes failed; a replay reads the registry's current tags");
                return Seed::Registry;
            }
            if buf.is_empty() {
                break;
            }
            for e in &buf {
                if let Some((_, Some(before))) = change(e) {
                    first.entry(e.device_id.to_string()).or_insert(before);
                }
            }
        }
        let changed = first.len();
        for (device, before) in first {
            empty.remove(&device_hash(&device));
            tags.insert(device, Arc::new(parse(&before)));
        }
        tracing::debug!(
            devices = tags.len() + empty.len(),
            changed,
            "device context seeded"
        );
        Seed::Known { tags, empty }
    }

    fn get(&self, device: &str) -> Tags {
        let Seed::Known { tags, empty } = self else {
            return Tags::Registry;
        };
        if let Some(t) = tags.get(device) {
            Tags::Known(Arc::clone(t))
        } else if empty.contains(&device_hash(device)) {
            Tags::Known(Arc::new(Value::Object(Default::default())))
        } else {
            Tags::Registry
        }
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// A device's tags at an offset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tags {
    /// These (`null`: the device did not exist).
    Known(Arc<Value>),
    /// Whatever the registry has now.
    Registry,
}

/// Reads one worker's part of the arrangement, from the seed on.
pub(crate) struct Lookup {
    trace: Trace,
    seed: Arc<Seed>,
    /// Parsed tags by their text: devices share few distinct tag sets.
    parsed: HashMap<String, Arc<Value>>,
}

/// How many parsed tag sets a lookup keeps before starting over.
const PARSED_MAX: usize = 4096;

impl Lookup {
    pub(crate) fn new(trace: Trace, seed: Arc<Seed>) -> Lookup {
        Lookup {
            trace,
            seed,
            parsed: HashMap::new(),
        }
    }

    /// The tags of each of `devices` as of its offset, in order. Every change below those
    /// offsets must be in the trace (the caller waits for the arrangement's frontier).
    pub(crate) fn tags(&mut self, devices: &[(&str, u64)]) -> Vec<Tags> {
        let mut upper = Antichain::new();
        self.trace.read_upper(&mut upper);
        let Some(batches) = self.trace.batches_through(upper.borrow()) else {
            return devices.iter().map(|(d, _)| self.seed.get(d)).collect();
        };
        let (mut cursor, storage) = cursor_list(batches);
        let mut out = Vec::with_capacity(devices.len());
        for &(device, at) in devices {
            let key = device.to_owned();
            cursor.rewind_keys(&storage);
            cursor.seek_key(&storage, &key);
            let mut known: Option<&String> = None;
            if cursor.get_key(&storage) == Some(&key) {
                while let Some(tags) = cursor.get_val(&storage) {
                    let mut count = 0isize;
                    cursor.map_times(&storage, |t, d| {
                        if *t <= at {
                            count += *d;
                        }
                    });
                    // A device's first change retracts tags the seed holds, not the trace:
                    // only what is present counts.
                    if count > 0 {
                        known = Some(tags);
                    }
                    cursor.step_val(&storage);
                }
            }
            out.push(match known {
                Some(text) => {
                    if self.parsed.len() >= PARSED_MAX {
                        self.parsed.clear();
                    }
                    let value = self
                        .parsed
                        .entry(text.clone())
                        .or_insert_with(|| Arc::new(parse(text)));
                    Tags::Known(Arc::clone(value))
                }
                None => self.seed.get(device),
            });
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

/// An operator over `events` that reads their devices' tags as of their offsets: each
/// activation takes a snapshot (`snapshot`: the live rules, and whether they read tags)
/// and hands `batch` the events with their tags. Without tags to read, events go straight
/// through; with, each is held until every tag change below its offset is arranged.
pub(crate) fn read_as_of<'s, D, R>(
    name: &str,
    events: Events<'s>,
    context: Context<'s>,
    seed: Arc<Seed>,
    snapshot: impl Fn() -> (R, bool) + 'static,
    mut batch: impl FnMut(&R, &[Arc<Event>], &[Tags], &mut dyn FnMut(D)) + 'static,
) -> Stream<'s, u64, Vec<D>>
where
    D: 'static,
{
    events.binary_frontier(
        context.stream,
        Pipeline,
        Pipeline,
        name,
        move |_cap, _info| {
            let mut waiting = Waiting::new(Lookup::new(context.trace, seed));
            move |(input, input_frontier), (changes, context_frontier), output| {
                changes.for_each(|_cap, data| data.clear());
                let (rules, reads_tags) = snapshot();
                if !reads_tags && waiting.is_empty() {
                    input.for_each(|cap, data| {
                        let mut session = output.session(&cap);
                        batch(&rules, data, &[], &mut |d| session.give(d));
                        data.clear();
                    });
                    waiting.compact(input_frontier);
                    return;
                }
                input.for_each(|cap, data| {
                    if let Some(cap) = cap.retain_least(0) {
                        waiting.hold(cap, std::mem::take(data));
                    }
                });
                waiting.release(
                    reads_tags,
                    context_frontier,
                    input_frontier,
                    |cap, events, tags| {
                        let mut session = output.session(cap);
                        batch(&rules, &events, &tags, &mut |d| session.give(d));
                    },
                );
            }
        },
    )
}

/// Events an operator holds until every tag change below their offsets is arranged, so
/// that their tags can be read as of those offsets.
struct Waiting {
    held: Vec<(Capability<u64>, Vec<Arc<Event>>)>,
    lookup: Lookup,
}

impl Waiting {
    fn new(lookup: Lookup) -> Waiting {
        Waiting {
            held: Vec::new(),
            lookup,
        }
    }

    fn hold(&mut self, cap: Capability<u64>, batch: Vec<Arc<Event>>) {
        self.held.push((cap, batch));
    }

    /// Hands every held event that can be evaluated now to `f`, a batch at a time with the
    /// capability it came with and, when `reads_tags`, the tags of each as of its offset
    /// (without, every event is ready and `f` gets no tags).
    fn release(
        &mut self,
        reads_tags: bool,
        context: &MutableAntichain<u64>,
        input: &MutableAntichain<u64>,
        mut f: impl FnMut(&Capability<u64>, Vec<Arc<Event>>, Vec<Tags>),
    ) {
        let mut i = 0;
        while i < self.held.len() {
            let (cap, batch) = &mut self.held[i];
            if reads_tags {
                let (now, later): (Vec<_>, Vec<_>) = std::mem::take(batch)
                    .into_iter()
                    .partition(|e| !context.less_equal(&e.offset));
                *batch = later;
                if !now.is_empty() {
                    let keys: Vec<(&str, u64)> = now
                        .iter()
                        .map(|e| (e.device_id.as_str(), e.offset))
                        .collect();
                    let tags = self.lookup.tags(&keys);
                    f(cap, now, tags);
                }
            } else {
                f(cap, std::mem::take(batch), Vec::new());
            }
            if self.held[i].1.is_empty() {
                self.held.swap_remove(i);
            } else {
                i += 1;
            }
        }
        self.compact(input);
    }

    /// True when nothing is held: with rules that read no tags, events may go straight
    /// through.
    fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Lets the trace forget what no held event (nor any to come below `input`) needs.
    fn compact(&mut self, input: &MutableAntichain<u64>) {
        let oldest = self
            .held
            .iter()
            .flat_map(|(_, b)| b.iter().map(|e| e.offset))
            .min()
            .or(input.frontier().first().copied());
        if let Some(o) = oldest {
            self.lookup.done_below(o);
        }
    }
}

/// The registry with one device's tags as they were at an offset.
pub(crate) struct AsOf<'a> {
    pub registry: &'a dyn DeviceDirectory,
    pub device: &'a str,
    /// `None`: the registry's own.
    pub tags: Option<&'a Value>,
}

impl<'a> AsOf<'a> {
    pub(crate) fn new(
        registry: &'a dyn DeviceDirectory,
        device: &'a str,
        tags: Option<&'a Tags>,
    ) -> AsOf<'a> {
        let tags = match tags {
            Some(Tags::Known(t)) => Some(&**t),
            Some(Tags::Registry) | None => None,
        };
        AsOf {
            registry,
            device,
            tags,
        }
    }
}

impl DeviceDirectory for AsOf<'_> {
    fn get(&self, device_id: &str) -> Option<Arc<DeviceRecord>> {
        let Some(tags) = self.tags.filter(|_| device_id == self.device) else {
            return self.registry.get(device_id);
        };
        let mut record = match self.registry.get(device_id) {
            Some(r) => (*r).clone(),
            None => DeviceRecord::with_tags(device_id, Value::Null),
        };
        record.tags = tags.clone();
        Some(Arc::new(record))
    }
}

#[cfg(test)]
mod tests;
