//! Shared fixtures for the benchmarks: realistic events and a rule set with ten routes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use weir_core::{Delivery, DeviceId, EndpointSpec, Event, NoDevices, Sink, SinkError, SinkFactory};
use weir_engine::{DedupeConfig, Engine, EngineConfig, MemoryFeed};
use weir_rules::{RuleSet, SourceFile, load_sources};

/// A 120-byte telemetry body, like the end-to-end load generator sends.
pub fn body(seq: u64) -> Bytes {
    let temp = 15.0 + (seq % 200) as f64 / 10.0;
    Bytes::from(format!(
        r#"{{"temp": {temp:.2}, "hum": {}, "seq": {seq}, "site": "plant-7", "line": "assembly-b", "status": "nominal"}}"#,
        20 + seq % 60
    ))
}

/// An event as a gateway produces it: device id, system and application properties, body.
pub fn event(device: usize, seq: u64) -> Event {
    let id =
        DeviceId::parse(&format!("dev-{device:04}")).unwrap_or_else(|_| unreachable!("valid id"));
    let mut e = Event::telemetry(id, 1_767_225_600_000 + seq as i64, body(seq));
    e.offset = seq;
    e.system.message_id = Some(format!("m-{seq}").into());
    e.system.content_type = Some("application/json".into());
    e.properties = vec![(
        "level".into(),
        if seq.is_multiple_of(7) {
            "critical".into()
        } else {
            "info".into()
        },
    )];
    e
}

/// Ten routes of the kinds data engineers write, two Parquet endpoints and a fallback.
pub const TEN_ROUTES: &str = r#"
[[endpoint]]
name = "archive"
type = "parquet"
columns = { temp = "double:$body.temp", hum = "int64:$body.hum" }
[[endpoint]]
name = "alerts"
type = "parquet"
[[route]]
name = "r1"
condition = "$body.temp > 30"
endpoints = ["alerts"]
[[route]]
name = "r2"
condition = "$body.hum < 25 AND $body.temp > 20"
endpoints = ["alerts"]
[[route]]
name = "r3"
condition = "level = 'critical'"
endpoints = ["alerts"]
[[route]]
name = "r4"
condition = "$connectionDeviceId = 'dev-0001'"
endpoints = ["alerts"]
[[route]]
name = "r5"
condition = "STARTS_WITH($body.site, 'plant-') AND $body.status != 'nominal'"
endpoints = ["alerts"]
[[route]]
name = "r6"
condition = "IS_DEFINED($body.missing)"
endpoints = ["alerts"]
[[route]]
name = "r7"
condition = "$body.temp * 9 / 5 + 32 > 95"
endpoints = ["alerts"]
[[route]]
name = "r8"
condition = "UPPER($body.line) = 'ASSEMBLY-A'"
endpoints = ["alerts"]
[[route]]
name = "r9"
condition = "$contentType = 'application/json' AND $body.seq % 1000 = 0"
endpoints = ["alerts"]
[[route]]
name = "r10"
condition = "true"
endpoints = ["archive"]
[fallback]
endpoints = ["archive"]
"#;

pub fn ten_routes() -> RuleSet {
    load_sources(
        &[SourceFile {
            name: "bench.toml".into(),
            path: "bench.toml".into(),
            text: Arc::from(TEN_ROUTES),
        }],
        "localhost",
        &weir_storage::Catalog,
    )
    .unwrap_or_else(|d| panic!("bench rules: {}", d[0]))
}

/// A sink that only counts what reaches the `archive` endpoint.
struct Count(Arc<AtomicU64>);
struct CountSink(Arc<AtomicU64>);

impl SinkFactory for Count {
    fn kind(&self) -> &'static str {
        weir_core::sink::ANY_KIND
    }
    fn recovered_floor(&self) -> u64 {
        0
    }
    fn open(&self, _worker: usize, _workers: usize) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(CountSink(Arc::clone(&self.0))))
    }
}

impl Sink for CountSink {
    /// Counts events, not deliveries: every event goes to `archive` exactly once (route
    /// `r10` is `true`), and some also to `alerts`. Counting both ended a round while
    /// about a quarter of its events were still queued.
    fn write(&mut self, e: &Arc<EndpointSpec>, batch: Vec<Delivery>) -> Result<(), SinkError> {
        if &*e.name == "archive" {
            self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
    fn advance(&mut self, _f: u64) -> Result<(), SinkError> {
        Ok(())
    }
    fn close(&mut self, _end: u64) -> Result<(), SinkError> {
        Ok(())
    }
    fn floor(&self) -> u64 {
        0
    }
}

/// The engine of the engine benchmarks: `workers` workers, duplicate detection, the ten
/// routes, and a sink that counts the events reaching `archive` (every event, once).
/// Returns the engine, its feed (`capacity` events a queue) and that count.
pub fn ten_route_engine(workers: usize, capacity: usize) -> (Engine, MemoryFeed, Arc<AtomicU64>) {
    let delivered = Arc::new(AtomicU64::new(0));
    let feed = MemoryFeed::new(workers, capacity);
    let engine = Engine::start(
        EngineConfig {
            workers,
            tick: Duration::from_millis(50),
            dedupe: Some(DedupeConfig::default()),
            close_insights_at_end: false,
            cluster: None,
        },
        Arc::new(ArcSwap::from_pointee(ten_routes())),
        Arc::new(NoDevices),
        Arc::new(feed.clone()),
        vec![Arc::new(Count(Arc::clone(&delivered)))],
        weir_engine::Hooks::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (engine, feed, delivered)
}
