//! `GET /endpoints`: every endpoint the rules declare (and any that still has something to
//! catch up on), with its health, commit point and lag, as an operator needs them.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use weir_core::{EndpointHealth, EndpointState};

use super::ApiState;

/// One endpoint's summary; `kind` is `None` for an endpoint the rules no longer declare.
pub struct EndpointReport {
    pub name: String,
    pub kind: Option<&'static str>,
    pub health: EndpointHealth,
    /// Log records at or above the commit point: not yet behind this endpoint.
    pub lag: u64,
}

pub fn reports(s: &ApiState) -> Vec<EndpointReport> {
    let rules = s.rules.load();
    let mut board = s.endpoint_health.endpoints();
    let end = s.log_metrics.end();
    let floor = s.endpoint_health.floor();
    let declared: Vec<(String, Option<&'static str>, EndpointHealth)> = rules
        .endpoints
        .iter()
        .map(|e| {
            let health = board.remove(&*e.name).unwrap_or(EndpointHealth {
                state: EndpointState::Healthy,
                committed: floor,
                last_error: None,
                last_error_ms: None,
                failures: 0,
            });
            (e.name.to_string(), Some(e.kind.sink()), health)
        })
        .collect();
    let mut out: Vec<EndpointReport> = declared
        .into_iter()
        .chain(
            board
                .into_iter()
                .filter(|(_, h)| h.state != EndpointState::Healthy)
                .map(|(n, h)| (n, None, h)),
        )
        .map(|(name, kind, health)| EndpointReport {
            lag: end.saturating_sub(health.committed),
            name,
            kind,
            health,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub async fn list(State(s): State<Arc<ApiState>>) -> Json<Value> {
    let list: Vec<Value> = reports(&s)
        .into_iter()
        .map(|r| {
            json!({
                "name": r.name,
                "type": r.kind,
                "state": r.health.state.as_str(),
                "lastError": r.health.last_error,
                "lastErrorTime": r.health.last_error_ms.map(weir_rules::view::rfc3339_ms),
                "failures": r.health.failures,
                "committedOffset": r.health.committed,
                "lag": r.lag,
            })
        })
        .collect();
    Json(Value::Array(list))
}
