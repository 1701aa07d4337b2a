//! What every gateway gets from the hub, and the seam a gateway implements.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use weir_core::{ConnectionRegistry, DeviceDirectory, DeviceServices, Ingest, Provisioning};

use crate::metrics::{GatewayMetrics, ProtocolMetrics};
use crate::ratelog::LogLimiter;
use crate::throttle::ConnectThrottle;

/// Connection limits shared by every gateway: what unauthenticated clients can make the
/// hub hold is bounded, and a clean stop waits for connections to end.
pub struct Admission {
    max_connections: usize,
    max_pending: usize,
    connections: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    /// Connect rate limits, which sessions apply when a CONNECT arrives.
    pub throttle: Arc<ConnectThrottle>,
    /// Refusals are logged at a bounded rate.
    pub refusals: LogLimiter,
}

/// A connection's slots: one for as long as it lives, one until it has authenticated.
pub struct Admitted {
    pub connection: OwnedSemaphorePermit,
    pub pending: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(max_connections: usize, max_pending: usize) -> Admission {
        Admission {
            max_connections,
            max_pending,
            connections: Arc::new(Semaphore::new(max_connections)),
            pending: Arc::new(Semaphore::new(max_pending)),
            throttle: Arc::new(ConnectThrottle::new(0, 0)),
            refusals: LogLimiter::default(),
        }
    }

    /// With connect rate limits.
    pub fn with_throttle(mut self, throttle: ConnectThrottle) -> Admission {
        self.throttle = Arc::new(throttle);
        self
    }

    /// Both slots, or `None` (counted in `metrics` and logged at a bounded rate) when
    /// either limit is reached.
    pub fn admit(&self, peer: SocketAddr, metrics: &ProtocolMetrics) -> Option<Admitted> {
        let Ok(connection) = Arc::clone(&self.connections).try_acquire_owned() else {
            ProtocolMetrics::inc(&metrics.rejected_limit, 1);
            if let Some(suppressed) = self.refusals.allow() {
                tracing::warn!(%peer, limit = self.max_connections, suppressed, "connection limit reached (mqtt.max_connections); closing new connection");
            }
            return None;
        };
        let Ok(pending) = Arc::clone(&self.pending).try_acquire_owned() else {
            ProtocolMetrics::inc(&metrics.rejected_pending, 1);
            if let Some(suppressed) = self.refusals.allow() {
                tracing::warn!(%peer, limit = self.max_pending, suppressed, "too many connections are still authenticating (mqtt.max_pending_connections); closing new connection");
            }
            return None;
        };
        Some(Admitted {
            connection,
            pending,
        })
    }

    /// Waits until every connection has ended, or `limit` passes.
    pub async fn drain(&self, limit: Duration) -> bool {
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        tokio::time::timeout(limit, self.connections.acquire_many(all))
            .await
            .is_ok()
    }
}

/// What a gateway works with: where events go, who devices are, the hub's services, the
/// registry of live connections across all gateways, limits, counters, and when to stop.
pub struct GatewayContext {
    pub hub_name: String,
    pub ingest: Arc<dyn Ingest>,
    pub directory: Arc<dyn DeviceDirectory>,
    pub services: Arc<dyn DeviceServices>,
    /// The provisioning service, when this hub runs it (`[dps]`).
    pub provisioning: Option<Arc<dyn Provisioning>>,
    pub connections: Arc<ConnectionRegistry>,
    pub admission: Arc<Admission>,
    pub metrics: Arc<GatewayMetrics>,
    pub shutdown: watch::Receiver<bool>,
}

/// A protocol front end. It accepts connections, authenticates devices, hands their
/// events to `ctx.ingest`, their requests to `ctx.services`, registers each connection in
/// `ctx.connections` (which replaces a device's connection on any other gateway and
/// carries the hub's messages and revocations to it), and stops when `ctx.shutdown` does.
pub trait Gateway: Send {
    /// The `protocol` label of its metrics.
    fn protocol(&self) -> &'static str;

    /// Serves until shutdown.
    fn run(self: Box<Self>, ctx: Arc<GatewayContext>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}
