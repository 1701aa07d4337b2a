//! The insight operators: each event is sampled for every insight of its source, the
//! samples of one (insight, group) meet on one worker, that worker's windows decide what is
//! complete, and results are appended to the ingest log as `Insights` events, from where
//! routes take them like any other event.
//!
//! **Determinism, for exactly-once results across restarts.** A worker takes its samples in
//! log-offset order (it holds them until the input frontier says nothing earlier can come),
//! and time passes for insights only at **clock ticks**: `Clock` events that worker 0
//! writes to the log once a second and that every worker receives at their offset. A tick
//! carries the time the log stamped on it, and a sample its event's enqueued time, so every
//! decision (a window closes, a group went silent) is a function of the log alone: a replay
//! after a crash computes the same results at the same positions, and
//! [`Resume`](crate::insights::resume::Resume) keeps it from writing them twice.
//!
//! Samples are taken by `sample.rs`, which reads device tags as of each event's offset
//! from the device context (`crate::context`). Semantics: `docs/decisions/027-insights.md`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use weir_core::time::now_ms;
use weir_core::{Checkpoint, DeviceDirectory, Event, Ingest};
use weir_rules::RuleSet;

use super::Events;
use crate::context::{Context, Seed};
use crate::engine::RulesHandle;
use crate::insights::resume::{EVERY, Progress, Resume};
use crate::insights::running::{Produced, Running, result_event, tick_event};
use crate::metrics::EngineMetrics;
use crate::{append, deadletter};

/// How often worker 0 writes a clock tick: windows close, and silences are noticed, at
/// ticks.
const TICK: Duration = Duration::from_secs(1);

/// What the sampler sends to the worker that owns an (insight, group), or a tick to one
/// worker.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) enum Item {
    Sample {
        insight: Arc<str>,
        group: String,
        time: i64,
        offset: u64,
        /// When its event was enqueued.
        arrival: i64,
        values: Vec<Option<f64>>,
        /// The event itself, when the insight sends late events to an endpoint.
        event: Option<Arc<Event>>,
    },
    Tick {
        to: u64,
        offset: u64,
        wall: i64,
    },
}

impl Item {
    fn offset(&self) -> u64 {
        match self {
            Item::Sample { offset, .. } | Item::Tick { offset, .. } => *offset,
        }
    }
}

/// Everything the insight operators need besides their input.
pub(crate) struct InsightSetup {
    pub rules: RulesHandle,
    pub directory: Arc<dyn DeviceDirectory>,
    /// The devices' tags where the engine started reading.
    pub seed: Arc<Seed>,
    pub log: Option<Arc<dyn Ingest>>,
    pub tick: Duration,
    pub metrics: Arc<EngineMetrics>,
    pub resume: Arc<Resume>,
    pub progress: Arc<Progress>,
    /// Close every window when the input ends (rule tests).
    pub close_at_end: bool,
}

pub(crate) trait RunInsights<'s> {
    /// Computes the insights of the live rules over these events, with their devices'
    /// tags from `context`, and appends their results to the log.
    fn insights(self, context: Context<'s>, setup: InsightSetup);
}

impl<'s> RunInsights<'s> for Events<'s> {
    fn insights(self, context: Context<'s>, setup: InsightSetup) {
        let samples = super::sample::sample(
            self,
            context,
            Arc::clone(&setup.seed),
            Arc::clone(&setup.rules),
            Arc::clone(&setup.directory),
            Arc::clone(&setup.metrics),
        );
        let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
        let route = Exchange::new(move |i: &Item| match i {
            Item::Sample { insight, group, .. } => hasher.hash_one((insight, group)),
            Item::Tick { to, .. } => *to,
        });
        let scope = samples.scope();
        samples.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            route,
            "Windows",
            move |_cap, info| {
                let mut wake =
                    super::Wake::new(scope.activator_for(info.address.clone()), setup.tick);
                let mut w = Worker::new(scope.index(), setup);
                move |(input, frontier), _output| {
                    input.for_each(|_cap, data| w.pending.append(data));
                    w.step(frontier.frontier().first().copied());
                    wake.later();
                }
            },
        );
    }
}

