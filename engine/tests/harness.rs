use std::sync::Arc;

use bytes::Bytes;
use weir_core::{ColumnValue, DeviceId, Event, NoDevices};
use weir_rules::{SourceFile, load_sources};

/// The endpoint kinds these tests use, with no options to check: the engine never reads
/// an endpoint's options.
struct Kinds;

impl weir_core::EndpointCatalog for Kinds {
    fn kinds(&self) -> Vec<&'static str> {
        vec!["parquet"]
    }
    fn endpoint(
        &self,
        _kind: &str,
        _options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<weir_core::EndpointKind, weir_core::OptionError> {
        Ok(weir_core::EndpointKind::Parquet(Default::default()))
    }
}

fn rules(text: &str) -> weir_rules::RuleSet {
    load_sources(
        &[SourceFile {
            name: "t.toml".into(),
            path: "t.toml".into(),
            text: Arc::from(text),
        }],
        "hub",
        &Kinds,
    )
    .unwrap_or_else(|d| panic!("{}", d[0]))
}

fn event(offset: u64, device: &str, body: &str, props: &[(&str, &str)]) -> Event {
    let mut e = Event::telemetry(
        DeviceId::parse(device).expect("id"),
        1_700_000_000_000 + offset as i64,
        Bytes::from(body.to_owned()),
    );
    e.offset = offset;
    e.properties = props
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    e
}

#[test]
fn routes_enriches_and_falls_back_across_workers() {
    let set = rules(
        r#"
[[endpoint]]
name = "archive"
type = "parquet"
[[endpoint]]
name = "hot"
type = "parquet"
columns = { temp = "double:$body.temp", level = "string:level" }
[[route]]
name = "hot"
condition = "$body.temp > 30 AND $connectionDeviceId != 'lab-1'"
endpoints = ["hot"]
[fallback]
endpoints = ["archive"]
[[enrichment]]
key = "site"
value = "berlin"
endpoints = ["hot"]
"#,
    );
    let events = vec![
        event(1, "d1", r#"{"temp": 35}"#, &[("level", "hi")]),
        event(2, "lab-1", r#"{"temp": 35}"#, &[]),
        event(3, "d2", r#"{"temp": 20}"#, &[]),
        event(4, "d3", "not json", &[]),
    ];
    let out = weir_engine::harness::run(events, set, Arc::new(NoDevices), 2).expect("engine runs");
    let summary: Vec<(u64, Vec<String>, Vec<String>, bool)> = out
        .traces
        .iter()
        .map(|t| (t.offset, t.routes.clone(), t.endpoints.clone(), t.fallback))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, vec!["hot".into()], vec!["hot".into()], false),
            (1, vec![], vec!["archive".into()], true),
            (2, vec![], vec!["archive".into()], true),
            (3, vec![], vec!["archive".into()], true),
        ]
    );
    assert_eq!(out.deliveries.len(), 4);
    let hot = &out.deliveries[0];
    assert_eq!(&*hot.endpoint.name, "hot");
    assert_eq!(
        hot.delivery.enrichments,
        vec![("site".to_string(), "berlin".to_string())]
    );
    assert_eq!(
        hot.delivery.columns,
        vec![ColumnValue::Double(35.0), ColumnValue::String("hi".into())]
    );
}
