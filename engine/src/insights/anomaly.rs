//! Anomaly insights: an event whose value is more than `threshold` standard deviations
//! from the mean of its group's values over the `baseline` of event time before it
//! (a z-score). A group needs `MIN_BASELINE` values before anything is judged; every value,
//! anomalous or not, joins the baseline afterwards (a level that persists becomes normal).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Values a group must have in its baseline before an event is judged against it.
pub const MIN_BASELINE: usize = 10;

/// One anomaly.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub group: String,
    pub time: i64,
    pub offset: u64,
    pub value: f64,
    pub mean: f64,
    pub stddev: f64,
    pub zscore: f64,
}

#[derive(Debug, Default)]
struct Baseline {
    /// (event time, log offset, value) in log order.
    values: VecDeque<(i64, u64, f64)>,
    sum: f64,
    sumsq: f64,
}

impl Baseline {
    fn evict_before(&mut self, t: i64) {
        while let Some(&(time, _, v)) = self.values.front() {
            if time >= t {
                break;
            }
            self.values.pop_front();
            self.sum -= v;
            self.sumsq -= v * v;
        }
    }

    /// Mean and sample standard deviation.
    fn stats(&self) -> (f64, f64) {
        let n = self.values.len() as f64;
        let mean = self.sum / n;
        let var = ((self.sumsq - n * mean * mean) / (n - 1.0)).max(0.0);
        (mean, var.sqrt())
    }
}

pub struct Anomalies {
    threshold: f64,
    baseline: i64,
    groups: BTreeMap<String, Baseline>,
}

impl Anomalies {
    pub fn new(threshold: f64, baseline: Duration) -> Anomalies {
        Anomalies {
            threshold,
            baseline: i64::try_from(baseline.as_millis()).unwrap_or(i64::MAX),
            groups: BTreeMap::new(),
        }
    }

    /// The lowest log offset a baseline holds; `None` when all are empty.
    pub fn floor(&self) -> Option<u64> {
        self.groups
            .values()
            .filter_map(|b| b.values.front().map(|v| v.1))
            .min()
    }

    /// Judges one value of `group` at event time `t`, then adds it to the baseline.
    pub fn push(&mut self, group: &str, t: i64, offset: u64, value: f64) -> Option<Anomaly> {
        let b = self.groups.entry(group.to_owned()).or_default();
        b.evict_before(t.saturating_sub(self.baseline));
        let mut found = None;
        if b.values.len() >= MIN_BASELINE {
            let (mean, stddev) = b.stats();
            let zscore = if stddev > 0.0 {
                (value - mean) / stddev
            } else if value == mean {
                0.0
            } else {
                f64::INFINITY.copysign(value - mean)
            };
            if zscore.abs() > self.threshold {
                found = Some(Anomaly {
                    group: group.to_owned(),
                    time: t,
                    offset,
                    value,
                    mean,
                    stddev,
                    zscore,
                });
            }
        }
        b.values.push_back((t, offset, value));
        b.sum += value;
        b.sumsq += value * value;
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_fires_and_ordinary_noise_does_not() {
        let mut a = Anomalies::new(4.0, Duration::from_secs(3600));
        let mut fired = Vec::new();
        for i in 0..200 {
            let v = 20.0 + if i % 2 == 0 { 0.5 } else { -0.5 };
            fired.extend(a.push("m1", i * 1000, i as u64, v));
        }
        assert!(
            fired.is_empty(),
            "noise within a standard deviation: {fired:?}"
        );
        let spike = a.push("m1", 200_000, 200, 45.0).expect("a spike");
        assert!(
            spike.zscore > 4.0 && (spike.mean - 20.0).abs() < 0.01,
            "{spike:?}"
        );
        assert!(
            a.push("m2", 0, 201, 45.0).is_none(),
            "no baseline yet for m2"
        );
    }

    #[test]
    fn the_baseline_forgets_what_is_older_than_its_span() {
        let mut a = Anomalies::new(3.0, Duration::from_secs(10));
        for i in 0..20 {
            a.push("g", i * 100, i as u64, 100.0 + (i % 3) as f64);
        }
        // An hour later the old level is forgotten: too few values to judge.
        assert!(a.push("g", 3_600_000, 99, 0.0).is_none());
    }
}
