//! The ingest log under a cluster clock (decision 037): sparse offsets in this process's
//! residue, read back by partition, across segments and restarts, and a frontier that
//! moves with time while nothing arrives.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use weir_core::{DeviceId, Event, EventFeed, Ingest};
use weir_storage::log::{ClusterClock, Log, LogConfig};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64
}

async fn append(log: &Log, device: &str, n: usize) {
    let id = DeviceId::parse(device).expect("id");
    let batch = (0..n)
        .map(|i| Event::telemetry(id.clone(), 0, Bytes::from(format!("{{\"i\":{i}}}"))))
        .collect();
    let ack = log.ingest().ingest(&id, batch).await.expect("queued");
    ack.await.expect("durable");
}

/// Every event from `from` on, over `workers` readers, and the last frontier reported.
fn read_all(log: &Log, from: u64, workers: usize) -> (Vec<Event>, u64) {
    let feed = log.feed();
    let mut out = Vec::new();
    let mut frontier = u64::MAX;
    for w in 0..workers {
        let mut r = feed.reader(w, workers, from).expect("reader");
        let mut part = Vec::new();
        let mut f;
        loop {
            let before = part.len();
            f = r.read(1000, &mut part).expect("read");
            if part.len() == before {
                break;
            }
        }
        frontier = frontier.min(f);
        out.extend(part);
    }
    out.sort_by_key(|e| e.offset);
    (out, frontier)
}

fn config(dir: &std::path::Path, clock: Option<ClusterClock>) -> LogConfig {
    let mut c = LogConfig::new(dir.to_path_buf());
    c.segment_bytes = 400;
    c.clock = clock;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_follow_the_clock_in_the_process_residue_across_segments_and_restarts() {
    let dir = tempfile::tempdir().expect("tmp");
    let clock = ClusterClock {
        process: 1,
        processes: 3,
    };
    let started = now_us() * 3;
    let (mut log, _) = Log::open(config(dir.path(), Some(clock))).expect("open");
    for d in 0..8 {
        append(&log, &format!("dev-{d}"), 3).await;
    }
    let (events, frontier) = read_all(&log, 0, 3);
    assert_eq!(events.len(), 24);
    assert!(
        events.iter().all(|e| e.offset % 3 == 1),
        "process 1's residue"
    );
    assert!(events[0].offset >= started, "offsets start at the clock");
    assert!(events.windows(2).all(|p| p[0].offset < p[1].offset));
    assert!(frontier > events[23].offset, "read past every event");

    // Reading from an offset between two records starts at the next one.
    let mid = events[10].offset - 1;
    let (later, _) = read_all(&log, mid, 2);
    assert_eq!(later.len(), 14);
    assert_eq!(later[0].offset, events[10].offset);
    let feed = log.feed();
    assert_eq!(
        feed.offset_before(events[10].offset, Duration::from_secs(60)),
        events[0].offset,
        "a duplicate window reaches back by enqueued time"
    );

    // Idle, the frontier moves on with the clock; nothing is appended below it.
    let idle_from = now_us() * 3;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, idle_frontier) = read_all(&log, 0, 1);
    assert!(
        idle_frontier >= idle_from,
        "an idle log promises the present: {idle_frontier} < {idle_from}"
    );
    append(&log, "dev-late", 1).await;
    let (all, _) = read_all(&log, 0, 1);
    assert!(all.last().expect("one").offset >= idle_frontier);

    // Idle for a while, the promise is written down: the durable end moves with it.
    let promised_from = now_us() * 3;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        log.end() >= promised_from,
        "an idle log writes its promise down every second"
    );
    let (_, before_close) = read_all(&log, 0, 1);

    log.close();
    drop(log);
    let (log, rec) = Log::open(config(dir.path(), Some(clock))).expect("reopen");
    assert!(rec.segments > 1);
    assert!(
        rec.end >= before_close,
        "a restart never goes below a promise: {} < {before_close}",
        rec.end
    );
    append(&log, "dev-after", 2).await;
    let (again, _) = read_all(&log, 0, 2);
    assert_eq!(again.len(), 27);
    assert!(again.windows(2).all(|p| p[0].offset < p[1].offset));
    assert!(again.iter().all(|e| e.offset % 3 == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dense_log_joins_a_cluster_with_its_offsets_kept() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut log, _) = Log::open(config(dir.path(), None)).expect("open");
    append(&log, "a", 5).await;
    let (dense, frontier) = read_all(&log, 0, 1);
    assert_eq!(
        dense.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (0..5).collect::<Vec<_>>()
    );
    assert_eq!(frontier, 5, "alone, the frontier is the end");
    log.close();
    drop(log);
    let clock = ClusterClock {
        process: 0,
        processes: 2,
    };
    let (log, rec) = Log::open(config(dir.path(), Some(clock))).expect("reopen");
    assert_eq!(rec.end, 5);
    append(&log, "b", 5).await;
    let (mixed, _) = read_all(&log, 0, 2);
    assert_eq!(mixed.len(), 10);
    assert_eq!(mixed[4].offset, 4);
    assert!(mixed[5].offset >= now_us() * 2 - 60_000_000);
    assert!(mixed[5..].iter().all(|e| e.offset % 2 == 0));
    let (tail, _) = read_all(&log, 3, 1);
    assert_eq!(tail.len(), 7);
}
