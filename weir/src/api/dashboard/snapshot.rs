//! One snapshot of the hub's counters for the live page: totals, which the page turns into
//! rates by differencing consecutive snapshots.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::super::ApiState;
use super::super::endpoints::{report_json, reports};

pub fn take(s: &ApiState) -> Value {
    let protocols = s.gateway_metrics.all();
    let load = |f: fn(&weir_gateways::ProtocolMetrics) -> u64| -> u64 {
        protocols.iter().map(|(_, m)| f(m)).sum()
    };
    let connections: serde_json::Map<String, Value> = protocols
        .iter()
        .map(|(p, m)| {
            (
                (*p).to_owned(),
                json!(m.connections_open.load(Ordering::Relaxed).max(0)),
            )
        })
        .collect();
    type Counter = fn(&weir_gateways::ProtocolMetrics) -> &std::sync::atomic::AtomicU64;
    let kinds: [(&str, Counter); 5] = [
        ("credentials", |m| &m.connects_refused),
        ("connection limit", |m| &m.rejected_limit),
        ("connect rate (CONNACK 3)", |m| &m.connects_throttled),
        ("pending limit", |m| &m.rejected_pending),
        ("protocol errors", |m| &m.protocol_errors),
    ];
    let mut refusals: serde_json::Map<String, Value> = kinds
        .into_iter()
        .map(|(name, counter)| {
            let n: u64 = protocols
                .iter()
                .map(|(_, m)| counter(m).load(Ordering::Relaxed))
                .sum();
            (name.to_owned(), json!(n))
        })
        .collect();
    for (i, why) in weir_core::Revocation::ALL.iter().enumerate() {
        let n: u64 = protocols
            .iter()
            .map(|(_, m)| m.revoked[i].load(Ordering::Relaxed))
            .sum();
        refusals.insert(format!("revoked: {}", why.as_str()), json!(n));
    }
    refusals.insert(
        "HTTP connection limit".into(),
        json!(s.http.refused.load(Ordering::Relaxed)),
    );
    let e = &s.engine_metrics;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let endpoints: Vec<Value> = reports(s).into_iter().map(report_json).collect();
    let archived_by_endpoint: serde_json::Map<String, Value> = s
        .archive_metrics
        .rows_by_endpoint
        .lock()
        .map(|m| m.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
        .unwrap_or_default();
    let routes: Vec<Value> = e
        .route_matches()
        .into_iter()
        .map(|(name, n)| json!({ "name": &*name, "matched": n }))
        .collect();
    let l = s.log_metrics.metrics();
    let (backlog, backlog_secs) = backlog(s);
    json!({
        "timeMs": weir_core::time::now_ms(),
        "hub": s.hostname,
        "cluster": {
            "processes": processes(s),
        },
        "connections": connections,
        "devicesConnected": s.hub.connections().connected(),
        "messagesIn": load(|m| m.messages_in.load(Ordering::Relaxed)),
        "bytesIn": load(|m| m.bytes_in.load(Ordering::Relaxed)),
        "engine": {
            "eventsIn": get(&e.events_in),
            "routed": get(&e.events_routed),
            "unrouted": get(&e.events_unrouted),
            "deliveries": get(&e.deliveries),
            "duplicates": get(&e.duplicates),
            "deadLetters": get(&e.dead_letters),
        },
        "archivedRows": get(&s.archive_metrics.rows_committed),
        "archivedByEndpoint": archived_by_endpoint,
        "routes": routes,
        "endpoints": endpoints,
        "log": {
            "endOffset": s.log_metrics.end(),
            "backlog": backlog,
            "backlogSecs": backlog_secs,
            "diskBytes": get(&l.disk_bytes),
            "budgetBytes": s.log_budget_bytes,
            "writeFailing": s.log_metrics.write_failing(),
        },
        "refusals": refusals,
        "devices": s.registry.len(),
        "upstream": s.upstream.as_ref().map(|u| {
            let st = u.state();
            json!({
                "connected": st.connected,
                "backlogMessages": st.backlog.messages,
                "dropped": st.dropped,
                "forwarded": st.forwarded,
            })
        }),
    })
}

/// What this process tells the others of its cluster for their live pages: totals, which
/// the page turns into rates.
pub fn report(s: &ApiState) -> Value {
    let (backlog, backlog_secs) = backlog(s);
    json!({
        "timeMs": weir_core::time::now_ms(),
        "devicesConnected": s.hub.connections().connected(),
        "messagesIn": s.gateway_metrics.all().iter()
            .map(|(_, m)| m.messages_in.load(Ordering::Relaxed)).sum::<u64>(),
        "archivedRows": s.archive_metrics.rows_committed.load(Ordering::Relaxed),
        "backlog": backlog,
        "backlogSecs": backlog_secs,
    })
}

/// The log not yet behind every endpoint: (records, seconds). Alone offsets count records;
/// in a cluster they follow a clock (`now_µs · processes + process`, decision 037), so the
/// backlog is seconds of log there, unknown (`None`) until every partition's endpoints
/// have committed once (the floor is 0 until then, not a time).
fn backlog(s: &ApiState) -> (Option<u64>, Option<f64>) {
    let committed = s.endpoint_health.floor();
    let behind = s
        .log_metrics
        .end()
        .saturating_sub(committed.max(s.log_metrics.first()));
    match s.cluster.1 {
        0 | 1 => (Some(behind), None),
        _ if committed == 0 => (None, None),
        n => (None, Some(behind as f64 / n as f64 / 1e6)),
    }
}

/// Every process of the cluster with the partitions its workers own (timely numbers
/// workers process by process; partition `p` belongs to worker `p % (processes · workers)`),
/// and its latest report: this process's own, the others' as last heard.
fn processes(s: &ApiState) -> Vec<Value> {
    let ((this, n), workers) = (s.cluster, s.workers);
    let mut heard = s.cluster_reports.peers();
    let now = weir_core::time::now_ms();
    (0..n.max(1))
        .map(|i| {
            let owned = weir_core::feed::partitions_of_process(i, n, workers).len();
            let (report, heard_ms_ago) = if i == this {
                (report(s), Some(0))
            } else {
                heard
                    .remove(&i)
                    .map_or((Value::Null, None), |h| (h.report, Some(now - h.at_ms)))
            };
            json!({
                "process": i, "workers": workers, "partitions": owned, "this": i == this,
                "report": report, "heardMsAgo": heard_ms_ago,
            })
        })
        .collect()
}
