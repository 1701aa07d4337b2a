//! Parquet encoding: deliveries into a zstd Parquet file, including finalisation.

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use weir_core::{ColumnValue, Delivery, SinkFactory};
use weir_storage::commit::CommitStore;
use weir_storage::{ParquetConfig, ParquetSinkFactory};

/// The allocator the `weir` binary uses, so the figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let set = weir_benches::ten_routes();
    let endpoint = Arc::clone(&set.endpoints[0]);
    let n = 65_536u64;
    let deliveries: Vec<Delivery> = (0..n)
        .map(|i| Delivery {
            event: Arc::new(weir_benches::event((i % 100) as usize, i)),
            enrichments: vec![("site".into(), "plant-7".into())],
            columns: vec![ColumnValue::Double(20.5), ColumnValue::Int64(40)],
            priority: 5,
            rules_version: Arc::from("0123456789ab"),
            route: Arc::from("r"),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let make = || {
        let store =
            CommitStore::open(&dir.path().join("commits.redb")).unwrap_or_else(|e| panic!("{e}"));
        ParquetSinkFactory::new(
            ParquetConfig::new(dir.path().join("archive")),
            std::sync::Arc::new(store),
            Default::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut g = c.benchmark_group("parquet");
    g.throughput(Throughput::Elements(n));
    g.sample_size(20);
    g.bench_function("encode_64k_rows_zstd", |b| {
        b.iter_batched(
            || deliveries.clone(),
            |batch| {
                // A fresh commit store each time, so earlier runs' commits do not skip rows.
                let _ = std::fs::remove_file(dir.path().join("commits.redb"));
                let mut sink = make().open(0, 1).unwrap_or_else(|e| panic!("{e}"));
                sink.write(&endpoint, batch)
                    .unwrap_or_else(|e| panic!("{e}"));
                sink.close(n).unwrap_or_else(|e| panic!("{e}"));
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
