//! Two engines of one cluster in this test process, each over its own ingest log on the
//! cluster clock (decision 037): every event reaches the worker that owns its partition,
//! exactly once, and each worker sees its events in offset order, also those of a device
//! that moved from one process to the other. Registry changes written to either log reach
//! the registry replica of both processes, once each and in offset order (decision 039).
//! Each process hears the other's report for its live page.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use weir_core::feed::{device_hash, partition_of};
use weir_core::{
    Delivery, DeviceId, EndpointSpec, Event, EventSource, Ingest, NoDevices, Replica, ReplicaError,
    Sink, SinkError, SinkFactory,
};
use weir_engine::cluster::ClusterConfig;
use weir_engine::{Engine, EngineConfig, Hooks};
use weir_rules::{SourceFile, load_sources};
use weir_storage::log::{ClusterClock, Log, LogConfig};

const WORKERS: usize = 2;

/// (timely worker, offset, device, body) of every delivery, in arrival order.
type Seen = Arc<Mutex<Vec<(usize, u64, String, String)>>>;

struct Recorder(Seen);
struct RecorderSink {
    seen: Seen,
    worker: usize,
    floor: u64,
}

impl SinkFactory for Recorder {
    fn kind(&self) -> &'static str {
        weir_core::sink::ANY_KIND
    }
    fn recovered_floor(&self) -> u64 {
        0
    }
    fn open(&self, worker: usize, _workers: usize) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(RecorderSink {
            seen: Arc::clone(&self.0),
            worker,
            floor: 0,
        }))
    }
}

impl Sink for RecorderSink {
    fn write(&mut self, _e: &Arc<EndpointSpec>, batch: Vec<Delivery>) -> Result<(), SinkError> {
        if let Ok(mut v) = self.seen.lock() {
            for d in batch {
                let body = String::from_utf8_lossy(&d.event.body).into_owned();
                v.push((
                    self.worker,
                    d.event.offset,
                    d.event.device_id.to_string(),
                    body,
                ));
            }
        }
        Ok(())
    }
    fn advance(&mut self, frontier: u64) -> Result<(), SinkError> {
        self.floor = frontier;
        Ok(())
    }
    fn close(&mut self, end: u64) -> Result<(), SinkError> {
        self.floor = end;
        Ok(())
    }
    fn floor(&self) -> u64 {
        self.floor
    }
}

/// A process's registry replica: the (offset, body) of every change it was given.
#[derive(Default)]
struct Applied(Mutex<Vec<(u64, String)>>);

impl Replica for Applied {
    fn applied(&self) -> u64 {
        0
    }
    fn apply(&self, changes: &[Arc<Event>], through: u64) -> Result<u64, ReplicaError> {
        let mut v = self.0.lock().map_err(|e| ReplicaError(e.to_string()))?;
        for c in changes {
            assert!(
                c.offset < through,
                "a change is applied once the frontier passed it"
            );
            v.push((c.offset, String::from_utf8_lossy(&c.body).into_owned()));
        }
        Ok(through)
    }
}

/// Reports heard from other processes: (from, report).
#[derive(Default)]
struct Heard {
    me: usize,
    heard: Mutex<Vec<(usize, String)>>,
}

impl weir_engine::cluster::Reports for Heard {
    fn local(&self) -> String {
        format!("report of process {}", self.me)
    }
    fn peer(&self, process: usize, report: String) {
        if let Ok(mut h) = self.heard.lock() {
            h.push((process, report));
        }
    }
}

async fn change_registry(log: &Log, device: &str, body: String) {
    let id = DeviceId::parse(device).expect("id");
    let mut e = Event::telemetry(id.clone(), 0, Bytes::from(body));
    e.source = EventSource::Registry;
    let ack = log.ingest().ingest(&id, vec![e]).await.expect("queued");
    ack.await.expect("durable");
}

/// `n` distinct free loopback addresses: each listener is held until all are picked.
fn free_hosts(n: usize) -> Vec<String> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound").to_string())
        .collect()
}

fn rules() -> weir_rules::RuleSet {
    let text = "[[endpoint]]\nname = \"all\"\ntype = \"parquet\"\n[[route]]\nname = \"all\"\ncondition = \"true\"\nendpoints = [\"all\"]\n";
    load_sources(
        &[SourceFile {
            name: "r.toml".into(),
            path: "r.toml".into(),
            text: Arc::from(text),
        }],
        "hub",
        &weir_storage::Catalog,
    )
    .unwrap_or_else(|d| panic!("rules: {}", d[0]))
}

