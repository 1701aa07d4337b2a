//! Condition evaluation: one event against the ten-route set, and single conditions.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use weir_core::NoDevices;
use weir_rules::compile::compile_str;
use weir_rules::eval::matches;
use weir_rules::{EventView, Outcome};

/// The allocator the `weir` binary uses, so the figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let set = weir_benches::ten_routes();
    let events: Vec<_> = (0..1024)
        .map(|i| weir_benches::event(i % 100, i as u64))
        .collect();
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("ten_routes_with_body_parse", |b| {
        let mut out = Outcome::default();
        b.iter(|| {
            for e in &events {
                let view = set.view(e, &NoDevices);
                set.evaluate(&view, e.source, &mut out);
                black_box(&out);
            }
        })
    });
    for (name, cond) in [
        ("property_equals", "level = 'critical'"),
        ("body_compare", "$body.temp > 30"),
        (
            "string_functions",
            "UPPER($body.line) = 'ASSEMBLY-A' OR STARTS_WITH($body.site, 'plant-')",
        ),
    ] {
        let ir = compile_str(cond).unwrap_or_else(|e| panic!("{}", e.message));
        g.bench_function(name, |b| {
            b.iter(|| {
                for e in &events {
                    let view = EventView::new(e, &NoDevices);
                    black_box(matches(&ir, &view));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
