//! The engine alone: parsed events (from memory, not the log) through the timely dataflow
//! with duplicate detection and ten routes into a sink that only counts. Workers = cores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir_core::Event;

/// The allocator the `weir` binary uses, so the figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let workers = std::env::var("WEIR_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Room for a whole round in any one queue: a round is pushed while the feed is held.
    let (engine, feed, delivered) = weir_benches::ten_route_engine(workers, 1 << 17);
    // Should a report panic, the feed closes before the engine is dropped (and joined).
    let _closes = feed.close_on_drop();
    // A fleet of 1000 devices sending in turn, one event per millisecond in all: each
    // device sends once a second, so the 300-s duplicate window holds ~300 ids per device,
    // as it would in a hub. With 64 virtual partitions a fleet this size splits 53/47 over
    // two workers (100 devices split 61/39, which measured the busier worker, not the engine).
    // `WEIR_BENCH_DEVICES` changes the fleet's size.
    let devices: usize = std::env::var("WEIR_BENCH_DEVICES")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(1000);
    let per_batch = 256;
    let batches: Vec<Vec<Event>> = (0..400)
        .map(|b| {
            (0..per_batch)
                .map(|i| {
                    let seq = b * per_batch + i;
                    weir_benches::event(seq % devices.max(1), seq as u64)
                })
                .collect()
        })
        .collect();
    let round_ms = (batches.len() * per_batch) as i64;
    let total = (batches.len() * per_batch) as u64;
    // Criterion may call the routine more than once; ids must stay unique across calls.
    let rounds = AtomicU64::new(0);
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(total));
    g.sample_size(10);
    g.bench_function("ten_routes_100k_events", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let round = rounds.fetch_add(1, Ordering::Relaxed);
                let mut copy = batches.clone();
                // Fresh message ids each round, or duplicate detection would drop them, and
                // time moves on so the window evicts by age as a hub's does.
                for e in copy.iter_mut().flatten() {
                    e.system.message_id = Some(format!("m-{round}-{}", e.offset).into());
                    e.enqueued_ms += round as i64 * round_ms;
                }
                // The round is queued before the clock starts: on two cores, a driver making
                // events while the workers run takes a core from them (perf: half the
                // samples were this thread cloning events and faulting in fresh pages).
                // In the hub each worker decodes its own events from its log.
                let before = delivered.load(Ordering::Relaxed);
                feed.hold();
                for batch in copy {
                    feed.push(batch).unwrap_or_else(|e| panic!("{e}"));
                }
                let start = Instant::now();
                feed.release();
                // Sleep rather than spin: on two cores a spinning waiter takes a third of
                // the CPU from the two workers it is measuring.
                while delivered.load(Ordering::Relaxed) - before < total {
                    std::thread::sleep(Duration::from_micros(100));
                }
                spent += start.elapsed();
            }
            spent
        })
    });
    g.finish();
    feed.close();
    engine.join().unwrap_or_else(|e| panic!("{e}"));
}

criterion_group!(benches, bench);
criterion_main!(benches);