async fn append(log: &Log, device: &str, bodies: impl Iterator<Item = String>) {
    let id = DeviceId::parse(device).expect("id");
    let batch = bodies
        .map(|b| Event::telemetry(id.clone(), 0, Bytes::from(b)))
        .collect();
    let ack = log.ingest().ingest(&id, batch).await.expect("queued");
    ack.await.expect("durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_deliver_every_event_once_to_its_owner_in_offset_order() {
    let hosts = free_hosts(2);
    let dirs = [
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    ];
    let seen: Seen = Arc::default();
    let mut logs = Vec::new();
    let replicas: Vec<Arc<Applied>> = (0..2).map(|_| Arc::default()).collect();
    let heard: Vec<Arc<Heard>> = (0..2)
        .map(|me| {
            Arc::new(Heard {
                me,
                ..Heard::default()
            })
        })
        .collect();
    let mut starting = Vec::new();
    for (process, dir) in dirs.iter().enumerate() {
        let mut config = LogConfig::new(dir.path().to_path_buf());
        config.clock = Some(ClusterClock {
            process: process as u64,
            processes: 2,
        });
        let (log, _) = Log::open(config).expect("log");
        let feed = Arc::new(log.feed());
        let cluster = ClusterConfig {
            process,
            hosts: hosts.clone(),
        };
        let sink: Arc<dyn SinkFactory> = Arc::new(Recorder(Arc::clone(&seen)));
        let replica: Arc<dyn Replica> = Arc::clone(&replicas[process]) as Arc<dyn Replica>;
        let reports = Arc::clone(&heard[process]) as Arc<dyn weir_engine::cluster::Reports>;
        // Each start waits for the other process: start both at once.
        starting.push(std::thread::spawn(move || {
            Engine::start(
                EngineConfig {
                    workers: WORKERS,
                    tick: Duration::from_millis(20),
                    dedupe: None,
                    close_insights_at_end: false,
                    cluster: Some(cluster),
                },
                Arc::new(ArcSwap::from_pointee(rules())),
                Arc::new(NoDevices),
                feed,
                vec![sink],
                Hooks {
                    replica: Some(replica),
                    reports: Some(reports),
                    ..Hooks::default()
                },
            )
        }));
        logs.push(log);
    }
    let engines: Vec<Engine> = starting
        .into_iter()
        .map(|t| t.join().expect("thread").expect("engine"))
        .collect();

    // Ten devices on each process; `mover` sends to process 0, then to process 1.
    for round in 0..5 {
        for (p, log) in logs.iter().enumerate() {
            for d in 0..10 {
                let bodies = (0..20).map(move |i| format!("{{\"p\":{p},\"r\":{round},\"i\":{i}}}"));
                append(log, &format!("dev-{p}-{d}"), bodies).await;
            }
            change_registry(log, &format!("dev-{p}-0"), format!("change {p}/{round}")).await;
        }
    }
    append(&logs[0], "mover", (0..50).map(|i| format!("{{\"m\":{i}}}"))).await;
    append(
        &logs[1],
        "mover",
        (50..100).map(|i| format!("{{\"m\":{i}}}")),
    )
    .await;

    let total = 2 * 10 * 5 * 20 + 100;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let applied = || -> usize {
        replicas
            .iter()
            .map(|r| r.0.lock().map_or(0, |v| v.len()))
            .min()
            .unwrap_or(0)
    };
    while (seen.lock().map_or(0, |v| v.len()) < total || applied() < 10)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for log in &mut logs {
        log.close();
    }
    let joined = tokio::task::spawn_blocking(move || {
        engines.into_iter().map(Engine::join).collect::<Vec<_>>()
    })
    .await
    .expect("join");
    assert!(joined.iter().all(Result::is_ok), "{joined:?}");

    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), total, "every event once");
    let mut per_offset: HashMap<u64, usize> = HashMap::new();
    for (_, offset, _, _) in &seen {
        *per_offset.entry(*offset).or_default() += 1;
    }
    assert!(per_offset.values().all(|n| *n == 1), "no offset twice");
    let mut last: HashMap<usize, u64> = HashMap::new();
    for (worker, offset, device, _) in &seen {
        let owner = usize::from(partition_of(device_hash(device))) % (2 * WORKERS);
        assert_eq!(*worker, owner, "{device} at its partition's owner");
        let prev = last.insert(*worker, *offset);
        assert!(
            prev.is_none_or(|p| p < *offset),
            "worker {worker}: offsets in order"
        );
    }
    let mover: Vec<String> = seen
        .iter()
        .filter(|s| s.2 == "mover")
        .map(|s| s.3.clone())
        .collect();
    let want: Vec<String> = (0..100).map(|i| format!("{{\"m\":{i}}}")).collect();
    assert_eq!(mover, want, "a device that moved keeps its order");

    let mut want: Vec<String> = (0..5)
        .flat_map(|r| (0..2).map(move |p| format!("change {p}/{r}")))
        .collect();
    want.sort();
    for (p, r) in replicas.iter().enumerate() {
        let applied = r.0.lock().expect("applied").clone();
        assert!(
            applied.windows(2).all(|w| w[0].0 < w[1].0),
            "process {p}: changes in offset order, once each: {applied:?}"
        );
        let mut bodies: Vec<String> = applied.into_iter().map(|(_, b)| b).collect();
        bodies.sort();
        assert_eq!(bodies, want, "process {p} has every process's changes");
    }
    for (p, h) in heard.iter().enumerate() {
        let heard = h.heard.lock().expect("heard").clone();
        let other = 1 - p;
        assert!(!heard.is_empty(), "process {p} heard no report");
        assert!(
            heard
                .iter()
                .all(|(from, r)| *from == other && *r == format!("report of process {other}")),
            "process {p} heard only process {other}'s reports: {heard:?}"
        );
    }
}
