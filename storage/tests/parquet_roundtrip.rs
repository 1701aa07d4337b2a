//! The Parquet sink: hive partitions, typed columns, and exactly-once commits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, Float64Array, MapArray, StringArray};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use weir_core::{
    ColumnSpec, ColumnType, ColumnValue, Delivery, DeviceId, EndpointKind, EndpointSpec, Event,
    SinkFactory,
};
use weir_storage::commit::CommitStore;
use weir_storage::{ParquetConfig, ParquetSinkFactory};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn visible(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect()
}

fn endpoint() -> Arc<EndpointSpec> {
    Arc::new(EndpointSpec {
        name: Arc::from("hot"),
        kind: EndpointKind::Parquet(Default::default()),
        columns: vec![ColumnSpec {
            name: "temp".into(),
            ty: ColumnType::Double,
        }],
        dead_letter: None,
    })
}

const HOUR0: i64 = 1_767_322_800_000; // 2026-01-02T03:00:00Z

fn delivery(offset: u64, ms: i64, temp: ColumnValue) -> Delivery {
    let mut e = Event::telemetry(
        DeviceId::parse("d1").expect("id"),
        ms,
        Bytes::from_static(b"{\"temp\":1}"),
    );
    e.offset = offset;
    e.system.message_id = Some(format!("m{offset}").into());
    e.properties = vec![("k".into(), "v".into())];
    Delivery {
        event: Arc::new(e),
        enrichments: vec![("site".into(), "b".into())],
        columns: vec![temp],
        priority: 5,
        rules_version: Arc::from("v1"),
        route: Arc::from("r"),
    }
}

fn factory(root: &Path) -> ParquetSinkFactory {
    let store = CommitStore::open(&root.join("commits.redb")).expect("commits");
    ParquetSinkFactory::new(
        ParquetConfig::new(root.join("archive")),
        Arc::new(store),
        Arc::default(),
    )
    .expect("factory")
}

#[test]
fn commits_ranges_atomically_and_skips_them_after_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = tmp.path().join("archive");
    let ep = endpoint();
    {
        let mut sink = factory(tmp.path()).open(0, 1).expect("open");
        sink.write(
            &ep,
            vec![
                delivery(0, HOUR0 + 1, ColumnValue::Double(21.5)),
                delivery(2, HOUR0 + 2, ColumnValue::Null),
            ],
        )
        .expect("write");
        sink.advance(3).expect("advance");
        assert!(
            visible(&archive).is_empty(),
            "nothing is visible before a commit"
        );
        // A delivery for the next hour commits the first hour's file at its offset.
        sink.write(
            &ep,
            vec![delivery(4, HOUR0 + 3_600_001, ColumnValue::Double(1.0))],
        )
        .expect("write");
        let v = visible(&archive);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].ends_with("hot/date=2026-01-02/hour=03/part-w0of1-00000000000000000000-00000000000000000004.parquet"), "{v:?}");
        sink.close(9).expect("close");
        assert_eq!(sink.floor(), 9, "the log may go below 9");
    }
    let v = visible(&archive);
    assert_eq!(v.len(), 2);
    assert!(
        v[1].ends_with("hour=04/part-w0of1-00000000000000000004-00000000000000000009.parquet"),
        "{v:?}"
    );
    assert!(
        files(&archive)
            .iter()
            .all(|p| !p.to_string_lossy().ends_with("inprogress"))
    );

    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&v[0]).expect("file"))
            .expect("parquet")
            .build()
            .expect("reader");
    let batch = reader.into_iter().next().expect("a batch").expect("ok");
    assert_eq!(batch.num_rows(), 2);
    let temp = batch
        .column_by_name("temp")
        .expect("temp")
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("f64");
    assert_eq!((temp.value(0), temp.is_null(1)), (21.5, true));
    let mid = batch
        .column_by_name("message_id")
        .expect("mid")
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("str");
    assert_eq!(mid.value(0), "m0");
    let props = batch
        .column_by_name("properties")
        .expect("props")
        .as_any()
        .downcast_ref::<MapArray>()
        .expect("map");
    let keys = props
        .keys()
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("keys");
    assert_eq!((keys.value(0), keys.value(1)), ("k", "site"));

    // A restarted engine replays from before the commit: those deliveries are skipped.
    let mut sink = factory(tmp.path()).open(0, 1).expect("reopen");
    sink.write(
        &ep,
        (0..12)
            .map(|o| delivery(o, HOUR0 + 3_600_100, ColumnValue::Null))
            .collect(),
    )
    .expect("replay");
    sink.close(12).expect("close");
    let v = visible(&archive);
    assert_eq!(v.len(), 3);
    assert!(
        v[2].ends_with("part-w0of1-00000000000000000009-00000000000000000012.parquet"),
        "{v:?}"
    );
    let rows: usize = v
        .iter()
        .map(|p| {
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(p).expect("f"))
                .expect("pq")
                .build()
                .expect("r")
                .map(|b| b.expect("b").num_rows())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(
        rows,
        2 + 1 + 3,
        "offsets 9, 10, 11 are new; 0..9 were committed"
    );
}

#[test]
fn uncommitted_files_disappear_and_pending_renames_complete_on_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = tmp.path().join("archive");
    let ep = endpoint();
    let mut sink = factory(tmp.path()).open(0, 1).expect("open");
    sink.write(&ep, vec![delivery(0, HOUR0, ColumnValue::Null)])
        .expect("write");
    // The process dies here: the open file was never committed (dropping the sink does
    // nothing more than a crash would: it only closes the file).
    drop(sink);
    assert_eq!(files(&archive).len(), 1);
    let _ = factory(tmp.path()).open(0, 1).expect("reopen");
    assert!(
        files(&archive).is_empty(),
        "the uncommitted file is removed"
    );
}

