//! A failing endpoint never commits past what it wrote, waits, and catches up from a replay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_core::{
    DeadLetterPolicy, Delivery, DeviceId, EndpointKind, EndpointSpec, EndpointState, Event,
    HealthBoard, ReplayRequest, Sink, SinkFactory,
};
use weir_storage::commit::CommitStore;
use weir_storage::{ParquetConfig, ParquetSinkFactory};

const HOUR0: i64 = 1_767_322_800_000; // 2026-01-02T03:00:00Z

fn spec() -> Arc<EndpointSpec> {
    Arc::new(EndpointSpec {
        name: Arc::from("hot"),
        kind: EndpointKind::Parquet(Default::default()),
        columns: vec![],
        dead_letter: None,
    })
}

fn deliveries(offsets: std::ops::Range<u64>) -> Vec<Delivery> {
    offsets
        .map(|o| {
            let mut e = Event::telemetry(
                DeviceId::parse("d1").expect("id"),
                HOUR0 + o as i64,
                Bytes::from(format!("{{\"n\":{o}}}")),
            );
            e.offset = o;
            Delivery {
                event: Arc::new(e),
                enrichments: vec![],
                columns: vec![],
                priority: 5,
                rules_version: Arc::from("v"),
                route: Arc::from("r"),
            }
        })
        .collect()
}

fn parquet_rows(dir: &Path) -> usize {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut rows = 0;
    for e in walk(dir) {
        if e.extension().is_some_and(|x| x == "parquet") {
            let r = SerializedFileReader::new(std::fs::File::open(&e).expect("f")).expect("pq");
            rows += r.metadata().file_metadata().num_rows() as usize;
        }
    }
    rows
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Worker 0 of 1 over a fresh archive under `dir`, and the health board it reports to.
fn open(dir: &Path) -> (PathBuf, Box<dyn Sink>, Arc<HealthBoard>) {
    let archive = dir.join("archive");
    let store = CommitStore::open(&dir.join("commits.redb")).expect("commits");
    let board = Arc::new(HealthBoard::default());
    let factory = ParquetSinkFactory::new(
        ParquetConfig::new(archive.clone()),
        Arc::new(store),
        Arc::clone(&board),
    )
    .expect("factory");
    (archive, factory.open(0, 1).expect("open"), board)
}

#[test]
fn a_blocked_partition_fails_the_endpoint_until_a_replay_catches_it_up() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (archive, mut sink, board) = open(tmp.path());
    let ep = spec();
    // A regular file where the partition directory belongs.
    std::fs::create_dir_all(archive.join("hot")).expect("dir");
    let blocker = archive.join("hot/date=2026-01-02");
    std::fs::write(&blocker, b"in the way").expect("blocker");

    assert!(sink.write(&ep, deliveries(0..4)).is_err());
    let h = board.endpoint("hot").expect("reported");
    assert_eq!((h.state, h.committed), (EndpointState::Unhealthy, 0));
    assert!(h.last_error.is_some_and(|e| e.contains("date=2026-01-02")));
    // The frontier moves on; the failed endpoint's commit point does not.
    sink.write(&ep, deliveries(4..7))
        .expect("dropped while failed");
    sink.advance(10).expect("advance");
    std::thread::sleep(Duration::from_millis(1100));
    sink.advance(10).expect("advance writes the record");
    assert_eq!(sink.floor(), 0, "the log must keep offsets 0..");
    assert_eq!(board.endpoint("hot").map(|h| h.committed), Some(0));

    // Still blocked at the first retry: the replay fails again, with a longer wait.
    let req = sink.replay_request().expect("retry is due after 1 s");
    assert_eq!(
        req,
        ReplayRequest {
            endpoint: Arc::from("hot"),
            from: 0,
            to: 10,
            dead_letter: None,
        }
    );
    assert!(sink.replay("hot", Some(&ep), deliveries(0..7), 10).is_err());
    assert_eq!(board.endpoint("hot").map(|h| h.failures), Some(2));
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        sink.replay_request().is_none(),
        "the second retry waits 2 s"
    );

    std::fs::remove_file(&blocker).expect("unblock");
    std::thread::sleep(Duration::from_millis(1000));
    let req = sink.replay_request().expect("second retry");
    assert_eq!((req.from, req.to), (0, 10));
    sink.replay("hot", Some(&ep), deliveries(0..5), 5)
        .expect("first chunk");
    // Live deliveries keep being dropped until the replay has caught up.
    sink.write(&ep, deliveries(10..12)).expect("dropped");
    let req = sink.replay_request().expect("continue");
    assert_eq!((req.from, req.to), (5, 12));
    sink.replay(
        "hot",
        Some(&ep),
        deliveries(5..7)
            .into_iter()
            .chain(deliveries(10..12))
            .collect(),
        12,
    )
    .expect("second chunk");
    // The chunk reached everything seen, so the endpoint is live at once: under steady
    // load the next deliveries arrive before anyone asks again.
    sink.write(&ep, deliveries(12..14)).expect("live");
    assert!(sink.replay_request().is_none(), "caught up: live again");
    assert_eq!(
        board.endpoint("hot").map(|h| h.state),
        Some(EndpointState::Degraded),
        "live, but nothing committed since the failure yet"
    );
    sink.close(14).expect("close");
    assert_eq!(
        board.endpoint("hot").map(|h| h.state),
        Some(EndpointState::Healthy),
        "a commit proves the endpoint works"
    );
    assert_eq!(parquet_rows(&archive), 11, "0..7 and 10..14, each once");
    assert_eq!(sink.floor(), 14);
    assert!(
        walk(&archive)
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".inprogress"))
    );
}

