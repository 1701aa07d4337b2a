//! Shared fixtures for the benchmarks: realistic events and a rule set with ten routes.

use std::sync::Arc;

use bytes::Bytes;
use weir_core::{DeviceId, Event};
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
