//! The upstream endpoint's side: each worker's link puts what its routes send into the
//! queue, durably, and enforces the byte budget, writing the drop ledger first.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::json;
use weir_core::{AuthMethod, DeviceId, Event, EventSource};
use weir_storage::outbox::{Dropped, NewItem};

use super::link::Uplink;
use super::message::Queued;
use crate::link::{Link, Outgoing};

/// Messages put in the queue in one transaction, at most.
const BATCH: usize = 1024;
/// A budget pass frees down to this share of the budget, so it does not run for every
/// message once the queue is full.
const LOW_WATER: f64 = 0.9;

/// A worker's link for endpoint `endpoint`.
pub fn open(
    rt: &tokio::runtime::Handle,
    uplink: Option<Arc<Uplink>>,
    endpoint: String,
) -> Link<Queued> {
    Link::spawn(rt, endpoint, move |mut rx, progress| async move {
        let Some(uplink) = uplink else {
            return Err(
                "this hub has no [upstream] section in weir.toml: an upstream endpoint forwards from an edge to its hub"
                    .to_owned(),
            );
        };
        while let Some(first) = rx.recv().await {
            let mut batch: Vec<Outgoing<Queued>> = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let n = batch.len();
            let u = Arc::clone(&uplink);
            tokio::task::spawn_blocking(move || {
                let items: Vec<NewItem<'_>> = batch
                    .iter()
                    .map(|o| NewItem {
                        offset: o.offset,
                        priority: o.message.priority,
                        route: &o.message.route,
                        event: &o.message.event,
                    })
                    .collect();
                u.outbox.append(&items)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            for _ in 0..n {
                progress.confirm_oldest();
            }
            uplink.ready.notify_one();
            if uplink.outbox.over_budget() {
                enforce(&uplink).await?;
            }
        }
        Ok(())
    })
}

/// Drops the oldest messages of the lowest priority until the queue is back under the
/// budget's low-water mark; the ledger rows are durable in the log before anything goes.
async fn enforce(uplink: &Arc<Uplink>) -> Result<(), String> {
    let _one = uplink.enforcing.lock().await;
    if !uplink.outbox.over_budget() {
        return Ok(());
    }
    let target = (uplink.config.budget_bytes as f64 * LOW_WATER) as u64;
    let u = Arc::clone(uplink);
    let (seqs, rows) = tokio::task::spawn_blocking(move || u.outbox.victims(target))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut by_device: HashMap<String, Vec<Event>> = HashMap::new();
    for d in &rows {
        if let Some(e) = ledger_event(d) {
            by_device.entry(d.device.clone()).or_default().push(e);
        }
    }
    for (device, events) in by_device {
        let Ok(id) = DeviceId::parse(&device) else {
            continue;
        };
        let durable = uplink
            .ingest
            .ingest(&id, events)
            .await
            .map_err(|e| format!("cannot write the drop ledger: {e}"))?;
        durable
            .await
            .map_err(|e| format!("cannot write the drop ledger: {e}"))?;
    }
    let u = Arc::clone(uplink);
    let removed = seqs.clone();
    tokio::task::spawn_blocking(move || u.outbox.discard(&removed))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    uplink
        .dropped
        .fetch_add(seqs.len() as u64, Ordering::Relaxed);
    for d in &rows {
        tracing::warn!(
            route = d.route,
            device = d.device,
            priority = d.priority,
            count = d.count,
            "upstream budget full: dropped the oldest messages of the lowest priority (recorded in the EdgeDrops ledger)"
        );
    }
    Ok(())
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A ledger row as an `EdgeDrops` event of the device whose messages were dropped.
fn ledger_event(d: &Dropped) -> Option<Event> {
    let body = json!({
        "route": d.route,
        "device": d.device,
        "priority": d.priority,
        "count": d.count,
        "firstOffset": d.first_offset,
        "lastOffset": d.last_offset,
        "firstEnqueuedTime": rfc3339(d.first_enqueued_ms),
        "lastEnqueuedTime": rfc3339(d.last_enqueued_ms),
        "reason": "budget",
    });
    let mut e = Event::telemetry(
        DeviceId::parse(&d.device).ok()?,
        0,
        Bytes::from(body.to_string()),
    );
    e.source = EventSource::EdgeDrops;
    e.auth_method = AuthMethod::Internal;
    e.system.content_type = Some("application/json".into());
    e.system.content_encoding = Some("utf-8".into());
    Some(e)
}
