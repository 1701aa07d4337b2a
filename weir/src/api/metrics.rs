//! `/metrics` in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A per-endpoint series: name, type, help, and how to read it from a report.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&super::endpoints::EndpointReport) -> u64,
);

fn endpoint_metrics(out: &mut String, s: &ApiState) {
    let reports = super::endpoints::reports(s);
    let _ = writeln!(
        out,
        "# HELP weir_endpoint_state 1 for the state each endpoint is in (healthy, degraded, unhealthy).\n# TYPE weir_endpoint_state gauge"
    );
    for r in &reports {
        for st in weir_core::EndpointState::ALL {
            let _ = writeln!(
                out,
                "weir_endpoint_state{{endpoint=\"{}\",state=\"{}\"}} {}",
                r.name,
                st.as_str(),
                u8::from(r.health.state == st)
            );
        }
    }
    let series: [Series; 4] = [
        (
            "weir_endpoint_committed_offset",
            "gauge",
            "Every delivery below this log offset is durably written to the endpoint.",
            |r| r.health.committed,
        ),
        (
            "weir_endpoint_lag",
            "gauge",
            "Log records at or above the endpoint's commit point.",
            |r| r.lag,
        ),
        (
            "weir_endpoint_failures_total",
            "counter",
            "Failed attempts to write to the endpoint.",
            |r| r.health.failures,
        ),
        (
            "weir_endpoint_dead_lettered_total",
            "counter",
            "Deliveries the endpoint could not make within max_retry_secs, handed to its dead-letter endpoint.",
            |r| r.health.dead_lettered,
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in &reports {
            let _ = writeln!(out, "{name}{{endpoint=\"{}\"}} {}", r.name, value(r));
        }
    }
}

/// A per-protocol counter: name, help, and how to read it.
type ProtocolSeries = (
    &'static str,
    &'static str,
    fn(&weir_gateways::ProtocolMetrics) -> u64,
);

fn gateway_metrics(out: &mut String, s: &ApiState) {
    let protocols = s.gateway_metrics.all();
    let _ = writeln!(
        out,
        "# HELP weir_gateway_connections Open device connections, per protocol.\n# TYPE weir_gateway_connections gauge"
    );
    for (p, m) in &protocols {
        let _ = writeln!(
            out,
            "weir_gateway_connections{{protocol=\"{p}\"}} {}",
            m.connections_open.load(Ordering::Relaxed)
        );
    }
    let counters: [ProtocolSeries; 9] = [
        (
            "weir_gateway_connections_total",
            "Connections accepted.",
            |m| m.connections_total.load(Ordering::Relaxed),
        ),
        (
            "weir_gateway_connects_refused_total",
            "Connections refused before authenticating (bad credentials, unknown or disabled devices, malformed or no CONNECT).",
            |m| m.connects_refused.load(Ordering::Relaxed),
        ),
        (
            "weir_gateway_connections_over_limit_total",
            "Connections closed because mqtt.max_connections was reached.",
            |m| m.rejected_limit.load(Ordering::Relaxed),
        ),
        (
            "weir_gateway_connections_over_pending_limit_total",
            "Connections closed because mqtt.max_pending_connections were still authenticating.",
            |m| m.rejected_pending.load(Ordering::Relaxed),
        ),
        (
            "weir_gateway_connects_throttled_total",
            "CONNECTs answered with CONNACK 3 because mqtt.connect_rate or mqtt.connect_rate_per_address was reached.",
            |m| m.connects_throttled.load(Ordering::Relaxed),
        ),
        (
            "weir_gateway_messages_total",
            "Telemetry messages accepted.",
            |m| m.messages_in.load(Ordering::Relaxed),
        ),
        (
            "weir_gateway_bytes_total",
            "Bytes read from device connections.",
            |m| m.bytes_in.load(Ordering::Relaxed),
        ),
        (
            "weir_gateway_protocol_errors_total",
            "Connections closed for protocol violations.",
            |m| m.protocol_errors.load(Ordering::Relaxed),
        ),
        (
            "weir_gateway_revoked_total",
            "Connections the hub closed because the device was deleted or disabled, its key replaced or its token expired (all reasons; by reason in weir_connections_revoked_total).",
            |m| m.revoked.iter().map(|c| c.load(Ordering::Relaxed)).sum(),
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (p, m) in &protocols {
            let _ = writeln!(out, "{name}{{protocol=\"{p}\"}} {}", value(m));
        }
    }
    let _ = writeln!(
        out,
        "# HELP weir_connections_revoked_total Connections the hub closed, by reason and protocol.\n# TYPE weir_connections_revoked_total counter"
    );
    for (p, m) in &protocols {
        for (i, why) in weir_core::Revocation::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "weir_connections_revoked_total{{protocol=\"{p}\",reason=\"{}\"}} {}",
                why.as_str(),
                m.revoked[i].load(Ordering::Relaxed)
            );
        }
    }
    gauge(
        out,
        "weir_devices_connected",
        "Devices with a live connection, over all protocols.",
        s.hub.connections().connected() as i64,
    );
    gauge(
        out,
        "weir_devices_registered",
        "Devices in this process's registry (in a cluster, every process's).",
        s.hub.registry().len() as i64,
    );
}

