//! Faults the integration tests cannot cause from outside: a write whose bytes reached the
//! file, then failed, and could not be cut off.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use weir_core::{DeviceId, Event, EventFeed, Ingest, IngestError};

use super::{Log, LogConfig};

async fn append(log: &Log, prefix: &str) -> Result<(), IngestError> {
    let id = DeviceId::parse("d1").expect("id");
    let batch = (0..10)
        .map(|i| Event::telemetry(id.clone(), 0, Bytes::from(format!("{prefix}{i}"))))
        .collect();
    log.ingest().ingest(&id, batch).await?.await
}

fn bodies(events: &[Event]) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|e| (e.offset, String::from_utf8_lossy(&e.body).into_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_returns_what_a_failed_write_left_in_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let (log, _) = Log::open(LogConfig::new(dir.path().to_path_buf())).expect("open");
    append(&log, "a").await.expect("durable");
    let feed = log.feed();
    let mut reader = feed.reader(0, 1, 0).expect("reader");
    let mut got = Vec::new();
    reader.read(100, &mut got).expect("read");
    assert_eq!(got.len(), 10);

    // Its bytes reach the file and stay there; it is not acknowledged.
    log.shared.fail_next_write.store(true, Ordering::Release);
    assert!(append(&log, "failed").await.is_err());
    append(&log, "b").await.expect("durable");

    let mut after = Vec::new();
    while after.len() < 10 {
        let before = after.len();
        reader.read(100, &mut after).expect("read");
        assert!(
            after.len() > before,
            "the retried write is read: {:?}",
            bodies(&after)
        );
    }
    let want: Vec<(u64, String)> = (0..10).map(|i| (10 + i, format!("b{i}"))).collect();
    assert_eq!(bodies(&after), want);
}
