//! Replays for failed endpoints: one worker's partition read again from the log, deduped
//! and routed exactly as the dataflow does, keeping only one endpoint's deliveries.
//!
//! A sink that could not write an endpoint drops its deliveries (they stay in the log) and,
//! when it retries, asks for them again ([`weir_core::Sink::replay_request`]). The replay
//! runs in the sink's worker, a chunk at a time, so other endpoints keep flowing.

use std::collections::VecDeque;
use std::sync::Arc;

use weir_core::{
    Delivery, DeviceDirectory, EndpointSpec, Event, EventFeed, FeedError, FeedReader, ReplayRequest,
};
use weir_rules::Outcome;

use crate::context::{AsOf, Lookup};
use crate::engine::{DedupeConfig, RulesHandle};
use crate::operators::DedupeState;

/// One chunk of a replay.
pub(crate) struct Chunk {
    pub spec: Option<Arc<EndpointSpec>>,
    pub deliveries: Vec<Delivery>,
    /// Every event below this offset has been replayed.
    pub through: u64,
}

struct Progress {
    endpoint: Arc<str>,
    reader: Box<dyn FeedReader>,
    /// Events below this offset are done.
    position: u64,
    /// What the reader's last read returned: it has returned every event below this.
    read_to: u64,
    /// Events read past the request's end, kept for the next chunk.
    carry: VecDeque<Event>,
    dedupe: Option<DedupeState>,
}

pub(crate) struct Replayer {
    feed: Arc<dyn EventFeed>,
    worker: usize,
    workers: usize,
    rules: RulesHandle,
    directory: Arc<dyn DeviceDirectory>,
    dedupe: Option<DedupeConfig>,
    progress: Option<Progress>,
    buf: Vec<Event>,
    outcome: Outcome,
    /// The device context, to route with the tags as of each event's offset.
    context: Option<Lookup>,
}

impl Replayer {
    pub(crate) fn new(
        feed: Arc<dyn EventFeed>,
        worker: usize,
        workers: usize,
        rules: RulesHandle,
        directory: Arc<dyn DeviceDirectory>,
        dedupe: Option<DedupeConfig>,
    ) -> Replayer {
        Replayer {
            feed,
            worker,
            workers,
            rules,
            directory,
            dedupe,
            progress: None,
            buf: Vec::new(),
            outcome: Outcome::default(),
            context: None,
        }
    }

    /// Replays read devices' tags from the worker's device context.
    pub(crate) fn read_context(&mut self, lookup: Lookup) {
        self.context = Some(lookup);
    }

    /// No replay will start below `offset` (every endpoint has committed up to it): the
    /// context's history below it may go.
    pub(crate) fn done_below(&mut self, offset: u64) {
        if let Some(lookup) = &mut self.context {
            lookup.done_below(offset);
        }
    }

    /// Reads up to `max` events of `req` and returns the endpoint's deliveries among them.
    pub(crate) fn chunk(&mut self, req: &ReplayRequest, max: usize) -> Result<Chunk, FeedError> {
        let resume = self
            .progress
            .as_ref()
            .is_some_and(|p| p.endpoint == req.endpoint && p.position == req.from);
        if !resume {
            self.progress = Some(self.start(req)?);
        }
        let Some(p) = self.progress.as_mut() else {
            return Err(FeedError::Read("replay state lost".into()));
        };
        let rules = self.rules.load();
        let target = rules.endpoint_index(&req.endpoint);
        let mut deliveries = Vec::new();
        let mut events = Vec::new();
        let mut taken = 0;
        while taken < max {
            let e = match p.carry.pop_front() {
                Some(e) => e,
                None => {
                    self.buf.clear();
                    p.read_to = p.reader.read(max - taken, &mut self.buf)?;
                    if self.buf.is_empty() {
                        break;
                    }
                    p.carry.extend(self.buf.drain(..));
                    continue;
                }
            };
            // A dead-letter pass takes only what has waited long enough; the log is in
            // enqueued-time order, so the first younger event ends it.
            let young = req
                .dead_letter
                .as_ref()
                .is_some_and(|d| e.offset >= req.from && e.enqueued_ms > d.before_ms);
            if e.offset >= req.to || young {
                p.carry.push_front(e);
                break;
            }
            taken += 1;
            let repeat = p.dedupe.as_mut().is_some_and(|d| d.is_repeat(&e));
            if repeat || e.offset < req.from || target.is_none() {
                continue;
            }
            events.push(Arc::new(e));
        }
        if let Some(ep) = target {
            // Routed as the dataflow routed them: with the tags as of their offsets.
            let tags = match &mut self.context {
                Some(lookup) if rules.reads_tags() => {
                    let keys: Vec<(&str, u64)> = events
                        .iter()
                        .map(|e| (e.device_id.as_str(), e.offset))
                        .collect();
                    lookup.tags(&keys)
                }
                _ => Vec::new(),
            };
            let names = rules.names();
            for (k, event) in events.iter().enumerate() {
                let registry = AsOf::new(&*self.directory, event.device_id.as_str(), tags.get(k));
                let view = rules.view(event, &registry);
                rules.evaluate_event(&view, event, &mut self.outcome);
                if self.outcome.endpoints.contains(&ep) {
                    deliveries.push(rules.delivery(&names, ep, &self.outcome, &view, event));
                }
            }
        }
        // Everything below the first event not taken is done; with nothing left over,
        // everything below what the reader has read is.
        let through = match p.carry.front() {
            Some(e) => e.offset,
            None => p.read_to,
        }
        .min(req.to)
        .max(req.from);
        p.position = through;
        Ok(Chunk {
            spec: target.map(|i| Arc::clone(&rules.endpoints[i])),
            deliveries,
            through,
        })
    }