#[test]
fn a_dead_letter_pass_moves_the_commit_point_past_what_waited_too_long() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (archive, mut sink, board) = open(tmp.path());
    let ep = Arc::new(EndpointSpec {
        dead_letter: Some(DeadLetterPolicy {
            endpoint: Arc::from("dlq"),
            max_retry: Duration::ZERO,
        }),
        ..(*spec()).clone()
    });
    std::fs::create_dir_all(archive.join("hot")).expect("dir");
    let blocker = archive.join("hot/date=2026-01-02");
    std::fs::write(&blocker, b"in the way").expect("blocker");
    assert!(sink.write(&ep, deliveries(0..4)).is_err());
    sink.advance(10).expect("advance");

    let req = sink.replay_request().expect("a pass is due at once");
    let pass = req
        .dead_letter
        .clone()
        .expect("a dead-letter pass, not a retry");
    assert_eq!((req.from, req.to, &*pass.target), (0, 10, "dlq"));
    assert!(pass.reason.contains("date=2026-01-02"), "{}", pass.reason);
    let mut batch = deliveries(0..10);
    sink.uncommitted("hot", &mut batch);
    assert_eq!(batch.len(), 10);
    sink.dead_lettered("hot", 10, 10).expect("recorded");
    assert_eq!(sink.floor(), 10, "the log may let go of what was handed on");
    let h = board.endpoint("hot").expect("reported");
    assert_eq!(
        (h.state, h.committed, h.dead_lettered),
        (EndpointState::Unhealthy, 10, 10)
    );
    let mut later = deliveries(8..12);
    sink.uncommitted("hot", &mut later);
    assert_eq!(
        later.iter().map(|d| d.event.offset).collect::<Vec<_>>(),
        vec![10, 11]
    );
    assert_eq!(sink.replay_request(), None, "nothing left; the retry waits");

    std::fs::remove_file(&blocker).expect("unblock");
    std::thread::sleep(Duration::from_millis(1100));
    let req = sink.replay_request().expect("the retry");
    assert_eq!((req.from, req.dead_letter), (10, None));
    sink.replay("hot", Some(&ep), deliveries(10..12), 12)
        .expect("replayed");
    sink.close(12).expect("close");
    assert_eq!(parquet_rows(&archive), 2, "only what was not handed on");
}
