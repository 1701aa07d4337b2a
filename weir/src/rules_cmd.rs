//! `weir rules check` and `weir rules test`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use weir_core::{ColumnValue, DeviceId, DeviceRecord, Event, EventSource, SystemProperties};

fn render(diags: &[weir_rules::Diagnostic]) {
    let color = std::io::stderr().is_terminal();
    for d in diags {
        eprintln!("{}", d.render(color));
    }
    eprintln!("{} error(s)", diags.len());
}

pub fn check(dir: &Path, hostname: &str) -> ExitCode {
    match weir_rules::load_dir(dir, hostname, crate::sinks::catalog()) {
        Ok(set) => {
            println!("ok: {}", crate::reload::describe(&set));
            ExitCode::SUCCESS
        }
        Err(diags) => {
            render(&diags);
            ExitCode::from(1)
        }
    }
}

/// One recorded event, as a line of the `--events` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Recorded {
    device_id: String,
    #[serde(default)]
    source: Option<String>,
    /// A JSON value is stored as its JSON text; a string as the raw body.
    #[serde(default)]
    body: Value,
    #[serde(default)]
    properties: HashMap<String, String>,
    #[serde(default)]
    system: RecordedSystem,
    /// RFC 3339 or milliseconds since the epoch; default 2026-01-01T00:00:00Z plus the line number.
    #[serde(default)]
    enqueued_time: Option<Value>,
    /// The device's twin tags, for rules that read `$twin.tags`.
    #[serde(default)]
    tags: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RecordedSystem {
    message_id: Option<String>,
    correlation_id: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    user_id: Option<String>,
}

fn to_event(line: usize, r: Recorded) -> anyhow::Result<(Event, Option<Value>)> {
    let device_id = DeviceId::parse(&r.device_id)?;
    let enqueued_ms = match &r.enqueued_time {
        None => 1_767_225_600_000 + line as i64,
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| anyhow!("enqueuedTime must be an integer"))?,
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)?.timestamp_millis(),
        Some(_) => bail!("enqueuedTime must be RFC 3339 or milliseconds"),
    };
    let body = match r.body {
        Value::Null => Bytes::new(),
        Value::String(s) => Bytes::from(s),
        other => Bytes::from(other.to_string()),
    };
    let source = match &r.source {
        None => EventSource::DeviceMessages,
        Some(s) => EventSource::parse(s).ok_or_else(|| anyhow!("unknown source {s:?}"))?,
    };
    let mut properties: Vec<(String, String)> = r.properties.into_iter().collect();
    properties.sort();
    let mut e = Event::telemetry(device_id, enqueued_ms, body);
    e.source = source;
    e.properties = properties;
    e.system = SystemProperties {
        message_id: r.system.message_id.map(String::into_boxed_str),
        correlation_id: r.system.correlation_id.map(String::into_boxed_str),
        content_type: r.system.content_type.map(String::into_boxed_str),
        content_encoding: r.system.content_encoding.map(String::into_boxed_str),
        user_id: r.system.user_id.map(String::into_boxed_str),
        ..SystemProperties::default()
    };
    Ok((e, r.tags))
}

fn column_json(v: &ColumnValue) -> Value {
    match v {
        ColumnValue::Null => Value::Null,
        ColumnValue::Double(x) => json!(x),
        ColumnValue::Int64(x) => json!(x),
        ColumnValue::String(x) => json!(x),
        ColumnValue::Bool(x) => json!(x),
        ColumnValue::Timestamp(x) => json!(weir_rules::view::rfc3339_ms(*x)),
    }
}

