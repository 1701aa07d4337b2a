//! `GET /upstream`: an edge's link to its hub and its store-and-forward queue.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;

pub async fn show(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let Some(u) = &s.upstream else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "NotAnEdge",
            "this hub has no [upstream] section: it is not an edge",
        ));
    };
    let st = u.state();
    let now = weir_core::time::now_ms();
    Ok(Json(json!({
        "hub": u.config.hub,
        "deviceId": u.config.device_id,
        "connected": st.connected,
        "lastError": st.last_error,
        "connects": st.connects,
        "forwarded": st.forwarded,
        "backlogMessages": st.backlog.messages,
        "backlogBytes": st.backlog.bytes,
        "budgetBytes": st.budget_bytes,
        "oldestUnforwardedSecs": st.oldest_ms.map(|t| (now - t).max(0) as f64 / 1000.0),
        "dropped": st.dropped,
    })))
}
