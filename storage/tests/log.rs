//! The ingest log: appends, acknowledgements, reading by partition, recovery.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use weir_core::{DeviceId, Event, EventFeed, Ingest};
use weir_storage::log::{FsyncPolicy, Log, LogConfig};

fn event(device: &str, body: &str, mid: Option<&str>) -> Event {
    let mut e = Event::telemetry(
        DeviceId::parse(device).expect("id"),
        0,
        Bytes::from(body.to_owned()),
    );
    e.system.message_id = mid.map(Into::into);
    e
}

async fn append(log: &Log, device: &str, bodies: &[&str]) {
    let ingest = log.ingest();
    let batch = bodies.iter().map(|b| event(device, b, None)).collect();
    let ack = ingest
        .ingest(&DeviceId::parse(device).expect("id"), batch)
        .await
        .expect("queued");
    ack.await.expect("durable");
}

fn read_all(log: &Log, from: u64, workers: usize) -> Vec<Event> {
    let feed = log.feed();
    let mut out = Vec::new();
    for w in 0..workers {
        let mut r = feed.reader(w, workers, from).expect("reader");
        let mut part = Vec::new();
        loop {
            let before = part.len();
            r.read(1000, &mut part).expect("read");
            if part.len() == before {
                break;
            }
        }
        assert!(
            part.windows(2).all(|p| p[0].offset < p[1].offset),
            "offset order within a partition"
        );
        out.extend(part);
    }
    out.sort_by_key(|e| e.offset);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_read_back_by_partition_and_survive_reopening() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = LogConfig::new(dir.path().to_path_buf());
    config.segment_bytes = 512; // force several segments
    let (mut log, rec) = Log::open(config.clone()).expect("open");
    assert_eq!(rec.end, 0);
    for d in 0..10 {
        append(
            &log,
            &format!("dev-{d}"),
            &["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"],
        )
        .await;
    }
    assert_eq!(log.end(), 30);
    let events = read_all(&log, 0, 3);
    assert_eq!(
        events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (0..30).collect::<Vec<_>>()
    );
    assert!(
        events
            .windows(2)
            .all(|p| p[0].enqueued_ms <= p[1].enqueued_ms),
        "enqueued times never go back"
    );
    assert!(events.iter().all(|e| e.enqueued_ms > 0));
    assert_eq!(
        read_all(&log, 12, 2).len(),
        18,
        "records before `from` are skipped"
    );
    log.close();
    drop(log);
    let (log, rec) = Log::open(config).expect("reopen");
    assert_eq!((rec.end, rec.truncated_bytes), (30, 0));
    assert!(rec.segments > 1);
    append(&log, "dev-x", &["after"]).await;
    let events = read_all(&log, 0, 1);
    assert_eq!(events.len(), 31);
    assert_eq!(events[30].body, Bytes::from_static(b"after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = LogConfig::new(dir.path().to_path_buf());
    let seg = dir.path().join(format!("{:020}.log", 0));
    {
        let (log, _) = Log::open(config.clone()).expect("open");
        append(&log, "d", &["one", "two", "three"]).await;
    }
    let good = std::fs::metadata(&seg).expect("seg").len();
    // A power cut mid-write: half a record, then garbage.
    let data = std::fs::read(&seg).expect("read");
    let partial = &data[..weir_storage::log::HEADER + 5];
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .expect("open");
    f.write_all(partial).expect("append a partial record");
    f.write_all(&[0xff; 37]).expect("garbage");
    drop(f);
    let (log, rec) = Log::open(config.clone()).expect("recover");
    assert_eq!(rec.end, 3);
    assert_eq!(rec.truncated_bytes, (partial.len() + 37) as u64);
    assert_eq!(std::fs::metadata(&seg).expect("seg").len(), good);
    assert_eq!(read_all(&log, 0, 1).len(), 3);
    drop(log);
    // A flipped bit in the last record: that record goes, the rest stays.
    let mut data = std::fs::read(&seg).expect("read");
    let n = data.len();
    data[n - 2] ^= 0x40;
    std::fs::write(&seg, &data).expect("write");
    let (log, rec) = Log::open(config).expect("recover");
    assert_eq!(rec.end, 2);
    assert!(rec.truncated_bytes > 0);
    let bodies: Vec<Bytes> = read_all(&log, 0, 1).into_iter().map(|e| e.body).collect();
    assert_eq!(
        bodies,
        vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_budget_holds_appends_until_sinks_commit() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = LogConfig::new(dir.path().to_path_buf());
    config.segment_bytes = 1024;
    config.budget_bytes = 4096;
    config.keep = Duration::ZERO;
    config.fsync = FsyncPolicy::Never;
    let (log, _) = Log::open(config).expect("open");
    let big = "x".repeat(400);
    for _ in 0..6 {
        append(&log, "d", &[&big]).await;
    }
    let ingest = log.ingest();
    let id = DeviceId::parse("d").expect("id");
    let mut pending = Vec::new();
    for _ in 0..8 {
        let ack = ingest
            .ingest(&id, vec![event("d", &big, None)])
            .await
            .expect("queued");
        pending.push(ack);
    }
    let first = pending.remove(0);
    let held = tokio::time::timeout(Duration::from_millis(500), first).await;
    assert!(
        held.is_err(),
        "over budget, the append must not be acknowledged"
    );
    let end = log.end();
    log.feed().release(end);
    for ack in pending {
        tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .expect("released once sinks committed")
            .expect("durable");
    }
    assert!(
        log.metrics()
            .metrics()
            .held
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_follows_the_writer_across_segment_rolls() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = LogConfig::new(dir.path().to_path_buf());
    config.segment_bytes = 300;
    let (log, _) = Log::open(config).expect("open");
    let feed = log.feed();
    let mut reader = feed.reader(0, 1, 0).expect("reader");
    let mut got = Vec::new();
    for round in 0..20 {
        append(
            &log,
            "d",
            &[&format!(
                "{{\"round\": {round}, \"pad\": \"{}\"}}",
                "p".repeat(40)
            )],
        )
        .await;
        // Read as we go, so the reader sits on the active segment when it rolls.
        reader.read(1000, &mut got).expect("read");
    }
    assert_eq!(
        got.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_larger_than_a_record_is_refused_before_any_acknowledgement() {
    use weir_core::IngestError;
    let dir = tempfile::tempdir().expect("tmp");
    let (log, _) = Log::open(LogConfig::new(dir.path().to_path_buf())).expect("open");
    let ingest = log.ingest();
    let id = DeviceId::parse("big").expect("id");
    let mut huge = event("big", "", None);
    huge.body = Bytes::from(vec![b'x'; weir_storage::log::MAX_RECORD]);
    let small = event("big", "{\"ok\":1}", None);
    // Queued together, so the writer handles them in one group.
    let refused = ingest
        .ingest(&id, vec![small.clone(), huge])
        .await
        .expect("queued");
    let accepted = ingest.ingest(&id, vec![small]).await.expect("queued");
    assert!(matches!(
        refused.await,
        Err(IngestError::TooLarge { limit, .. }) if limit == weir_storage::log::MAX_RECORD
    ));
    accepted.await.expect("the other append is stored");
    assert_eq!(
        log.end(),
        1,
        "nothing of the refused append reached the log"
    );
    let back = read_all(&log, 0, 1);
    assert_eq!((back.len(), &back[0].body[..]), (1, &b"{\"ok\":1}"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_log_is_recognised_and_upgraded_with_offsets_continuing() {
    use weir_storage::log::{Format, format, upgrade_legacy};
    let dir = tempfile::tempdir().expect("tmp");
    let log_dir = dir.path().join("log");
    assert_eq!(
        format(&log_dir).expect("format"),
        Format::Current,
        "nothing yet"
    );
    {
        let (log, _) = Log::open(LogConfig::new(log_dir.clone())).expect("open");
        append(&log, "old", &["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"]).await;
    }
    assert_eq!(format(&log_dir).expect("format"), Format::Current);
    // What an earlier version left: segments and no format file.
    std::fs::remove_file(log_dir.join("FORMAT")).expect("rm");
    assert_eq!(format(&log_dir).expect("format"), Format::Legacy { end: 3 });
    upgrade_legacy(&log_dir, 3).expect("upgrade");
    assert_eq!(format(&log_dir).expect("format"), Format::Current);
    let (log, rec) = Log::open(LogConfig::new(log_dir.clone())).expect("reopen");
    assert_eq!(
        (rec.end, rec.first),
        (3, 3),
        "offsets continue where the old log ended"
    );
    append(&log, "new", &["{\"b\":1}"]).await;
    let back = read_all(&log, 0, 1);
    assert_eq!(back.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![3]);
    std::fs::write(log_dir.join("FORMAT"), "9\n").expect("newer");
    assert_eq!(format(&log_dir).expect("format"), Format::Newer(9));
}
