//! One insight in one worker: its state (windows, baselines or silences), what it takes
//! from each sample and tick, and its results as `Insights` events.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_core::{AuthMethod, DeviceId, Event, EventSource, SystemProperties};
use weir_rules::insight::{AggFn, Insight, InsightKind, Window};

use super::anomaly::Anomalies;
use super::silence::Silences;
use super::{Arrival, WindowResult, Windows, result};

/// The device id insight results and clock ticks are written under (a partition key, not
/// a device).
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

enum State {
    Window {
        windows: Windows,
        aggregates: Vec<(String, AggFn)>,
    },
    Anomaly(Anomalies),
    Silence(Silences),
}

/// A result and its message id, which names the insight, group and what it reports
/// (window and revision, anomalous offset, silence): the same result computed again on a
/// replay has the same id.
pub(crate) struct Produced {
    pub id: String,
    /// JSON text.
    pub body: String,
}

pub(crate) struct Running {
    /// The insight's definition as last seen; a change starts it over.
    pub signature: String,
    /// The endpoint late events go to instead of correcting their window.
    pub late: Option<Arc<str>>,
    keys: Vec<String>,
    state: State,
}

impl Running {
    pub(crate) fn new(insight: &Insight, signature: String) -> Running {
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
            late: None,
            keys: insight.group_by.iter().map(|(k, _)| k.clone()).collect(),
            state,
        }
    }

    /// Takes one sample that arrived (was enqueued) at `arrival`; an anomaly or a group
    /// back from silence is a result at once. False when it was too late to be merged.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        name: &str,
        group: &str,
        t: i64,
        offset: u64,
        arrival: i64,
        values: &[Option<f64>],
        out: &mut Vec<Produced>,
    ) -> bool {
        match &mut self.state {
            State::Window {
                windows,
                aggregates,
            } => {
                let mut results = Vec::new();
                let arrived =
                    windows.push_closing(group, t, offset, values, arrival, Some(&mut results));
                window_results(name, &self.keys, aggregates, &results, out);
                return arrived != Arrival::TooLate;
            }
            State::Anomaly(a) => {
                if let Some(v) = values.first().copied().flatten()
                    && let Some(found) = a.push(group, t, offset, v)
                {
                    out.push(Produced {
                        id: format!("{name}/{group}/{offset}"),
                        body: result::anomaly(name, &self.keys, &found).to_string(),
                    });
                }
            }
            State::Silence(s) => {
                if let Some(back) = s.push(group, t, offset, arrival) {
                    out.push(Produced {
                        id: format!("{name}/{group}/back/{arrival}"),
                        body: result::silence(name, &self.keys, &back).to_string(),
                    });
                }
            }
        }
        true
    }

    /// True when a window insight has emitted (or at once would emit) a window the event
    /// at `t` of `group`, arriving at `arrival`, belongs to.
    pub(crate) fn is_late(&self, group: &str, t: i64, arrival: i64) -> bool {
        match &self.state {
            State::Window { windows, .. } => windows.is_late(group, t, arrival),
            _ => false,
        }
    }

    /// What time has completed by `wall` (a tick's time): closed windows, corrections,
    /// groups gone quiet.
    pub(crate) fn flush(&mut self, name: &str, wall: i64, out: &mut Vec<Produced>) {
        match &mut self.state {
            State::Window {
                windows,
                aggregates,
            } => {
                let mut results = Vec::new();
                windows.flush(wall, &mut results);
                window_results(name, &self.keys, aggregates, &results, out);
            }
            State::Anomaly(_) => {}
            State::Silence(s) => {
                let mut reports = Vec::new();
                s.flush(wall, &mut reports);
                out.extend(reports.iter().map(|r| Produced {
                    id: format!("{name}/{}/silent/{}", r.group, r.last_arrival),
                    body: result::silence(name, &self.keys, r).to_string(),
                }));
            }
        }
    }

    /// The lowest log offset its state needs rebuilt after a restart.
    pub(crate) fn floor(&self) -> Option<u64> {
        match &self.state {
            State::Window { windows, .. } => windows.floor(),
            State::Anomaly(a) => a.floor(),
            State::Silence(s) => s.floor(),
        }
    }
}

/// Window results as what is written: an id per (window, group, revision) and the body.
fn window_results(
    name: &str,
    keys: &[String],
    aggregates: &[(String, AggFn)],
    results: &[WindowResult],
    out: &mut Vec<Produced>,
) {
    out.extend(results.iter().map(|w| Produced {
        id: format!("{name}/{}/{}/{}", w.group, w.start, w.revision),
        body: result::body(name, keys, aggregates, w),
    }));
}

fn internal(source: EventSource, body: Bytes) -> Option<Event> {
    let mut e = Event::telemetry(DeviceId::parse(RESULTS_DEVICE).ok()?, 0, body);
    e.source = source;
    e.auth_method = AuthMethod::Internal;
    Some(e)
}

/// One result as an event of the `Insights` source.
pub(crate) fn result_event(name: &str, p: Produced) -> Option<Event> {
    let mut e = internal(EventSource::Insights, Bytes::from(p.body))?;
    e.system = SystemProperties {
        message_id: Some(p.id.into()),
        content_type: Some("application/json".into()),
        content_encoding: Some("utf-8".into()),
        ..SystemProperties::default()
    };
    e.properties = vec![("insight".into(), name.to_owned())];
    Some(e)
}

/// A clock tick: the log stamps it with the time it is written.
pub(crate) fn tick_event() -> Option<Event> {
    internal(EventSource::Clock, Bytes::new())
}
