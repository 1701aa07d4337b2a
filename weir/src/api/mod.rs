//! The service REST API: the IoT Hub registry subset, plus health and metrics.

mod auth;
mod certificates;
pub mod dashboard;
mod devices;
mod dps;
mod endpoints;
mod error;
mod messages;
mod metrics;
mod twins;
mod upstream;
pub mod ws;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use weir_engine::EngineMetrics;
use weir_gateways::GatewayMetrics;
use weir_storage::Registry;
use weir_storage::parquet::ArchiveMetrics;

pub use auth::ServiceKeys;

/// Everything the handlers need.
pub struct ApiState {
    pub hostname: String,
    pub keys: ServiceKeys,
    /// The provisioning service, when on.
    pub dps: Option<crate::dps::Dps>,
    pub registry: Arc<Registry>,
    pub hub: weir_hub::Hub,
    /// MQTT over WebSocket, served by the HTTPS listener.
    pub websocket: Arc<weir_gateways::mqtt::Mqtt>,
    pub engine_metrics: Arc<EngineMetrics>,
    pub gateway_metrics: Arc<GatewayMetrics>,
    pub archive_metrics: Arc<ArchiveMetrics>,
    pub log_metrics: weir_storage::log::LogMetricsHandle,
    pub reload: Arc<crate::reload::ReloadStatus>,
    /// The live rules, for the endpoints they declare.
    pub rules: weir_engine::RulesHandle,
    pub endpoint_health: Arc<weir_core::HealthBoard>,
    pub http: Arc<crate::http_server::HttpLimits>,
    /// The MQTT packet limit, which WebSocket frames carrying MQTT are held to as well.
    pub max_message_bytes: usize,
    /// Edge mode: the link to the hub.
    pub upstream: Option<Arc<weir_brokers::upstream::Uplink>>,
    /// The ingest log's disk budget.
    pub log_budget_bytes: u64,
    /// Engine worker threads.
    pub workers: usize,
    /// This process's index and the cluster's process count (0 and 1 alone).
    pub cluster: (usize, usize),
    /// The other processes' reports for the live page (empty alone).
    pub cluster_reports: Arc<dashboard::peers::ClusterReports>,
}

/// A JSON answer with its `ETag` header (IoT Hub quotes etags).
pub(crate) fn with_etag(status: StatusCode, body: serde_json::Value, etag: &str) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// The request's `If-Match` header, if any.
pub(crate) fn if_match(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
}

impl ApiState {
    /// The device, or the 404 IoT Hub answers for a missing one.
    pub fn device(&self, id: &str) -> Result<Arc<weir_core::DeviceRecord>, error::ApiError> {
        use weir_core::DeviceDirectory;
        self.registry
            .get(id)
            .ok_or_else(|| weir_storage::RegistryError::NotFound(id.to_owned()).into())
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    let service = Router::new()
        .route("/devices", get(devices::list))
        .route(
            "/devices/{id}",
            get(devices::show).put(devices::put).delete(devices::delete),
        )
        .route("/devices/{id}/messages/deviceBound", post(messages::send))
        .route("/devices/{id}/commands", delete(messages::purge))
        .route("/messages/serviceBound/feedback", get(messages::feedback))
        .route(
            "/messages/serviceBound/feedback/{token}",
            delete(messages::complete_feedback),
        )
        .route(
            "/messages/serviceBound/feedback/{token}/abandon",
            post(messages::abandon_feedback),
        )
        .route(
            "/twins/{id}",
            get(twins::get).patch(twins::patch).put(twins::replace),
        )
        .route("/twins/{id}/methods", post(twins::invoke))
        .route("/endpoints", get(endpoints::list))
        .route("/upstream", get(upstream::show))
        .route("/certificates", get(certificates::list))
        .route(
            "/certificates/{name}",
            get(certificates::show)
                .put(certificates::put)
                .delete(certificates::delete),
        )
        .route(
            "/certificates/{name}/generateVerificationCode",
            post(certificates::generate_code),
        )
        .route("/certificates/{name}/verify", post(certificates::verify))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require_service_token,
        ));
    let provisioning = Router::new()
        .route("/provisioning", get(dps::info))
        .route(
            "/enrollments/{id}",
            get(dps::get_enrollment)
                .put(dps::put_enrollment)
                .delete(dps::delete_enrollment),
        )
        .route(
            "/enrollmentGroups/{id}",
            get(dps::get_group)
                .put(dps::put_group)
                .delete(dps::delete_group),
        )
        .route(
            "/registrations/{id}",
            get(dps::get_registration).delete(dps::delete_registration),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require_provisioning_token,
        ));
    Router::new()
        // The live page checks the credential itself: without one it offers to sign in.
        .route("/", get(dashboard::page))
        .route("/dashboard/sign-in", post(dashboard::sign_in))
        .route("/dashboard/sign-out", post(dashboard::sign_out))
        .route("/dashboard/snapshot", get(dashboard::snapshot))
        .route("/dashboard/stream", get(dashboard::stream))
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics::render))
        // Devices authenticate inside MQTT (their SAS token is in CONNECT), not here.
        .route("/$iothub/websocket", get(ws::upgrade))
        .merge(service)
        .merge(provisioning)
        .fallback(error::not_found)
        .with_state(state)
}