#[test]
fn bodies_are_kept_exactly_with_their_provenance() {
    use arrow_array::{BinaryArray, Int64Array};
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = tmp.path().join("archive");
    let ep = endpoint();
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let utf16: Vec<u8> = "héllo ✓"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let mut rows = Vec::new();
    for (offset, body, ce) in [
        (5u64, binary.clone(), None),
        (6, utf16, Some("utf-16")),
        (7, b"{\"temp\":1}".to_vec(), Some("utf-8")),
    ] {
        let mut d = delivery(offset, HOUR0, ColumnValue::Null);
        let mut e = (*d.event).clone();
        e.body = Bytes::from(body);
        e.system.content_encoding = ce.map(Box::from);
        e.system.dt_dataschema = Some("dtmi:x;1".into());
        d.event = Arc::new(e);
        rows.push(d);
    }
    let mut sink = factory(tmp.path()).open(0, 1).expect("open");
    sink.write(&ep, rows).expect("write");
    sink.close(8).expect("close");
    let v = visible(&archive);
    let batch = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&v[0]).expect("f"))
        .expect("parquet")
        .build()
        .expect("reader")
        .next()
        .expect("batch")
        .expect("ok");
    let col = |n: &str| batch.column_by_name(n).unwrap_or_else(|| panic!("{n}"));
    let body = col("body")
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("str");
    let bytes = col("body_bytes")
        .as_any()
        .downcast_ref::<BinaryArray>()
        .expect("bin");
    assert!(body.is_null(0) && bytes.value(0) == binary.as_slice());
    assert_eq!((body.value(1), bytes.is_null(1)), ("héllo ✓", true));
    assert_eq!(body.value(2), "{\"temp\":1}");
    let offsets = col("ingest_offset")
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("i64");
    assert_eq!(offsets.values().to_vec(), vec![5, 6, 7]);
    let version = col("rules_version")
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("str");
    assert_eq!(version.value(2), "v1");
    let system = col("system")
        .as_any()
        .downcast_ref::<MapArray>()
        .expect("map");
    let row = system.value(1);
    let keys = row
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("k");
    let vals = row
        .column(1)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("v");
    let pairs: Vec<(&str, &str)> = (0..keys.len())
        .map(|i| (keys.value(i), vals.value(i)))
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("content_encoding", "utf-16"),
            ("dt-dataschema", "dtmi:x;1")
        ]
    );
}

fn delivery_for(device: &str, offset: u64) -> Delivery {
    let mut d = delivery(offset, HOUR0 + offset as i64, ColumnValue::Null);
    let mut e = (*d.event).clone();
    e.device_id = DeviceId::parse(device).expect("id");
    d.event = Arc::new(e);
    d
}

fn rows(dir: &Path) -> usize {
    visible(dir)
        .iter()
        .map(|p| {
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(p).expect("f"))
                .expect("pq")
                .build()
                .expect("r")
                .map(|b| b.expect("b").num_rows())
                .sum::<usize>()
        })
        .sum()
}

#[test]
fn a_different_worker_count_resumes_each_partition_where_it_was_committed() {
    use weir_core::feed::{device_hash, partition_of, worker_of};
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = tmp.path().join("archive");
    let ep = endpoint();
    // One device on each worker of two.
    let on = |w: usize| {
        (0..)
            .map(|i| format!("dev-{i}"))
            .find(|d| worker_of(partition_of(device_hash(d)), 2) == w)
            .expect("a device")
    };
    let (a, b) = (on(0), on(1));
    let all: Vec<Delivery> = (0..150)
        .map(|o| delivery_for(if o % 2 == 0 { &a } else { &b }, o))
        .collect();
    {
        let f = factory(tmp.path());
        let mut w0 = f.open(0, 2).expect("w0");
        let mut w1 = f.open(1, 2).expect("w1");
        // Worker 0 got through offset 100, worker 1 only through 50, when the run ended.
        let mine = |w: usize, below: u64| -> Vec<Delivery> {
            all.iter()
                .filter(|d| d.event.offset < below)
                .filter(|d| {
                    worker_of(partition_of(device_hash(d.event.device_id.as_str())), 2) == w
                })
                .cloned()
                .collect()
        };
        w0.write(&ep, mine(0, 100)).expect("w0 write");
        w0.close(100).expect("w0 close");
        w1.write(&ep, mine(1, 50)).expect("w1 write");
        w1.close(50).expect("w1 close");
    }
    assert_eq!(rows(&archive), 50 + 25);
    let f = factory(tmp.path());
    use weir_core::SinkFactory as _;
    assert_eq!(
        f.recovered_floor(),
        50,
        "the engine replays from the lowest partition"
    );
    let mut one = f.open(0, 1).expect("one worker");
    one.write(
        &ep,
        all.iter()
            .filter(|d| d.event.offset >= 50)
            .cloned()
            .collect(),
    )
    .expect("write");
    one.close(150).expect("close");
    assert_eq!(rows(&archive), 150, "every delivery exactly once");
    let names: Vec<String> = visible(&archive)
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("part-w0of1-")),
        "{names:?}"
    );
    assert_eq!(one.floor(), 150);
}

/// A frontier that moves while nothing arrives (a cluster's clock) is recorded every 5 s,
/// not every second.
#[test]
fn an_idle_sink_records_a_moving_frontier_every_five_seconds() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut sink = factory(tmp.path()).open(0, 1).expect("open");
    sink.advance(10).expect("advance");
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    sink.advance(20).expect("advance");
    assert_eq!(sink.floor(), 0, "nothing arrived: no record after 1.2 s");
    std::thread::sleep(std::time::Duration::from_millis(4_000));
    sink.advance(30).expect("advance");
    assert_eq!(sink.floor(), 30, "recorded after 5 s");
}
