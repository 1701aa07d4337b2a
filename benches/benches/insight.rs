//! The cost of doing insights right: one tumbling-window insight (count, avg, max) over
//! 10,000 groups through the window core (event time, lateness, revisions, retention),
//! next to a plain `HashMap` aggregation of the same stream (no lateness, no revisions,
//! nothing emitted until the end). The ratio of the two is the overhead.

use std::collections::HashMap;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir_engine::insights::Windows;
use weir_rules::insight::{AggFn, Window};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const GROUPS: usize = 10_000;
const EVENTS: usize = 1_000_000;

/// Events of 10,000 groups, 100 per millisecond of event time (10 s in all, so each
/// group has 10 events in each of its 10 one-second windows), a little out of order.
fn stream() -> (Vec<String>, Vec<(usize, i64, f64)>) {
    let groups = (0..GROUPS).map(|g| format!("[\"dev-{g:05}\"]")).collect();
    let events = (0..EVENTS)
        .map(|i| {
            let t = (i / 100) as i64 - if i % 7 == 0 { 3 } else { 0 };
            (i % GROUPS, t, (i % 100) as f64 / 4.0)
        })
        .collect();
    (groups, events)
}

fn bench(c: &mut Criterion) {
    let (groups, events) = stream();
    let mut g = c.benchmark_group("insight");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    g.bench_function("windows_10k_groups", |b| {
        b.iter(|| {
            let mut w = Windows::new(
                Window::Tumbling {
                    size: Duration::from_secs(1),
                },
                Duration::from_millis(10),
                Duration::from_secs(60),
                vec![(AggFn::Count, 0.0), (AggFn::Avg, 0.0), (AggFn::Max, 0.0)],
            );
            let mut out = Vec::new();
            for (i, &(group, t, v)) in events.iter().enumerate() {
                w.push(&groups[group], t, i as u64, &[None, Some(v), Some(v)], 0);
                // A flush per 8192 events, as the operator flushes per activation.
                if i % 8192 == 8191 {
                    w.flush(0, &mut out);
                    out.clear();
                }
            }
            w.flush(i64::MAX / 4, &mut out);
            out.len()
        })
    });
    g.bench_function("hashmap_10k_groups", |b| {
        b.iter(|| {
            let mut m: HashMap<(&str, i64), (u64, f64, f64)> = HashMap::new();
            for &(group, t, v) in &events {
                let e = m
                    .entry((groups[group].as_str(), t.div_euclid(1000)))
                    .or_insert((0, 0.0, f64::MIN));
                e.0 += 1;
                e.1 += v;
                e.2 = e.2.max(v);
            }
            m.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
