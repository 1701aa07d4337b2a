//! `[[insight]]` tables compile to what the engine runs.

use std::sync::Arc;
use std::time::Duration;

use weir_rules::insight::{AggFn, InsightKind, Window};
use weir_rules::{SourceFile, load_sources};

#[test]
fn the_examples_of_each_kind_compile() {
    let text = r#"
[[endpoint]]
name = "late_rows"
type = "parquet"

[[insight]]
name = "temp_1m"
source = "DeviceMessages"
condition = "IS_NUMBER($body.temp)"
time = "$body.ts"
group_by = { device = "$connectionDeviceId", site = "$twin.tags.site" }
window = "hopping 5m every 1m"
allowed_lateness = "30s"
aggregates = { n = "count()", avg_temp = "avg($body.temp)", p95 = "percentile($body.temp, 0.95)" }
late = "late_rows"

[[insight]]
name = "spike"
kind = "anomaly"
value = "$body.temp"
method = "zscore"
threshold = 4
baseline = "1h"
group_by = { device = "$connectionDeviceId" }

[[insight]]
name = "quiet"
kind = "silence"
after = "5m"
group_by = { device = "$connectionDeviceId" }
"#;
    let files = [SourceFile {
        name: "insights.toml".into(),
        path: "insights.toml".into(),
        text: Arc::from(text),
    }];
    let set = load_sources(&files, "hub", &weir_storage::Catalog).expect("compiles");
    let names: Vec<&str> = set.insights.iter().map(|i| &*i.name).collect();
    assert_eq!(names, ["temp_1m", "spike", "quiet"]);
    let t = &set.insights[0];
    assert!(t.time.is_some());
    assert_eq!(t.late, Some(0));
    let keys: Vec<&str> = t.group_by.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["device", "site"]);
    let InsightKind::Window {
        window,
        lateness,
        aggregates,
    } = &t.kind
    else {
        panic!("a window insight");
    };
    assert_eq!(
        *window,
        Window::Hopping {
            size: Duration::from_secs(300),
            hop: Duration::from_secs(60)
        }
    );
    assert_eq!(*lateness, Duration::from_secs(30));
    let aggs: Vec<(&str, AggFn, f64, bool)> = aggregates
        .iter()
        .map(|a| (a.name.as_str(), a.func, a.fraction, a.arg.is_some()))
        .collect();
    assert_eq!(
        aggs,
        [
            ("n", AggFn::Count, 0.0, false),
            ("avg_temp", AggFn::Avg, 0.0, true),
            ("p95", AggFn::Percentile, 0.95, true)
        ]
    );
    assert!(matches!(
        set.insights[1].kind,
        InsightKind::Anomaly { threshold, baseline, .. } if threshold == 4.0 && baseline == Duration::from_secs(3600)
    ));
    assert!(matches!(
        set.insights[2].kind,
        InsightKind::Silence { after } if after == Duration::from_secs(300)
    ));
}

#[test]
fn an_event_gives_its_group_time_and_values() {
    use bytes::Bytes;
    use weir_core::{DeviceId, Event, NoDevices};
    use weir_rules::EventView;
    use weir_rules::insight::Sample;

    let text = r#"
[[insight]]
name = "t"
condition = "$body.temp > -100"
time = "$body.ts"
group_by = { device = "$connectionDeviceId", line = "$body.line" }
window = "tumbling 1m"
aggregates = { n = "count()", avg = "avg($body.temp)", top = "max($body.hum)" }
"#;
    let files = [SourceFile {
        name: "i.toml".into(),
        path: "i.toml".into(),
        text: Arc::from(text),
    }];
    let set = load_sources(&files, "hub", &weir_storage::Catalog).expect("compiles");
    let insight = &set.insights[0];
    let sample = |body: &'static str| {
        let e = Event::telemetry(
            DeviceId::parse("m1").expect("id"),
            5,
            Bytes::from_static(body.as_bytes()),
        );
        let mut e = e;
        e.system.content_type = Some("application/json".into());
        insight.sample(&EventView::new(&e, &NoDevices), e.enqueued_ms)
    };
    assert_eq!(
        sample(r#"{"temp": 21.5, "ts": "2026-11-30T01:02:03.250Z", "line": "b", "hum": "n/a"}"#),
        Sample::Take {
            group: r#"["m1","b"]"#.into(),
            time_ms: 1_796_000_523_250,
            values: vec![None, Some(21.5), None],
        }
    );
    assert!(matches!(
        sample(r#"{"temp": 1, "ts": 1700000000000}"#),
        Sample::Take { time_ms: 1_700_000_000_000, ref group, .. } if group == r#"["m1",null]"#
    ));
    assert_eq!(sample(r#"{"temp": 1, "ts": "yesterday"}"#), Sample::NoTime);
    assert_eq!(sample(r#"{"temp": -200, "ts": 1}"#), Sample::Skip);
}
