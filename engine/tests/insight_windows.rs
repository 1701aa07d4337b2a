//! The windows of an insight against a reference: random out-of-order streams with random
//! lateness, windows and aggregates. The latest revision of every window and group equals
//! what the reference computes over all events sorted by event time, and a window has one
//! correction for each event that arrived after it was closed.

use std::collections::BTreeMap;
use std::time::Duration;

mod common;

use common::windows_of;
use proptest::prelude::*;
use weir_engine::insights::aggregate::Accumulator;
use weir_engine::insights::{Arrival, WindowResult, Windows};
use weir_rules::insight::{AggFn, Window};

const FUNCS: [(AggFn, f64); 9] = [
    (AggFn::Count, 0.0),
    (AggFn::Sum, 0.0),
    (AggFn::Avg, 0.0),
    (AggFn::Min, 0.0),
    (AggFn::Max, 0.0),
    (AggFn::Stddev, 0.0),
    (AggFn::First, 0.0),
    (AggFn::Last, 0.0),
    (AggFn::Percentile, 0.9),
];

#[derive(Debug, Clone)]
struct Ev {
    group: u8,
    time: i64,
    value: Option<f64>,
}

fn stream() -> impl Strategy<Value = (i64, i64, i64, Vec<Ev>)> {
    // size = hop × 1..3 (1: tumbling); lateness up to two windows; ~20 windows of events.
    (1i64..=3, 0i64..=2, 10i64..=100).prop_flat_map(|(hops, late_windows, hop)| {
        let size = hop * hops;
        let span = size * 20;
        let ev = (
            0u8..3,
            0..span,
            proptest::option::weighted(0.9, -50.0f64..50.0),
        )
            .prop_map(|(group, time, value)| Ev { group, time, value });
        (
            Just(size),
            Just(hop),
            Just(late_windows * size),
            proptest::collection::vec(ev, 1..200),
        )
    })
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
        (None, None) => true,
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn final_results_and_corrections_match_the_reference((size, hop, lateness, events) in stream()) {
        let window = if size == hop {
            Window::Tumbling { size: Duration::from_millis(size as u64) }
        } else {
            Window::Hopping { size: Duration::from_millis(size as u64), hop: Duration::from_millis(hop as u64) }
        };
        // Retention far beyond the stream: nothing is too late here.
        let mut w = Windows::new(window, Duration::from_millis(lateness as u64), Duration::from_secs(86_400), FUNCS.to_vec());
        let mut out: Vec<WindowResult> = Vec::new();
        // The reference's view of arrival: the highest event time per group so far.
        let mut high: BTreeMap<u8, i64> = BTreeMap::new();
        let mut late_events: BTreeMap<(String, i64), u32> = BTreeMap::new();
        let mut on_time: BTreeMap<(String, i64), u32> = BTreeMap::new();
        for (offset, e) in events.iter().enumerate() {
            let group = format!("g{}", e.group);
            let wins = windows_of(e.time, size, hop);
            let closed_before = high.get(&e.group).map_or(0, |h| wins.iter().filter(|(_, end)| end + lateness <= *h).count());
            let arrival = w.push(&group, e.time, offset as u64, &[e.value; 9], 0);
            prop_assert_eq!(arrival == Arrival::Late, closed_before > 0, "event {} arrival {:?}", offset, arrival);
            prop_assert_ne!(arrival, Arrival::TooLate);
            for (start, end) in &wins {
                let late = high.get(&e.group).is_some_and(|h| end + lateness <= *h);
                let tally = if late { &mut late_events } else { &mut on_time };
                *tally.entry((group.clone(), *start)).or_default() += 1;
            }
            let h = high.entry(e.group).or_insert(e.time);
            *h = (*h).max(e.time);
            w.flush(0, &mut out);
        }
        // Everything closes once enough wall-clock time has passed.
        w.flush(i64::MAX / 4, &mut out);

        // The reference: every event in every window it belongs to, in event-time order.
        let mut sorted: Vec<(usize, &Ev)> = events.iter().enumerate().collect();
        sorted.sort_by_key(|(o, e)| (e.time, *o));
        let mut reference: BTreeMap<(String, i64), Accumulator> = BTreeMap::new();
        for (offset, e) in sorted {
            for (start, _) in windows_of(e.time, size, hop) {
                reference
                    .entry((format!("g{}", e.group), start))
                    .or_insert_with(|| Accumulator::new(&FUNCS))
                    .add(e.time, offset as u64, &[e.value; 9]);
            }
        }
        let mut latest: BTreeMap<(String, i64), &WindowResult> = BTreeMap::new();
        let mut revisions: BTreeMap<(String, i64), Vec<u32>> = BTreeMap::new();
        for r in &out {
            prop_assert_eq!(r.end - r.start, size);
            latest.insert((r.group.clone(), r.start), r);
            revisions.entry((r.group.clone(), r.start)).or_default().push(r.revision);
        }
        prop_assert_eq!(latest.keys().collect::<Vec<_>>(), reference.keys().collect::<Vec<_>>());
        for (key, acc) in &reference {
            let got = latest[key];
            prop_assert_eq!(got.events, acc.events);
            for (i, (g, r)) in got.values.iter().zip(acc.values()).enumerate() {
                prop_assert!(close(*g, r), "{:?} aggregate {}: {:?} vs {:?}", key, i, g, r);
            }
            let revs = &revisions[key];
            let want: Vec<u32> = (0..revs.len() as u32).collect();
            prop_assert_eq!(revs, &want, "revisions count up from 0");
            // A window with on-time data is emitted once and corrected once per late event;
            // one with only late data is emitted at its first event and corrected after.
            let late = late_events.get(key).copied().unwrap_or(0);
            let first = u32::from(on_time.contains_key(key));
            prop_assert_eq!(revs.len() as u32, late + first, "{:?}", key);
        }
    }
}