/// One worker's insights.
struct Worker {
    index: usize,
    setup: InsightSetup,
    running: HashMap<String, Running, ahash::RandomState>,
    version: Option<Arc<str>>,
    /// Samples and ticks received, not yet taken (the frontier has not passed them).
    pending: Vec<Item>,
    /// Everything below this offset has been taken.
    done: u64,
    /// Results not yet in the log (an append failed): written before anything else.
    unsent: Vec<Event>,
    last_tick: Option<Instant>,
    last_report: Option<Instant>,
    warned: Option<Instant>,
}

impl Worker {
    fn new(index: usize, setup: InsightSetup) -> Worker {
        Worker {
            index,
            done: setup.resume.floor,
            setup,
            running: HashMap::default(),
            version: None,
            pending: Vec::new(),
            unsent: Vec::new(),
            last_tick: None,
            last_report: None,
            warned: None,
        }
    }

    /// Takes what the frontier (`None`: the input has ended) has completed, writes results
    /// and ticks, and reports progress.
    fn step(&mut self, frontier: Option<u64>) {
        let rules = self.setup.rules.load();
        if self.version.as_ref() != Some(&rules.version) {
            refresh(&mut self.running, &rules);
            self.version = Some(Arc::clone(&rules.version));
        }
        let through = match frontier {
            Some(f) => f,
            None => self
                .pending
                .iter()
                .map(|i| i.offset() + 1)
                .max()
                .unwrap_or(self.done),
        };
        if through > self.done {
            self.take(through);
        }
        if frontier.is_none() && self.setup.close_at_end {
            self.close_all();
        }
        if self.setup.log.is_none() {
            // No log (an engine without a hub): no ticks and nowhere for results to go;
            // windows still close by the wall clock, so their memory is given back.
            let mut produced = Vec::new();
            for (name, r) in &mut self.running {
                r.flush(name, now_ms(), &mut produced);
            }
            return;
        }
        self.write();
        self.clock();
        self.report(frontier.is_none());
    }

    /// Takes every sample and tick below `through`, in log order.
    fn take(&mut self, through: u64) {
        // What arrives is a few runs already in offset order (one per sending worker, in
        // arrival order): the stable sort finds the runs and merges them.
        self.pending.sort_by_key(Item::offset);
        let n = self.pending.partition_point(|i| i.offset() < through);
        let (floor, resume) = (self.setup.resume.floor, Arc::clone(&self.setup.resume));
        let mut produced: Vec<(Arc<str>, Produced)> = Vec::new();
        let mut letters: Vec<(String, Event)> = Vec::new();
        let mut out = Vec::new();
        let (mut too_late, mut late, mut samples) = (0, 0, 0);
        for item in self.pending.drain(..n) {
            let at = item.offset();
            if at < floor {
                continue;
            }
            match item {
                Item::Sample {
                    insight,
                    group,
                    time,
                    offset,
                    arrival,
                    values,
                    event,
                } => {
                    let Some(r) = self.running.get_mut(&*insight) else {
                        continue;
                    };
                    samples += 1;
                    if let (Some(target), Some(event)) = (&r.late, &event)
                        && r.is_late(&group, time, arrival)
                    {
                        late += 1;
                        let letter = deadletter::late(event, &insight, target);
                        letters.push((deadletter::late_id(&insight, offset), letter));
                    } else {
                        let merged =
                            r.push(&insight, &group, time, offset, arrival, &values, &mut out);
                        too_late += u64::from(!merged);
                        produced.extend(out.drain(..).map(|p| (Arc::clone(&insight), p)));
                    }
                }
                Item::Tick { wall, .. } => {
                    for (name, r) in &mut self.running {
                        r.flush(name, wall, &mut out);
                        let name: Arc<str> = Arc::from(name.as_str());
                        produced.extend(out.drain(..).map(|p| (Arc::clone(&name), p)));
                    }
                }
            }
            self.unsent.extend(
                produced
                    .drain(..)
                    .filter(|(_, p)| !resume.written(at, &p.id))
                    .filter_map(|(name, p)| result_event(&name, p)),
            );
            self.unsent.extend(
                letters
                    .drain(..)
                    .filter(|(id, _)| !resume.written(at, id))
                    .map(|(_, e)| e),
            );
        }
        EngineMetrics::add(&self.setup.metrics.insight_too_late, too_late);
        EngineMetrics::add(&self.setup.metrics.insight_late, late);
        EngineMetrics::add(&self.setup.metrics.insight_samples, samples);
        self.done = through;
    }