    /// Opens a reader a duplicate window before `req.from`, so the replay drops exactly
    /// the repeats the dataflow dropped.
    fn start(&self, req: &ReplayRequest) -> Result<Progress, FeedError> {
        let seed = match self.dedupe {
            Some(cfg) => self.feed.offset_before(req.from, cfg.window),
            None => req.from,
        };
        tracing::debug!(
            worker = self.worker,
            endpoint = %req.endpoint,
            from = req.from,
            seed,
            "replaying for an endpoint"
        );
        Ok(Progress {
            endpoint: Arc::clone(&req.endpoint),
            reader: self.feed.reader_from(self.worker, self.workers, seed)?,
            position: req.from,
            read_to: seed,
            carry: VecDeque::new(),
            dedupe: self.dedupe.map(DedupeState::new),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arc_swap::ArcSwap;
    use bytes::Bytes;
    use std::time::Duration;
    use weir_core::{DeviceId, NoDevices};

    /// A feed over a fixed list of events, read `step` at a time.
    struct VecFeed(Vec<Event>);

    struct VecReader {
        events: Vec<Event>,
        next: usize,
        step: usize,
    }

    impl FeedReader for VecReader {
        fn read(&mut self, max: usize, out: &mut Vec<Event>) -> Result<u64, FeedError> {
            let n = max.min(self.step).min(self.events.len() - self.next);
            out.extend(self.events[self.next..self.next + n].iter().cloned());
            self.next += n;
            Ok(self.events.get(self.next).map_or(100, |e| e.offset))
        }
        fn finished(&self) -> bool {
            false
        }
    }

    impl EventFeed for VecFeed {
        fn reader(&self, w: usize, n: usize, from: u64) -> Result<Box<dyn FeedReader>, FeedError> {
            self.reader_from(w, n, from)
        }
        fn on_data(&self, _wake: Box<dyn Fn() + Send + Sync>) {}
        fn reader_from(
            &self,
            _w: usize,
            _n: usize,
            from: u64,
        ) -> Result<Box<dyn FeedReader>, FeedError> {
            Ok(Box::new(VecReader {
                events: self
                    .0
                    .iter()
                    .filter(|e| e.offset >= from)
                    .cloned()
                    .collect(),
                next: 0,
                step: 3,
            }))
        }
        fn offset_before(&self, _offset: u64, _window: Duration) -> u64 {
            0
        }
    }

    fn event(offset: u64, mid: &str) -> Event {
        let mut e = Event::telemetry(
            DeviceId::parse("d").expect("id"),
            1_000 + offset as i64,
            Bytes::from_static(b"{}"),
        );
        e.offset = offset;
        e.system.message_id = Some(mid.into());
        e
    }

    /// The endpoint kinds these tests use, with no options to check: the engine never reads
    /// an endpoint's options.
    struct Kinds;

    impl weir_core::EndpointCatalog for Kinds {
        fn kinds(&self) -> Vec<&'static str> {
            vec!["parquet"]
        }
        fn endpoint(
            &self,
            _kind: &str,
            _options: &serde_json::Map<String, serde_json::Value>,
        ) -> Result<weir_core::EndpointKind, weir_core::OptionError> {
            Ok(weir_core::EndpointKind::Parquet(Default::default()))
        }
    }

    #[test]
    fn replays_one_endpoint_in_chunks_dropping_the_same_repeats() {
        let rules = weir_rules::load_sources(
            &[weir_rules::SourceFile {
                name: "r.toml".into(),
                path: "r.toml".into(),
                text: Arc::from(
                    "[[endpoint]]\nname = \"a\"\ntype = \"parquet\"\n[[endpoint]]\nname = \"b\"\ntype = \"parquet\"\n[[route]]\nname = \"all\"\ncondition = \"true\"\nendpoints = [\"a\", \"b\"]\n",
                ),
            }],
            "hub",
            &Kinds,
        )
        .expect("rules");
        // Offset 1 repeats 0's message id before the replay starts; 5 repeats 4 inside it.
        let events: Vec<Event> = [
            (0, "m0"),
            (1, "m0"),
            (2, "m2"),
            (3, "m3"),
            (4, "m4"),
            (5, "m4"),
            (6, "m6"),
        ]
        .into_iter()
        .map(|(o, m)| event(o, m))
        .collect();
        let mut r = Replayer::new(
            Arc::new(VecFeed(events)),
            0,
            1,
            Arc::new(ArcSwap::from_pointee(rules)),
            Arc::new(NoDevices),
            Some(DedupeConfig::default()),
        );
        let req = |from, to| ReplayRequest {
            endpoint: Arc::from("b"),
            from,
            to,
            dead_letter: None,
        };
        let offsets =
            |c: &Chunk| -> Vec<u64> { c.deliveries.iter().map(|d| d.event.offset).collect() };
        let c = r.chunk(&req(2, 6), 4).expect("chunk");
        assert_eq!(
            (offsets(&c), c.through),
            (vec![2, 3], 4),
            "0 and 1 only seed the window"
        );
        assert_eq!(c.spec.map(|s| s.name.to_string()), Some("b".into()));
        let c = r.chunk(&req(4, 6), 10).expect("chunk");
        assert_eq!(
            (offsets(&c), c.through),
            (vec![4], 6),
            "5 is a repeat; 6 is beyond the end"
        );
        let c = r.chunk(&req(6, 8), 10).expect("chunk");
        assert_eq!(
            (offsets(&c), c.through),
            (vec![6], 8),
            "what was read past the end comes next"
        );
        let c = r
            .chunk(
                &ReplayRequest {
                    endpoint: Arc::from("gone"),
                    from: 0,
                    to: 7,
                    dead_letter: None,
                },
                100,
            )
            .expect("chunk");
        assert!(c.spec.is_none() && c.deliveries.is_empty() && c.through == 7);
    }

    #[test]
    fn a_dead_letter_pass_stops_at_the_first_young_event_and_dead_letters_skip_routes() {
        let rules = weir_rules::load_sources(
            &[weir_rules::SourceFile {
                name: "r.toml".into(),
                path: "r.toml".into(),
                text: Arc::from(
                    "[[endpoint]]\nname = \"a\"\ntype = \"parquet\"\n[[endpoint]]\nname = \"b\"\ntype = \"parquet\"\ndead_letter = \"a\"\n[[route]]\nname = \"all\"\ncondition = \"true\"\nendpoints = [\"b\"]\n",
                ),
            }],
            "hub",
            &Kinds,
        )
        .expect("rules");
        let mut events: Vec<Event> = (0..7).map(|o| event(o, &format!("m{o}"))).collect();
        // 3 is a dead letter for a: not b's, whatever the route says, and not a repeat.
        events[3].dead_letter = Some(Arc::from("a"));
        events[3].system.message_id = Some("m2".into());
        let mut r = Replayer::new(
            Arc::new(VecFeed(events)),
            0,
            1,
            Arc::new(ArcSwap::from_pointee(rules)),
            Arc::new(NoDevices),
            Some(DedupeConfig::default()),
        );
        let pass = |from| ReplayRequest {
            endpoint: Arc::from("b"),
            from,
            to: 7,
            dead_letter: Some(weir_core::DeadLetterPass {
                target: Arc::from("a"),
                before_ms: 1_004,
                reason: "down".into(),
            }),
        };
        let c = r.chunk(&pass(1), 100).expect("chunk");
        let offsets: Vec<u64> = c.deliveries.iter().map(|d| d.event.offset).collect();
        assert_eq!(
            (offsets, c.through),
            (vec![1, 2, 4], 5),
            "5 was enqueued after the cut-off"
        );
        let mut a = r.chunk(&pass(5), 100).expect("chunk");
        assert_eq!(
            (a.deliveries.len(), a.through),
            (0, 5),
            "nothing more is old enough"
        );
        a = r
            .chunk(
                &ReplayRequest {
                    endpoint: Arc::from("a"),
                    from: 0,
                    to: 7,
                    dead_letter: None,
                },
                100,
            )
            .expect("chunk");
        let to_a: Vec<(u64, &str)> = a
            .deliveries
            .iter()
            .map(|d| (d.event.offset, &*d.route))
            .collect();
        assert_eq!(to_a, vec![(3, "$deadLetter")]);
    }
}
