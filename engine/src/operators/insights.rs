//! The insight operators: each event is sampled for every insight of its source, the
//! samples of one (insight, group) meet on one worker, that worker's windows decide what is
//! complete, and results are appended to the ingest log as `Insights` events, from where
//! routes take them like any other event.
//!
//! Not built yet: the `late` endpoint, device context as a differential collection and
//! recovery of open windows after a restart (see `docs/decisions/027-insights.md`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use weir_core::time::now_ms;
use weir_core::{
    AuthMethod, DeviceDirectory, DeviceId, Event, EventSource, Ingest, SystemProperties,
};
use weir_rules::EventView;
use weir_rules::insight::{AggFn, Insight, InsightKind, Sample, Window};

use super::Events;
use crate::append;
use crate::engine::RulesHandle;
use crate::insights::anomaly::Anomalies;
use crate::insights::silence::Silences;
use crate::insights::{Arrival, Windows, result};
use crate::metrics::EngineMetrics;

/// The device id insight results are written under (a partition key, not a device).
pub const RESULTS_DEVICE: &str = "$insights";
/// How long closed windows are kept for corrections: twice the window and its lateness,
/// at least a minute and at most an hour of the group's clock. Every closed window holds
/// its accumulators (a percentile, every value), so this bounds memory; data later than
/// that is counted (`weir_insight_too_late_total`), not merged.
fn retention(window: &Window, lateness: Duration) -> Duration {
    let size = match *window {
        Window::Tumbling { size } | Window::Hopping { size, .. } => size,
        Window::Session { gap } => gap,
    };
    (size + lateness)
        .saturating_mul(2)
        .clamp(Duration::from_secs(60), Duration::from_secs(3600))
}

/// One event's sample for one insight: insight name, group, event time, log offset and
/// values. A tuple, so timely can exchange it between workers.
type Sampled = (Arc<str>, String, i64, u64, Vec<Option<f64>>);

/// What one insight keeps in one worker.
enum State {
    Window {
        windows: Windows,
        aggregates: Vec<(String, AggFn)>,
    },
    Anomaly(Anomalies),
    Silence(Silences),
}

/// One insight in one worker: its state and what its results need.
struct Running {
    /// The insight's definition as last seen; a change starts it over.
    signature: String,
    keys: Vec<String>,
    state: State,
}

impl Running {
    fn new(insight: &Insight, signature: String) -> Running {
        let state = match &insight.kind {
            InsightKind::Window {
                window,
                lateness,
                aggregates,
            } => State::Window {
                windows: Windows::new(
                    *window,
                    *lateness,
                    retention(window, *lateness),
                    aggregates.iter().map(|a| (a.func, a.fraction)).collect(),
                ),
                aggregates: aggregates
                    .iter()
                    .map(|a| (a.name.clone(), a.func))
                    .collect(),
            },
            InsightKind::Anomaly {
                threshold,
                baseline,
                ..
            } => State::Anomaly(Anomalies::new(*threshold, *baseline)),
            InsightKind::Silence { after } => State::Silence(Silences::new(*after)),
        };
        Running {
            signature,
            keys: insight.group_by.iter().map(|(k, _)| k.clone()).collect(),
            state,
        }
    }

    /// Takes one sample; an anomaly or a group back from silence is a result at once.
    /// False when it was too late to be merged into its window.
    fn push(&mut self, s: Sampled, wall: i64, out: &mut Vec<Event>) -> bool {
        let (name, group, t, offset, values) = s;
        let name = &*name;
        match &mut self.state {
            State::Window { windows, .. } => {
                return windows.push(&group, t, offset, &values, wall) != Arrival::TooLate;
            }
            State::Anomaly(a) => {
                if let Some(v) = values.first().copied().flatten()
                    && let Some(found) = a.push(&group, t, offset, v)
                {
                    let id = format!("{name}/{group}/{offset}");
                    out.extend(result_event(
                        name,
                        result::anomaly(name, &self.keys, &found),
                        id,
                    ));
                }
            }
            State::Silence(s) => {
                if let Some(back) = s.push(&group, t, wall) {
                    let id = format!("{name}/{group}/back/{wall}");
                    out.extend(result_event(
                        name,
                        result::silence(name, &self.keys, &back),
                        id,
                    ));
                }
            }
        }
        true
    }

    /// What time has completed: closed windows, corrections, groups gone quiet.
    fn flush(&mut self, name: &str, wall: i64, out: &mut Vec<Event>) {
        match &mut self.state {
            State::Window {
                windows,
                aggregates,
            } => {
                let mut results = Vec::new();
                windows.flush(wall, &mut results);
                out.extend(results.iter().filter_map(|w| {
                    let id = format!("{name}/{}/{}/{}", w.group, w.start, w.revision);
                    result_event(name, result::body(name, &self.keys, aggregates, w), id)
                }));
            }
            State::Anomaly(_) => {}
            State::Silence(s) => {
                let mut reports = Vec::new();
                s.flush(wall, &mut reports);
                out.extend(reports.iter().filter_map(|r| {
                    let id = format!("{name}/{}/silent/{}", r.group, r.last_arrival);
                    result_event(name, result::silence(name, &self.keys, r), id)
                }));
            }
        }
    }
}

