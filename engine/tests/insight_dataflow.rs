//! Insights through the whole dataflow (two workers, the exchange by group, log-order
//! windows) against a reference: random out-of-order streams with random lateness and
//! windows. The latest revision of every window and group equals what the reference
//! computes over all events sorted by event time, and a window is corrected (revision > 0)
//! exactly when the reference says late data reached it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
mod common;

use common::windows_of;
use proptest::prelude::*;
use weir_core::{DeviceId, Event, NoDevices};
use weir_engine::harness;
use weir_engine::insights::aggregate::Accumulator;
use weir_rules::insight::AggFn;
use weir_rules::view::rfc3339_ms;

const AGGREGATES: [(&str, &str, AggFn, f64); 5] = [
    ("n", "count()", AggFn::Count, 0.0),
    ("total", "sum($body.v)", AggFn::Sum, 0.0),
    ("lo", "min($body.v)", AggFn::Min, 0.0),
    ("sd", "stddev($body.v)", AggFn::Stddev, 0.0),
    ("p90", "percentile($body.v, 0.9)", AggFn::Percentile, 0.9),
];

struct NoKinds;

impl weir_core::EndpointCatalog for NoKinds {
    fn kinds(&self) -> Vec<&'static str> {
        Vec::new()
    }
    fn endpoint(
        &self,
        kind: &str,
        _options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<weir_core::EndpointKind, weir_core::OptionError> {
        Err(weir_core::OptionError::new(
            None,
            format!("no kind {kind}"),
            None,
        ))
    }
}

#[derive(Debug, Clone)]
struct Ev {
    device: u8,
    time: i64,
    value: i32,
}

fn stream() -> impl Strategy<Value = (i64, i64, i64, Vec<Ev>)> {
    (1i64..=3, 0i64..=2, 10i64..=100).prop_flat_map(|(hops, late_windows, hop)| {
        let size = hop * hops;
        let ev = (0u8..3, 0..size * 20, -50i32..50).prop_map(|(device, time, value)| Ev {
            device,
            time,
            value,
        });
        (
            Just(size),
            Just(hop),
            Just(late_windows * size),
            proptest::collection::vec(ev, 1..150),
        )
    })
}

fn rules(size: i64, hop: i64, lateness: i64) -> weir_rules::RuleSet {
    let window = if size == hop {
        format!("tumbling {size}ms")
    } else {
        format!("hopping {size}ms every {hop}ms")
    };
    let aggregates: Vec<String> = AGGREGATES
        .iter()
        .map(|(name, call, ..)| format!("{name} = \"{call}\""))
        .collect();
    let text = format!(
        "[[insight]]\nname = \"w\"\ntime = \"$body.t\"\ngroup_by = {{ device = \"$connectionDeviceId\" }}\n\
         window = \"{window}\"\nallowed_lateness = \"{lateness}ms\"\naggregates = {{ {} }}\n",
        aggregates.join(", ")
    );
    weir_rules::load_sources(
        &[weir_rules::SourceFile {
            name: "w.toml".into(),
            path: "w.toml".into(),
            text: Arc::from(text),
        }],
        "hub",
        &NoKinds,
    )
    .unwrap_or_else(|d| panic!("{d:?}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn the_dataflow_matches_the_reference((size, hop, lateness, events) in stream()) {
        let input: Vec<Event> = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut ev = Event::telemetry(
                    DeviceId::parse(&format!("d{}", e.device)).expect("id"),
                    // One enqueued time: event time alone moves the groups' clocks.
                    1_000_000,
                    Bytes::from(format!("{{\"t\": {}, \"v\": {}}}", e.time, e.value)),
                );
                ev.system.message_id = Some(format!("m{i}").into());
                ev
            })
            .collect();
        let out = harness::run(input, rules(size, hop, lateness), Arc::new(NoDevices), 2)
            .expect("engine");

        // The reference: every event in every window it belongs to, in event-time order,
        // and which windows got data after their group's clock had passed them.
        let mut sorted: Vec<(usize, &Ev)> = events.iter().enumerate().collect();
        sorted.sort_by_key(|(o, e)| (e.time, *o));
        let funcs: Vec<(AggFn, f64)> = AGGREGATES.iter().map(|a| (a.2, a.3)).collect();
        let mut reference: BTreeMap<(String, String), Accumulator> = BTreeMap::new();
        for (offset, e) in sorted {
            for (start, _) in windows_of(e.time, size, hop) {
                reference
                    .entry((format!("d{}", e.device), rfc3339_ms(start)))
                    .or_insert_with(|| Accumulator::new(&funcs))
                    .add(e.time, offset as u64, &[Some(f64::from(e.value)); 5]);
            }
        }
        // A window is emitted once its group's highest event time passes its end plus the
        // lateness (or at once, if its first data comes after that); data for it after
        // that is late and must show up as a correction.
        let mut high: BTreeMap<u8, i64> = BTreeMap::new();
        let mut emitted: BTreeMap<(u8, i64), bool> = BTreeMap::new();
        let mut late: BTreeMap<(String, String), bool> = BTreeMap::new();
        for e in &events {
            for (start, _) in windows_of(e.time, size, hop) {
                let was = emitted.entry((e.device, start)).or_default();
                *late.entry((format!("d{}", e.device), rfc3339_ms(start))).or_default() |= *was;
            }
            let h = high.entry(e.device).or_insert(e.time);
            *h = (*h).max(e.time);
            let h = *h;
            for ((device, start), done) in emitted.iter_mut() {
                if *device == e.device && start + size + lateness <= h {
                    *done = true;
                }
            }
        }

        let mut latest: BTreeMap<(String, String), (u64, serde_json::Value)> = BTreeMap::new();
        let mut revisions: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
        for e in &out.insights {
            let b: serde_json::Value = serde_json::from_slice(&e.body).expect("json");
            let key = (
                b["device"].as_str().expect("device").to_owned(),
                b["window_start"].as_str().expect("start").to_owned(),
            );
            let rev = b["revision"].as_u64().expect("revision");
            revisions.entry(key.clone()).or_default().push(rev);
            if latest.get(&key).is_none_or(|(r, _)| rev > *r) {
                latest.insert(key, (rev, b));
            }
        }
        prop_assert_eq!(latest.keys().collect::<Vec<_>>(), reference.keys().collect::<Vec<_>>());
        for (key, acc) in &reference {
            let (rev, body) = &latest[key];
            for ((name, ..), want) in AGGREGATES.iter().zip(acc.values()) {
                let got = body[*name].as_f64();
                let same = match (got, want) {
                    (Some(g), Some(w)) => (g - w).abs() <= 1e-9 * g.abs().max(w.abs()).max(1.0),
                    (None, None) => true,
                    _ => false,
                };
                prop_assert!(same, "{:?} {}: {:?} vs {:?}", key, name, got, want);
            }
            let mut revs = revisions[key].clone();
            revs.sort_unstable();
            prop_assert_eq!(revs, (0..=*rev).collect::<Vec<_>>(), "{:?}: revisions count up from 0, once each", key);
            prop_assert_eq!(*rev > 0, late[key], "{:?}: corrected exactly when data came late", key);
        }
    }
}
