//! The service REST API: the IoT Hub registry subset, plus health and metrics.

mod auth;
mod devices;
mod error;
mod metrics;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use weir_engine::EngineMetrics;
use weir_gateways::{GatewayMetrics, MqttGateway};
use weir_storage::Registry;
use weir_storage::parquet::ArchiveMetrics;

pub use auth::ServiceKeys;

/// Everything the handlers need.
pub struct ApiState {
    pub hostname: String,
    pub keys: ServiceKeys,
    pub registry: Arc<Registry>,
    pub gateway: MqttGateway,
    pub engine_metrics: Arc<EngineMetrics>,
    pub gateway_metrics: Arc<GatewayMetrics>,
    pub archive_metrics: Arc<ArchiveMetrics>,
    pub log_metrics: weir_storage::log::LogMetricsHandle,
    pub reload: Arc<crate::reload::ReloadStatus>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    let service = Router::new()
        .route("/devices", get(devices::list))
        .route(
            "/devices/{id}",
            get(devices::show).put(devices::put).delete(devices::delete),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require_service_token,
        ));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics::render))
        .merge(service)
        .fallback(error::not_found)
        .with_state(state)
}