pub(crate) trait RunInsights {
    /// Computes the window insights of the live rules over these events and appends
    /// their results to `log`.
    fn insights(
        self,
        rules: RulesHandle,
        directory: Arc<dyn DeviceDirectory>,
        log: Option<Arc<dyn Ingest>>,
        tick: Duration,
        metrics: Arc<EngineMetrics>,
    );
}

impl RunInsights for Events<'_> {
    fn insights(
        self,
        rules: RulesHandle,
        directory: Arc<dyn DeviceDirectory>,
        log: Option<Arc<dyn Ingest>>,
        tick: Duration,
        metrics: Arc<EngineMetrics>,
    ) {
        let sample_rules = Arc::clone(&rules);
        let sample_metrics = Arc::clone(&metrics);
        let samples: Stream<'_, u64, Vec<Sampled>> =
            self.unary(Pipeline, "Sample", move |_cap, _info| {
                move |input, output| {
                    let rules = sample_rules.load();
                    input.for_each(|cap, data| {
                        if rules.insights.is_empty() {
                            data.clear();
                            return;
                        }
                        let mut session = output.session(&cap);
                        for e in data.drain(..) {
                            let view = EventView::new(&e, &*directory);
                            for insight in rules.insights.iter().filter(|i| i.source == e.source) {
                                match insight.sample(&view, e.enqueued_ms) {
                                    Sample::Take {
                                        group,
                                        time_ms,
                                        values,
                                    } => session.give((
                                        Arc::clone(&insight.name),
                                        group,
                                        time_ms,
                                        e.offset,
                                        values,
                                    )),
                                    Sample::NoTime => {
                                        EngineMetrics::add(&sample_metrics.insight_no_time, 1)
                                    }
                                    Sample::Skip => {}
                                }
                            }
                        }
                    });
                }
            });
        let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
        let by_group = Exchange::new(move |s: &Sampled| hasher.hash_one((&s.0, &s.1)));
        let scope = samples.scope();
        samples.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            by_group,
            "Windows",
            move |_cap, info| {
                let activator = scope.activator_for(info.address.clone());
                let mut running: HashMap<String, Running> = HashMap::new();
                let mut version: Option<Arc<str>> = None;
                let mut warned: Option<Instant> = None;
                move |(input, _frontier), _output| {
                    let rules = rules.load();
                    if version.as_ref() != Some(&rules.version) {
                        refresh(&mut running, &rules.insights);
                        version = Some(Arc::clone(&rules.version));
                    }
                    let wall = now_ms();
                    let mut events = Vec::new();
                    let mut too_late = 0;
                    input.for_each(|_cap, data| {
                        for s in data.drain(..) {
                            if let Some(r) = running.get_mut(&*s.0) {
                                too_late += u64::from(!r.push(s, wall, &mut events));
                            }
                        }
                    });
                    EngineMetrics::add(&metrics.insight_too_late, too_late);
                    for (name, r) in &mut running {
                        r.flush(name, wall, &mut events);
                    }
                    if !events.is_empty() {
                        let n = events.len() as u64;
                        match log.as_deref().map(|l| append::durably(l, events)) {
                            Some(Ok(())) => EngineMetrics::add(&metrics.insight_results, n),
                            Some(Err(e))
                                if warned.is_none_or(|t| t.elapsed().as_secs() >= 10) =>
                            {
                                warned = Some(Instant::now());
                                tracing::error!(error = %e, results = n, "cannot write insight results to the ingest log");
                            }
                            _ => {}
                        }
                    }
                    activator.activate_after(tick);
                }
            },
        );
    }
}

/// Starts, keeps or drops each insight's windows as the rules now say.
fn refresh(running: &mut HashMap<String, Running>, insights: &[Insight]) {
    running.retain(|name, _| insights.iter().any(|i| &*i.name == name));
    for insight in insights {
        let signature = format!("{:?}|{:?}", insight.group_by, insight.kind);
        let same = running
            .get(&*insight.name)
            .is_some_and(|r| r.signature == signature);
        if !same {
            running.insert(insight.name.to_string(), Running::new(insight, signature));
        }
    }
}

/// One result as an event of the `Insights` source. Its message id names the insight,
/// group and what it reports (window and revision, anomalous offset, silence), so a result
/// written twice is recognised as a repeat.
fn result_event(name: &str, body: serde_json::Value, message_id: String) -> Option<Event> {
    let mut e = Event::telemetry(
        DeviceId::parse(RESULTS_DEVICE).ok()?,
        0,
        Bytes::from(body.to_string()),
    );
    e.source = EventSource::Insights;
    e.auth_method = AuthMethod::Internal;
    e.system = SystemProperties {
        message_id: Some(message_id),
        content_type: Some("application/json".into()),
        content_encoding: Some("utf-8".into()),
        ..SystemProperties::default()
    };
    e.properties = vec![("insight".into(), name.to_owned())];
    Some(e)
}
