//! One tumbling-window insight (count, avg, max of `$body.temp` per device) over 10,000
//! devices through the whole engine — feed, sampling (JSON body parsed, condition, group,
//! values), the exchange by group, windows taken in log order, results written to a log —
//! next to a plain `HashMap` aggregation of the same events (bodies parsed the same way,
//! no event time, no lateness, nothing emitted) in the same run. Workers = cores.
//!
//! Two streams: the issue's example, a 1-minute window over devices sending once a second
//! (60 events per window and device); and a turnover-heavy one, a 1-second window with 10
//! events per window and device (a result for every 10 events).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use weir_core::ingest::AckFuture;
use weir_core::{DeviceId, Event, Ingest, IngestFuture, NoDevices};
use weir_engine::{Engine, EngineConfig, Hooks, MemoryFeed};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEVICES: usize = 10_000;
const EVENTS: u64 = 400_000;

/// A stream shape: the insight's window, and events per millisecond of enqueued time.
struct Shape {
    name: &'static str,
    window: &'static str,
    window_ms: i64,
    per_ms: u64,
}

const SHAPES: [Shape; 2] = [
    // 10,000 devices once a second: 400,000 events span 40 s.
    Shape {
        name: "tumbling_1m_10k_devices_1hz",
        window: "tumbling 1m",
        window_ms: 60_000,
        per_ms: 10,
    },
    // 400,000 events span 4 s: 10 events per device and 1-s window.
    Shape {
        name: "tumbling_1s_10k_devices_10_per_window",
        window: "tumbling 1s",
        window_ms: 1_000,
        per_ms: 100,
    },
];

fn rules(window: &str) -> String {
    format!(
        r#"
[[insight]]
name = "per_device"
condition = "IS_NUMBER($body.temp)"
group_by = {{ device = "$connectionDeviceId" }}
window = "{window}"
allowed_lateness = "100ms"
aggregates = {{ n = "count()", avg_temp = "avg($body.temp)", max_temp = "max($body.temp)" }}
"#
    )
}

/// Stands in for the ingest log: counts the results and ticks it is given.
struct Discard(AtomicU64);

impl Ingest for Discard {
    fn ingest(&self, _device: &DeviceId, batch: Vec<Event>) -> IngestFuture {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Box::pin(async { Ok(Box::pin(async { Ok(()) }) as AckFuture) })
    }
}

/// Round `round`'s events: fresh ids and enqueued times, so every round's windows are new.
fn events(round: u64, per_ms: u64) -> Vec<Vec<Event>> {
    let base = 1_767_225_600_000 + (round * EVENTS / per_ms) as i64;
    (0..EVENTS)
        .map(|seq| {
            let mut e = weir_benches::event(seq as usize % DEVICES, seq);
            e.enqueued_ms = base + (seq / per_ms) as i64;
            e.system.message_id = Some(format!("m-{round}-{seq}").into());
            e
        })
        .collect::<Vec<_>>()
        .chunks(256)
        .map(<[Event]>::to_vec)
        .collect()
}

fn shape(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, s: &Shape) {
    let workers = std::env::var("WEIR_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rules = weir_rules::load_sources(
        &[weir_rules::SourceFile {
            name: "bench.toml".into(),
            path: "bench.toml".into(),
            text: Arc::from(rules(s.window)),
        }],
        "bench",
        &weir_storage::Catalog,
    )
    .unwrap_or_else(|d| panic!("{d:?}"));
    let feed = MemoryFeed::new(workers, 1 << 16);
    let log = Arc::new(Discard(AtomicU64::new(0)));
    let engine = Engine::start(
        EngineConfig {
            workers,
            tick: Duration::from_millis(50),
            // The duplicate filter's memory for 10,000 devices (4096 ids each) would grow
            // through the whole run and measure page faults; its cost per event is in the
            // engine bench.
            dedupe: None,
            close_insights_at_end: false,
            cluster: None,
        },
        Arc::new(ArcSwap::from_pointee(rules)),
        Arc::new(NoDevices),
        Arc::new(feed.clone()),
        Vec::new(),
        Hooks {
            log: Some(Arc::clone(&log) as Arc<dyn Ingest>),
            ..Hooks::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Should a report panic, the feed closes before the engine is dropped (and joined).
    let _closes = feed.close_on_drop();
    let metrics = engine.metrics();
    let rounds = AtomicU64::new(0);
    g.bench_function(format!("{}_engine", s.name), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let batches = events(rounds.fetch_add(1, Ordering::Relaxed), s.per_ms);
                let before = metrics.insight_samples.load(Ordering::Relaxed);
                let start = Instant::now();
                for batch in batches {
                    feed.push(batch).unwrap_or_else(|e| panic!("{e}"));
                }
                while metrics.insight_samples.load(Ordering::Relaxed) - before < EVENTS {
                    std::thread::sleep(Duration::from_micros(100));
                }
                spent += start.elapsed();
            }
            spent
        })
    });
    feed.close();
    engine.join().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{}: results and ticks written: {}",
        s.name,
        log.0.load(Ordering::Relaxed)
    );
    let same = events(0, s.per_ms).concat();
    g.bench_function(format!("{}_hashmap", s.name), |b| {
        b.iter(|| {
            let mut m: HashMap<(&str, i64), (u64, f64, f64)> = HashMap::new();
            for e in &same {
                let Ok(body) = serde_json::from_slice::<serde_json::Value>(&e.body) else {
                    continue;
                };
                let Some(v) = body.get("temp").and_then(serde_json::Value::as_f64) else {
                    continue;
                };
                let w = m
                    .entry((e.device_id.as_str(), e.enqueued_ms.div_euclid(s.window_ms)))
                    .or_insert((0, 0.0, f64::MIN));
                w.0 += 1;
                w.1 += v;
                w.2 = w.2.max(v);
            }
            m.len()
        })
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine_insight");
    g.throughput(Throughput::Elements(EVENTS));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    for s in &SHAPES {
        shape(&mut g, s);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