pub fn test(dir: &Path, events: &Path, hostname: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let set = match weir_rules::load_dir(dir, hostname, crate::sinks::catalog()) {
        Ok(s) => s,
        Err(diags) => {
            render(&diags);
            return Ok(ExitCode::from(1));
        }
    };
    let text = std::fs::read_to_string(events)
        .with_context(|| format!("cannot read {}", events.display()))?;
    let mut list = Vec::new();
    // The engine numbers events 0, 1, 2, ...; this maps them back to lines of the file.
    let mut lines = Vec::new();
    let mut devices: HashMap<String, Arc<DeviceRecord>> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let rec: Recorded = serde_json::from_str(line)
            .map_err(|e| anyhow!("{}:{n}:{}: {e}", events.display(), e.column()))?;
        let (event, tags) =
            to_event(n, rec).map_err(|e| anyhow!("{}:{n}: {e}", events.display()))?;
        if let Some(tags) = tags {
            devices.insert(
                event.device_id.to_string(),
                Arc::new(DeviceRecord::with_tags(event.device_id.as_str(), tags)),
            );
        }
        list.push(event);
        lines.push(n);
    }
    let count = list.len();
    let out = weir_engine::harness::run(list, set, Arc::new(devices), 1)?;
    for t in &out.traces {
        let deliveries: Vec<_> = out
            .deliveries
            .iter()
            .filter(|d| d.delivery.event.offset == t.offset)
            .collect();
        if as_json {
            let eps: Vec<Value> = deliveries
                .iter()
                .map(|d| {
                    let cols: serde_json::Map<String, Value> = d
                        .endpoint
                        .columns
                        .iter()
                        .zip(&d.delivery.columns)
                        .map(|(c, v)| (c.name.clone(), column_json(v)))
                        .collect();
                    json!({"endpoint": &*d.endpoint.name, "columns": cols, "enrichments": d.delivery.enrichments.iter().cloned().collect::<HashMap<_, _>>()})
                })
                .collect();
            println!(
                "{}",
                json!({"line": lines.get(t.offset as usize), "routes": t.routes, "endpoints": t.endpoints, "fallback": t.fallback, "deliveries": eps})
            );
            continue;
        }
        let device = deliveries
            .first()
            .map(|d| d.delivery.event.device_id.to_string())
            .unwrap_or_default();
        println!(
            "line {}{}:",
            lines.get(t.offset as usize).copied().unwrap_or_default(),
            if device.is_empty() {
                String::new()
            } else {
                format!(" ({device})")
            }
        );
        println!(
            "  routes:    {}",
            if t.routes.is_empty() {
                "(none)".into()
            } else {
                t.routes.join(", ")
            }
        );
        let eps = if t.endpoints.is_empty() {
            "(dropped: no route and no fallback)".into()
        } else {
            t.endpoints.join(", ")
        };
        println!(
            "  endpoints: {eps}{}",
            if t.fallback { " (fallback)" } else { "" }
        );
        for d in deliveries {
            let cols: Vec<String> = d
                .endpoint
                .columns
                .iter()
                .zip(&d.delivery.columns)
                .map(|(c, v)| format!("{}={}", c.name, column_json(v)))
                .collect();
            let enr: Vec<String> = d
                .delivery
                .enrichments
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !cols.is_empty() || !enr.is_empty() {
                println!(
                    "    {}: columns [{}] enrichments [{}]",
                    d.endpoint.name,
                    cols.join(", "),
                    enr.join(", ")
                );
            }
        }
    }
    print_insights(&out.insights, as_json);
    if !as_json {
        eprintln!("{count} event(s) run through the engine");
    }
    Ok(ExitCode::SUCCESS)
}

/// What the insights computed over the events, every window closed at their end: one line
/// per result (or late event handed to a `late` endpoint).
fn print_insights(written: &[Event], as_json: bool) {
    for e in written {
        let body: Value = serde_json::from_slice(&e.body).unwrap_or(Value::Null);
        let late_to = e.dead_letter.as_deref();
        if as_json {
            let line = match late_to {
                Some(to) => {
                    json!({"late": body, "insight": e.property(weir_engine::deadletter::ROUTE), "endpoint": to})
                }
                None => json!({"insight": e.property("insight"), "result": body}),
            };
            println!("{line}");
            continue;
        }
        match late_to {
            Some(to) => println!(
                "insight {}: late event from {} to endpoint {to}: {body}",
                e.property(weir_engine::deadletter::ROUTE)
                    .unwrap_or_default(),
                e.device_id
            ),
            None => println!(
                "insight {}: {body}",
                e.property("insight").unwrap_or_default()
            ),
        }
    }
}