#[test]
fn a_quiet_group_closes_by_wall_clock_and_late_data_corrects() {
    let mut w = Windows::new(
        Window::Tumbling {
            size: Duration::from_secs(60),
        },
        Duration::from_secs(10),
        Duration::from_secs(3600),
        vec![(AggFn::Count, 0.0), (AggFn::Avg, 0.0)],
    );
    let mut out = Vec::new();
    assert_eq!(
        w.push("m1", 5_000, 0, &[None, Some(10.0)], 1_000_000),
        Arrival::OnTime
    );
    assert_eq!(
        w.push("m1", 50_000, 1, &[None, Some(20.0)], 1_001_000),
        Arrival::OnTime
    );
    w.flush(1_010_000, &mut out);
    assert!(
        out.is_empty(),
        "the group's clock is at 59 s: not 60 + 10 yet"
    );
    w.flush(1_021_000, &mut out);
    assert_eq!(out.len(), 1, "quiet for 20 s: the clock passed 70 s");
    assert_eq!(
        (out[0].start, out[0].end, out[0].revision, out[0].events),
        (0, 60_000, 0, 2)
    );
    assert_eq!(out[0].values, vec![Some(2.0), Some(15.0)]);
    assert!(w.is_late("m1", 30_000, 1_021_000));
    assert_eq!(
        w.push("m1", 30_000, 2, &[None, Some(30.0)], 1_021_000),
        Arrival::Late
    );
    w.flush(1_021_000, &mut out);
    assert_eq!(
        (out[1].revision, out[1].values.clone()),
        (1, vec![Some(3.0), Some(20.0)])
    );
}

#[test]
fn session_windows_merge_and_close_after_the_gap() {
    let mut w = Windows::new(
        Window::Session {
            gap: Duration::from_secs(30),
        },
        Duration::ZERO,
        Duration::from_secs(3600),
        vec![(AggFn::Count, 0.0)],
    );
    let mut out = Vec::new();
    for (i, t) in [0, 20_000, 100_000, 60_000, 45_000].into_iter().enumerate() {
        w.push("d", t, i as u64, &[None], 0);
    }
    w.flush(i64::MAX / 4, &mut out);
    let got: Vec<(i64, i64, f64)> = out
        .iter()
        .map(|r| (r.start, r.end, r.values[0].unwrap_or(0.0)))
        .collect();
    // 0, 20 s, 45 s and 60 s chain within 30 s of each other; 100 s is alone.
    assert_eq!(got, vec![(0, 90_000, 4.0), (100_000, 130_000, 1.0)]);
}
