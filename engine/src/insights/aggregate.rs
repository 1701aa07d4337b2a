//! Aggregate accumulators: what one window of one group has seen, for each aggregate.
//!
//! Aggregates take numbers; values that are not numbers (or undefined) are skipped, as
//! SQL skips NULLs. `count()` counts events. `stddev` is the sample standard deviation
//! (Stream Analytics' STDEV, DuckDB's stddev_samp); `percentile` interpolates linearly
//! between the closest ranks (PERCENTILE_CONT, DuckDB's quantile_cont).

use std::sync::Arc;

use weir_rules::insight::AggFn;

/// The accumulator of one aggregate.
#[derive(Debug, Clone)]
enum State {
    Count(u64),
    /// Sum, count and Welford's running mean and M2: enough for sum, avg and stddev.
    Moments {
        n: u64,
        sum: f64,
        mean: f64,
        m2: f64,
    },
    Min(Option<f64>),
    Max(Option<f64>),
    /// The value with the lowest (highest for `Last`) event time, ties by log offset.
    Edge(Option<((i64, u64), f64)>),
    Values(Vec<f64>),
}

/// One window's accumulators, one per aggregate in declaration order.
#[derive(Debug, Clone)]
pub struct Accumulator {
    /// Shared by every window of an insight.
    funcs: Arc<[(AggFn, f64)]>,
    states: Vec<State>,
    pub events: u64,
    /// The lowest log offset among its events: what a replay must start from to rebuild it.
    pub lowest: u64,
}

impl Accumulator {
    pub fn new(funcs: &[(AggFn, f64)]) -> Accumulator {
        Accumulator::shared(&Arc::from(funcs))
    }

    /// An accumulator for `funcs`, which it shares rather than copies.
    pub fn shared(funcs: &Arc<[(AggFn, f64)]>) -> Accumulator {
        let states = funcs
            .iter()
            .map(|(f, _)| match f {
                AggFn::Count => State::Count(0),
                AggFn::Sum | AggFn::Avg | AggFn::Stddev => State::Moments {
                    n: 0,
                    sum: 0.0,
                    mean: 0.0,
                    m2: 0.0,
                },
                AggFn::Min => State::Min(None),
                AggFn::Max => State::Max(None),
                AggFn::First | AggFn::Last => State::Edge(None),
                AggFn::Percentile => State::Values(Vec::new()),
            })
            .collect();
        Accumulator {
            funcs: Arc::clone(funcs),
            states,
            events: 0,
            lowest: u64::MAX,
        }
    }

    /// Adds one event at event time `time` and log offset `offset`, with its value for
    /// each aggregate (`None` when not a number).
    pub fn add(&mut self, time: i64, offset: u64, values: &[Option<f64>]) {
        self.events += 1;
        self.lowest = self.lowest.min(offset);
        for (i, state) in self.states.iter_mut().enumerate() {
            let v = values.get(i).copied().flatten();
            let last = self.funcs[i].0 == AggFn::Last;
            match (state, v) {
                (State::Count(n), _) => *n += 1,
                (_, None) => {}
                (State::Moments { n, sum, mean, m2 }, Some(v)) => {
                    *n += 1;
                    *sum += v;
                    let d = v - *mean;
                    *mean += d / *n as f64;
                    *m2 += d * (v - *mean);
                }
                (State::Min(m), Some(v)) => *m = Some(m.map_or(v, |m| m.min(v))),
                (State::Max(m), Some(v)) => *m = Some(m.map_or(v, |m| m.max(v))),
                (State::Edge(e), Some(v)) => {
                    let key = (time, offset);
                    let better = e.is_none_or(|(k, _)| if last { key > k } else { key < k });
                    if better {
                        *e = Some((key, v));
                    }
                }
                (State::Values(vs), Some(v)) => vs.push(v),
            }
        }
    }