    /// Closes every window as if all time had passed: the end of a rule test's events.
    fn close_all(&mut self) {
        let mut out = Vec::new();
        for (name, r) in &mut self.running {
            r.flush(name, i64::MAX / 2, &mut out);
            self.unsent
                .extend(out.drain(..).filter_map(|p| result_event(name, p)));
        }
    }

    /// Appends the results not yet written; on failure they wait for the next activation.
    fn write(&mut self) {
        let Some(log) = self.setup.log.as_deref() else {
            return;
        };
        if self.unsent.is_empty() {
            return;
        }
        let n = self.unsent.len() as u64;
        match append::durably(log, self.unsent.clone()) {
            Ok(()) => {
                self.unsent.clear();
                EngineMetrics::add(&self.setup.metrics.insight_results, n);
            }
            Err(e) => {
                if self.warned.is_none_or(|t| t.elapsed().as_secs() >= 10) {
                    self.warned = Some(Instant::now());
                    tracing::error!(error = %e, results = n, "cannot write insight results to the ingest log; retrying");
                }
            }
        }
    }

    /// Worker 0 writes a tick a second while any insight runs.
    fn clock(&mut self) {
        if self.index != 0
            || self.running.is_empty()
            || self.last_tick.is_some_and(|t| t.elapsed() < TICK)
        {
            return;
        }
        let (Some(log), Some(tick)) = (self.setup.log.as_deref(), tick_event()) else {
            return;
        };
        self.last_tick = Some(Instant::now());
        if let Err(e) = append::durably(log, vec![tick]) {
            tracing::warn!(error = %e, "cannot write the insights' clock tick");
        }
    }

    /// Tells the others how far this worker has come, once its results are written: at
    /// most once per [`EVERY`], and once more at the `end` of the input (a clean stop), so
    /// the next start reads nothing again for insights.
    fn report(&mut self, end: bool) {
        let resume = &self.setup.resume;
        if !self.unsent.is_empty()
            || self.done < resume.position
            || (!end && self.last_report.is_some_and(|t| t.elapsed() < EVERY))
        {
            return;
        }
        self.last_report = Some(Instant::now());
        let floor = self
            .running
            .values()
            .filter_map(Running::floor)
            .min()
            .unwrap_or(self.done)
            .min(self.done);
        self.setup.progress.report(
            self.index,
            Checkpoint {
                floor,
                position: self.done,
            },
            end,
        );
    }
}

/// Starts, keeps or drops each insight's state as the rules now say.
fn refresh(running: &mut HashMap<String, Running, ahash::RandomState>, rules: &RuleSet) {
    let insights = &rules.insights;
    running.retain(|name, _| insights.iter().any(|i| &*i.name == name));
    for insight in insights {
        let signature = format!("{:?}|{:?}", insight.group_by, insight.kind);
        let same = running
            .get(&*insight.name)
            .is_some_and(|r| r.signature == signature);
        if !same {
            running.insert(insight.name.to_string(), Running::new(insight, signature));
        }
        if let Some(r) = running.get_mut(&*insight.name) {
            r.late = insight
                .late
                .and_then(|i| rules.endpoints.get(i))
                .map(|e| Arc::clone(&e.name));
        }
    }
}
