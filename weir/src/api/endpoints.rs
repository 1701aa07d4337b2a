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
    /// The endpoint that takes what this one cannot deliver in time.
    pub dead_letter: Option<String>,
    /// Log records at or above the commit point: not yet behind this endpoint.
    pub lag: u64,
}

pub fn reports(s: &ApiState) -> Vec<EndpointReport> {
    let rules = s.rules.load();
    let mut board = s.endpoint_health.endpoints();
    let end = s.log_metrics.end();
    let floor = s.endpoint_health.floor();
    type Declared = (String, Option<&'static str>, Option<String>, EndpointHealth);
    let declared: Vec<Declared> = rules
        .endpoints
        .iter()
        .map(|e| {
            let health = board.remove(&*e.name).unwrap_or(EndpointHealth {
                state: EndpointState::Healthy,
                committed: floor,
                last_error: None,
                last_error_ms: None,
                failures: 0,
                dead_lettered: 0,
            });
            let dead_letter = e.dead_letter.as_ref().map(|d| d.endpoint.to_string());
            (e.name.to_string(), Some(e.kind.sink()), dead_letter, health)
        })
        .collect();
    let mut out: Vec<EndpointReport> = declared
        .into_iter()
        .chain(
            board
                .into_iter()
                .filter(|(_, h)| h.state != EndpointState::Healthy)
                .map(|(n, h)| (n, None, None, h)),
        )
        .map(|(name, kind, dead_letter, health)| EndpointReport {
            lag: end.saturating_sub(health.committed),
            name,
            kind,
            dead_letter,
            health,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// An endpoint's report as `GET /endpoints` and the live page show it.
pub fn report_json(r: EndpointReport) -> Value {
    json!({
        "name": r.name,
        "type": r.kind,
        "state": r.health.state.as_str(),
        "lastError": r.health.last_error,
        "lastErrorTime": r.health.last_error_ms.map(weir_rules::view::rfc3339_ms),
        "failures": r.health.failures,
        "deadLettered": r.health.dead_lettered,
        "deadLetter": r.dead_letter,
        "committedOffset": r.health.committed,
        "lag": r.lag,
    })
}

pub async fn list(State(s): State<Arc<ApiState>>) -> Json<Value> {
    Json(Value::Array(
        reports(&s).into_iter().map(report_json).collect(),
    ))
}