    /// Adds everything `other` has seen (two session windows that an event joins).
    pub fn merge(&mut self, other: &Accumulator) {
        self.events += other.events;
        self.lowest = self.lowest.min(other.lowest);
        for ((a, b), (func, _)) in self
            .states
            .iter_mut()
            .zip(&other.states)
            .zip(self.funcs.iter())
        {
            match (a, b) {
                (State::Count(x), State::Count(y)) => *x += y,
                (
                    State::Moments { n, sum, mean, m2 },
                    State::Moments {
                        n: n2,
                        sum: sum2,
                        mean: mean2,
                        m2: m22,
                    },
                ) => {
                    if *n2 == 0 {
                        continue;
                    }
                    let total = *n + n2;
                    let delta = mean2 - *mean;
                    *m2 += m22 + delta * delta * (*n as f64) * (*n2 as f64) / total as f64;
                    *mean += delta * (*n2 as f64) / total as f64;
                    *sum += sum2;
                    *n = total;
                }
                (State::Min(x), State::Min(y)) => {
                    *x = match (*x, *y) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    }
                }
                (State::Max(x), State::Max(y)) => {
                    *x = match (*x, *y) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    }
                }
                (State::Edge(x), State::Edge(Some((k, v)))) => {
                    let last = *func == AggFn::Last;
                    if x.is_none_or(|(mine, _)| if last { *k > mine } else { *k < mine }) {
                        *x = Some((*k, *v));
                    }
                }
                (State::Values(x), State::Values(y)) => x.extend_from_slice(y),
                _ => {}
            }
        }
    }

    /// The aggregates' values; `None` where there was nothing to aggregate.
    pub fn values(&self) -> Vec<Option<f64>> {
        self.states
            .iter()
            .zip(self.funcs.iter())
            .map(|(s, (f, fraction))| match (s, f) {
                (State::Count(n), _) => Some(*n as f64),
                (State::Moments { n: 0, .. }, _) => None,
                (State::Moments { sum, .. }, AggFn::Sum) => Some(*sum),
                (State::Moments { n, sum, .. }, AggFn::Avg) => Some(sum / *n as f64),
                (State::Moments { n, m2, .. }, _) => {
                    (*n >= 2).then(|| (m2 / (*n - 1) as f64).max(0.0).sqrt())
                }
                (State::Min(m) | State::Max(m), _) => *m,
                (State::Edge(e), _) => e.map(|(_, v)| v),
                (State::Values(vs), _) => percentile(vs, *fraction),
            })
            .collect()
    }
}

/// The `fraction` quantile of `values`, interpolated linearly between closest ranks.
pub fn percentile(values: &[f64], fraction: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = fraction * (v.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (at - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_aggregate_matches_its_sql_namesake() {
        let funcs = [
            (AggFn::Count, 0.0),
            (AggFn::Sum, 0.0),
            (AggFn::Avg, 0.0),
            (AggFn::Min, 0.0),
            (AggFn::Max, 0.0),
            (AggFn::Stddev, 0.0),
            (AggFn::First, 0.0),
            (AggFn::Last, 0.0),
            (AggFn::Percentile, 0.95),
        ];
        let mut a = Accumulator::new(&funcs);
        // Arrival order is not time order: first/last follow event time.
        for (t, o, v) in [
            (30, 3, Some(4.0)),
            (10, 1, Some(2.0)),
            (20, 2, None),
            (40, 4, Some(9.0)),
        ] {
            a.add(t, o, &[v; 9]);
        }
        let got = a.values();
        let want = [
            4.0,
            15.0,
            5.0,
            2.0,
            9.0,
            3.605_551_275_463_989,
            2.0,
            9.0,
            8.5,
        ];
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let g = g.unwrap_or(f64::NAN);
            assert!((g - w).abs() < 1e-9, "aggregate {i}: {g} vs {w}");
        }
        let empty = Accumulator::new(&funcs).values();
        assert_eq!(empty[0], Some(0.0));
        assert!(empty[1..].iter().all(Option::is_none));
    }
}