pub async fn render(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    let mut out = String::new();
    gateway_metrics(&mut out, &s);
    gauge(
        &mut out,
        "weir_http_connections",
        "Open HTTP connections (WebSocket ones until upgraded).",
        s.http.open() as i64,
    );
    counter(
        &mut out,
        "weir_http_connections_over_limit_total",
        "HTTP connections closed because http.max_connections was reached.",
        &s.http.refused,
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
    let l = s.log_metrics.metrics();
    counter(
        &mut out,
        "weir_log_appends_total",
        "Append requests made durable.",
        &l.appends,
    );
    counter(
        &mut out,
        "weir_log_records_total",
        "Records appended to the ingest log.",
        &l.records,
    );
    counter(
        &mut out,
        "weir_log_bytes_total",
        "Bytes appended to the ingest log.",
        &l.bytes_written,
    );
    counter(
        &mut out,
        "weir_log_syncs_total",
        "fdatasync calls (one per group commit).",
        &l.syncs,
    );
    counter(
        &mut out,
        "weir_log_sync_micros_total",
        "Time spent in fdatasync, microseconds.",
        &l.sync_micros,
    );
    counter(
        &mut out,
        "weir_log_write_errors_total",
        "Failed appends (disk full, I/O errors); none acknowledged.",
        &l.write_errors,
    );
    counter(
        &mut out,
        "weir_log_budget_holds_total",
        "Times publishes were held because log.budget_mb was reached.",
        &l.held,
    );
    counter(
        &mut out,
        "weir_log_segments_deleted_total",
        "Committed segments deleted.",
        &l.segments_deleted,
    );
    counter(
        &mut out,
        "weir_log_corrupt_records_total",
        "Records skipped by readers because they failed their checksum.",
        &l.corrupt_records,
    );
    gauge(
        &mut out,
        "weir_log_disk_bytes",
        "Size of the ingest log on disk.",
        l.disk_bytes.load(Ordering::Relaxed) as i64,
    );
    gauge(
        &mut out,
        "weir_log_write_failing",
        "1 while appends to the ingest log fail (full disk, I/O errors) and publishes are refused.",
        i64::from(s.log_metrics.write_failing()),
    );
    gauge(
        &mut out,
        "weir_log_segments",
        "Segment files.",
        s.log_metrics.segments() as i64,
    );
    gauge(
        &mut out,
        "weir_log_end_offset",
        "Offset after the last durable record.",
        s.log_metrics.end() as i64,
    );
    gauge(
        &mut out,
        "weir_log_committed_offset",
        "Every sink has committed everything below this offset.",
        s.log_metrics.floor() as i64,
    );
    counter(
        &mut out,
        "weir_archive_replay_skipped_total",
        "Deliveries skipped after a restart because they were already archived.",
        &a.rows_skipped_replay,
    );
    counter(
        &mut out,
        "weir_engine_duplicates_total",
        "Messages dropped as repeats ($.mid or MQTT retransmission) within the dedupe window.",
        &e.duplicates,
    );
    counter(
        &mut out,
        "weir_engine_replayed_total",
        "Deliveries replayed from the log for endpoints recovering from a failure.",
        &e.replayed,
    );
    counter(
        &mut out,
        "weir_engine_dead_lettered_total",
        "Deliveries handed to dead-letter endpoints after max_retry_secs.",
        &e.dead_lettered,
    );
    counter(
        &mut out,
        "weir_insight_samples_total",
        "Samples insights took (an event counts once for each insight it is for).",
        &e.insight_samples,
    );
    counter(
        &mut out,
        "weir_insight_results_total",
        "Insight results (each revision of each window and group) written to the log.",
        &e.insight_results,
    );
    counter(
        &mut out,
        "weir_insight_no_time_total",
        "Events an insight skipped because its time was not ISO 8601 or epoch milliseconds.",
        &e.insight_no_time,
    );
    counter(
        &mut out,
        "weir_insight_too_late_total",
        "Events later than their window's retention (counted, not merged).",
        &e.insight_too_late,
    );
    counter(
        &mut out,
        "weir_insight_late_total",
        "Late events sent to an insight's `late` endpoint instead of correcting their window.",
        &e.insight_late,
    );
    endpoint_metrics(&mut out, &s);
    let _ = writeln!(
        out,
        "# HELP weir_route_matches_total Events each route took ($fallback: device messages no route took, sent to the fallback endpoints).\n# TYPE weir_route_matches_total counter"
    );
    for (route, n) in e.route_matches() {
        let _ = writeln!(out, "weir_route_matches_total{{route=\"{route}\"}} {n}");
    }
    gauge(
        &mut out,
        "weir_registry_devices",
        "Registered devices.",
        s.registry.len() as i64,
    );
    gauge(
        &mut out,
        "weir_registry_quarantined",
        "Device records that could not be read at start-up and were set aside.",
        s.registry.quarantined().len() as i64,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
