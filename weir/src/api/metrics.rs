//! `/metrics` in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ApiState;

fn counter(out: &mut String, name: &str, help: &str, v: &AtomicU64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
        v.load(Ordering::Relaxed)
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn gauge_atomic(out: &mut String, name: &str, help: &str, v: &AtomicI64) {
    gauge(out, name, help, v.load(Ordering::Relaxed));
}

pub async fn render(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    let mut out = String::new();
    let g = &s.gateway_metrics;
    gauge_atomic(
        &mut out,
        "weir_mqtt_connections",
        "Open MQTT connections.",
        &g.connections_open,
    );
    counter(
        &mut out,
        "weir_mqtt_connections_total",
        "MQTT connections accepted.",
        &g.connections_total,
    );
    counter(
        &mut out,
        "weir_mqtt_connects_refused_total",
        "CONNECTs refused (bad credentials, unknown or disabled devices, malformed).",
        &g.connects_refused,
    );
    counter(
        &mut out,
        "weir_mqtt_connections_over_limit_total",
        "Connections closed because mqtt.max_connections was reached.",
        &g.connections_rejected_limit,
    );
    counter(
        &mut out,
        "weir_mqtt_messages_total",
        "Telemetry messages accepted.",
        &g.messages_in,
    );
    counter(
        &mut out,
        "weir_mqtt_bytes_total",
        "Bytes read from MQTT connections.",
        &g.bytes_in,
    );
    counter(
        &mut out,
        "weir_mqtt_protocol_errors_total",
        "Connections closed for protocol violations.",
        &g.protocol_errors,
    );
    let e = &s.engine_metrics;
    counter(
        &mut out,
        "weir_engine_events_total",
        "Events taken in by the engine.",
        &e.events_in,
    );
    counter(
        &mut out,
        "weir_engine_routed_total",
        "Events that reached at least one endpoint.",
        &e.events_routed,
    );
    counter(
        &mut out,
        "weir_engine_unrouted_total",
        "Device messages no route or fallback took.",
        &e.events_unrouted,
    );
    counter(
        &mut out,
        "weir_engine_deliveries_total",
        "Event deliveries to endpoints.",
        &e.deliveries,
    );
    counter(
        &mut out,
        "weir_engine_dead_letters_total",
        "Rule evaluation problems (e.g. a malformed JSON body a route needed).",
        &e.dead_letters,
    );
    counter(
        &mut out,
        "weir_engine_sink_errors_total",
        "Sink write or finalise failures.",
        &e.sink_errors,
    );
    let a = &s.archive_metrics;
    counter(
        &mut out,
        "weir_archive_rows_total",
        "Rows in finalised Parquet files.",
        &a.rows_committed,
    );
    counter(
        &mut out,
        "weir_archive_files_total",
        "Finalised Parquet files.",
        &a.files_committed,
    );
    let _ = writeln!(
        out,
        "# HELP weir_archive_endpoint_rows_total Rows in finalised Parquet files, per endpoint.\n# TYPE weir_archive_endpoint_rows_total counter"
    );
    if let Ok(by) = a.rows_by_endpoint.lock() {
        for (endpoint, rows) in by.iter() {
            let _ = writeln!(
                out,
                "weir_archive_endpoint_rows_total{{endpoint=\"{endpoint}\"}} {rows}"
            );
        }
    }
    counter(
        &mut out,
        "weir_rules_reloads_total",
        "Successful rule reloads.",
        &s.reload.reloads,
    );
    counter(
        &mut out,
        "weir_rules_reload_failures_total",
        "Rule reloads refused because of errors.",
        &s.reload.failures,
    );
    gauge(
        &mut out,
        "weir_registry_devices",
        "Registered devices.",
        s.registry.len() as i64,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
