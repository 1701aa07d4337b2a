use std::sync::Arc;

use arrow_array::{Array, Float64Array, MapArray, StringArray};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use weir_core::{
    ColumnSpec, ColumnType, ColumnValue, Delivery, DeviceId, EndpointKind, EndpointSpec, Event,
    SinkFactory,
};
use weir_storage::{ParquetConfig, ParquetSinkFactory};

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
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

#[test]
fn writes_hive_partitions_atomically_with_typed_columns() {
    let tmp = tempfile::tempdir().expect("tmp");
    let factory = ParquetSinkFactory::new(ParquetConfig::new(tmp.path().to_path_buf()));
    let mut sink = factory.open(0).expect("open");
    let ep = Arc::new(EndpointSpec {
        name: Arc::from("hot"),
        kind: EndpointKind::Parquet { path: None },
        columns: vec![ColumnSpec {
            name: "temp".into(),
            ty: ColumnType::Double,
        }],
    });
    let hour0 = 1_767_322_800_000; // 2026-01-02T03:00:00Z
    let mk = |ms: i64, temp: ColumnValue| {
        let mut e = Event::telemetry(
            DeviceId::parse("d1").expect("id"),
            ms,
            Bytes::from_static(b"{\"temp\":1}"),
        );
        e.system.message_id = Some(format!("m{ms}"));
        e.properties = vec![("k".into(), "v".into())];
        Delivery {
            event: Arc::new(e),
            enrichments: vec![("site".into(), "b".into())],
            columns: vec![temp],
        }
    };
    sink.write(
        &ep,
        vec![
            mk(hour0 + 1, ColumnValue::Double(21.5)),
            mk(hour0 + 3_600_001, ColumnValue::Null),
        ],
    )
    .expect("write");
    // Nothing is visible until a file is finalised.
    assert!(
        files(tmp.path())
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".parquet"))
    );
    // The first hour is complete once the frontier passes its end.
    sink.advance(hour0 + 3_600_000, 0).expect("advance");
    let visible: Vec<_> = files(tmp.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    assert_eq!(visible.len(), 1, "{visible:?}");
    assert!(
        visible[0]
            .to_string_lossy()
            .contains("hot/date=2026-01-02/hour=03/part-")
    );
    sink.close().expect("close");
    let visible: Vec<_> = files(tmp.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    assert_eq!(visible.len(), 2);
    assert!(
        files(tmp.path())
            .iter()
            .all(|p| !p.to_string_lossy().ends_with("inprogress"))
    );

    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&visible[0]).expect("file"))
            .expect("parquet")
            .build()
            .expect("reader");
    let batch = reader.into_iter().next().expect("a batch").expect("ok");
    assert_eq!(batch.num_rows(), 1);
    let temp = batch
        .column_by_name("temp")
        .expect("temp")
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("f64");
    assert_eq!(temp.value(0), 21.5);
    let mid = batch
        .column_by_name("message_id")
        .expect("mid")
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("str");
    assert_eq!(mid.value(0), format!("m{}", hour0 + 1));
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
}
