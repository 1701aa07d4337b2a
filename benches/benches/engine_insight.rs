//! One tumbling-window insight (count, avg, max per device and second) over 10,000 devices
//! through the whole engine — feed, sampling (JSON body parsed, condition,
//! group), the exchange by group, log-order windows, results written to a log — next to a
//! plain `HashMap` aggregation of the same events (bodies parsed the same way, no event
//! time, no lateness, nothing emitted) in the same run. Workers = cores.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir_core::ingest::AckFuture;
use weir_core::{DeviceId, Event, Ingest, IngestFuture, NoDevices};
use weir_engine::{Engine, EngineConfig, Hooks, MemoryFeed};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEVICES: usize = 10_000;
const EVENTS: u64 = 400_000;
/// Events per millisecond of enqueued time: 400,000 events span 4 s, so each device has 10
/// events in each of its four one-second windows per round (as the window core's bench).
const PER_MS: u64 = 100;

const RULES: &str = r#"
[[insight]]
name = "per_device_1s"
condition = "IS_NUMBER($body.temp)"
group_by = { device = "$connectionDeviceId" }
window = "tumbling 1s"
allowed_lateness = "100ms"
aggregates = { n = "count()", avg_temp = "avg($body.temp)", max_temp = "max($body.temp)" }
"#;

/// Stands in for the ingest log: counts the results and ticks it is given.
struct Discard(AtomicU64);

impl Ingest for Discard {
    fn ingest(&self, _device: &DeviceId, batch: Vec<Event>) -> IngestFuture {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Box::pin(async { Ok(Box::pin(async { Ok(()) }) as AckFuture) })
    }
}

/// Round `round`'s events: fresh ids and enqueued times, so nothing is a repeat and every
/// round's windows are new.
fn events(round: u64) -> Vec<Vec<Event>> {
    let base = 1_767_225_600_000 + (round * EVENTS / PER_MS) as i64;
    (0..EVENTS)
        .map(|seq| {
            let mut e = weir_benches::event(seq as usize % DEVICES, seq);
            e.enqueued_ms = base + (seq / PER_MS) as i64;
            e.system.message_id = Some(format!("m-{round}-{seq}"));
            e
        })
        .collect::<Vec<_>>()
        .chunks(256)
        .map(<[Event]>::to_vec)
        .collect()
}

fn bench(c: &mut Criterion) {
    let workers = std::env::var("WEIR_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rules = weir_rules::load_sources(
        &[weir_rules::SourceFile {
            name: "bench.toml".into(),
            path: "bench.toml".into(),
            text: Arc::from(match std::env::var("WEIR_BENCH_WINDOW") {
                Ok(w) => RULES.replace("tumbling 1s", &w),
                Err(_) => RULES.to_owned(),
            }),
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
    let metrics = engine.metrics();
    let rounds = AtomicU64::new(0);
    let mut g = c.benchmark_group("engine_insight");
    g.throughput(Throughput::Elements(EVENTS));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("tumbling_10k_groups_engine", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let batches = events(rounds.fetch_add(1, Ordering::Relaxed));
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
    let same = events(0).concat();
    g.bench_function("hashmap_10k_groups_same_events", |b| {
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
                    .entry((e.device_id.as_str(), e.enqueued_ms.div_euclid(1000)))
                    .or_insert((0, 0.0, f64::MIN));
                w.0 += 1;
                w.1 += v;
                w.2 = w.2.max(v);
            }
            m.len()
        })
    });
    g.finish();
    feed.close();
    engine.join().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "results and ticks written: {}",
        log.0.load(Ordering::Relaxed)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
