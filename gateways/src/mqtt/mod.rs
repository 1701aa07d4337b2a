//! The MQTT gateway: MQTT 3.1.1 over TCP and TLS in the Azure IoT Hub device dialect.

pub mod codec;
pub mod connect;
mod connection;
pub mod requests;
mod sessions;
pub mod topic;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use weir_core::{DeviceDirectory, DeviceLink, DevicePublish, DeviceServices, Feature, Ingest};

use crate::metrics::GatewayMetrics;
use crate::ratelog::LogLimiter;
pub use sessions::Sessions;

#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Largest accepted packet (remaining length), default 256 KiB as IoT Hub.
    pub max_message_bytes: usize,
    /// Time a client has to finish TLS and send CONNECT.
    pub connect_timeout: Duration,
    /// Connections beyond this are closed at accept.
    pub max_connections: usize,
    /// Connections that have not authenticated yet (TLS handshake, CONNECT) beyond this are
    /// closed at accept: what unauthenticated clients can make the hub hold is bounded.
    pub max_pending: usize,
}

/// The largest CONNECT accepted: ids, a SAS token and a will fit in far less. Checked
/// before the packet is buffered, so an unauthenticated client cannot make the hub hold
/// more.
pub const MAX_CONNECT_BYTES: usize = 8 * 1024;

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_message_bytes: 256 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_pending: 1024,
        }
    }
}

/// State shared by every connection of the gateway.
pub(crate) struct Shared {
    config: MqttConfig,
    hub_name: String,
    directory: Arc<dyn DeviceDirectory>,
    ingest: Arc<dyn Ingest>,
    services: Arc<dyn DeviceServices>,
    sessions: Sessions,
    metrics: Arc<GatewayMetrics>,
    /// Slots for connections that have not authenticated yet.
    pending: Arc<Semaphore>,
    /// Refusals and violations are logged at a bounded rate.
    refusals: LogLimiter,
}

impl DeviceLink for MqttGateway {
    fn send(&self, device: &str, publish: DevicePublish) -> bool {
        self.shared.sessions.send(device, publish)
    }

    fn subscribed(&self, device: &str, feature: Feature) -> bool {
        self.shared.sessions.subscribed(device, feature)
    }

    fn is_connected(&self, device: &str) -> bool {
        self.shared.sessions.is_connected(device)
    }

    fn revalidate(&self, device: &str) -> bool {
        let current = self.shared.directory.get(device);
        self.shared
            .sessions
            .revalidate(device, current.as_deref())
            .is_some()
    }
}

/// Held by a connection task: gives back the connection slot and counts the close.
struct ConnectionGuard {
    shared: Arc<Shared>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared.close_connection();
    }
}

/// The MQTT gateway; one value serves any number of listeners.
#[derive(Clone)]
pub struct MqttGateway {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
}

impl MqttGateway {
    pub fn new(
        config: MqttConfig,
        hub_name: String,
        directory: Arc<dyn DeviceDirectory>,
        ingest: Arc<dyn Ingest>,
        services: Arc<dyn DeviceServices>,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let pending = Arc::new(Semaphore::new(config.max_pending));
        MqttGateway {
            shared: Arc::new(Shared {
                pending,
                refusals: LogLimiter::default(),
                config,
                hub_name,
                directory,
                ingest,
                services,
                sessions: Sessions::default(),
                metrics,
            }),
            permits,
        }
    }

    pub fn is_connected(&self, device: &str) -> bool {
        self.shared.sessions.is_connected(device)
    }

    /// Serves one already-accepted connection (MQTT over WebSocket hands its stream here).
    /// Returns false when the connection limit is reached and the stream was dropped.
    pub fn serve_stream<S>(
        &self,
        stream: S,
        peer: std::net::SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Some((permit, pending)) = self.admit(peer) else {
            return false;
        };
        self.shared.open_connection();
        let guard = ConnectionGuard {
            shared: Arc::clone(&self.shared),
            _permit: permit,
        };
        tokio::spawn(async move {
            connection::serve(stream, peer, Arc::clone(&guard.shared), pending, shutdown).await;
        });
        true
    }

    /// A connection slot and a slot among those still authenticating, or `None` (counted
    /// and logged at a bounded rate) when either limit is reached.
    fn admit(
        &self,
        peer: std::net::SocketAddr,
    ) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let m = &self.shared.metrics;
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            GatewayMetrics::inc(&m.connections_rejected_limit, 1);
            if let Some(suppressed) = self.shared.refusals.allow() {
                tracing::warn!(%peer, limit = self.shared.config.max_connections, suppressed, "connection limit reached (mqtt.max_connections); closing new connection");
            }
            return None;
        };
        let Ok(pending) = Arc::clone(&self.shared.pending).try_acquire_owned() else {
            GatewayMetrics::inc(&m.connections_rejected_pending, 1);
            if let Some(suppressed) = self.shared.refusals.allow() {
                tracing::warn!(%peer, limit = self.shared.config.max_pending, suppressed, "too many connections are still authenticating (mqtt.max_pending_connections); closing new connection");
            }
            return None;
        };
        Some((permit, pending))
    }

    /// Devices currently connected.
    pub fn connected(&self) -> usize {
        self.shared.sessions.connected()
    }

    /// Accepts connections until `shutdown` turns true; with `tls`, each connection
    /// first completes a TLS handshake.
    pub async fn serve(
        &self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.changed() => break,
                a = listener.accept() => a,
            };
            let (socket, addr) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some((permit, pending)) = self.admit(addr) else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            let shared = Arc::clone(&self.shared);
            let tls = tls.clone();
            let shutdown = shutdown.clone();
            // Separate tasks for plain and TLS connections: one future holding both would
            // carry the TLS state (kilobytes) on every plain connection too.
            shared.open_connection();
            let guard = ConnectionGuard {
                shared: Arc::clone(&shared),
                _permit: permit,
            };
            match tls {
                None => {
                    tokio::spawn(async move {
                        connection::serve(
                            socket,
                            addr,
                            Arc::clone(&guard.shared),
                            pending,
                            shutdown,
                        )
                        .await;
                    });
                }
                Some(acceptor) => {
                    tokio::spawn(async move {
                        let deadline = shared.config.connect_timeout;
                        match tokio::time::timeout(deadline, acceptor.accept(socket)).await {
                            Ok(Ok(stream)) => {
                                connection::serve(stream, addr, shared, pending, shutdown).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %addr, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(peer = %addr, "TLS handshake timed out"),
                        }
                        drop(guard);
                    });
                }
            }
        }
    }

    /// Waits until every connection has ended, or `limit` passes.
    pub async fn drain(&self, limit: Duration) -> bool {
        let all = self.shared.config.max_connections as u32;
        tokio::time::timeout(limit, self.permits.acquire_many(all))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// An idle plain connection should cost under 2 KiB; its task is most of that, so a
    /// future that grows past this deserves a look (box the rarely used part).
    #[tokio::test]
    async fn connection_future_stays_small() {
        let gw = MqttGateway::new(
            MqttConfig::default(),
            "h".into(),
            Arc::new(weir_core::NoDevices),
            Arc::new(Null),
            Arc::new(weir_core::NoServices),
            Arc::default(),
        );
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = tokio::net::TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (_tx, rx) = watch::channel(false);
        let pending = Arc::clone(&gw.shared.pending)
            .try_acquire_owned()
            .expect("a slot");
        let f = connection::serve(
            c,
            "127.0.0.1:1".parse().expect("addr"),
            Arc::clone(&gw.shared),
            pending,
            rx,
        );
        let size = std::mem::size_of_val(&f);
        assert!(size <= 1536, "the connection future is {size} bytes");
    }

    struct Null;
    impl Ingest for Null {
        fn ingest(
            &self,
            _d: &weir_core::DeviceId,
            _b: Vec<weir_core::Event>,
        ) -> weir_core::IngestFuture {
            Box::pin(async { Ok(Box::pin(async { Ok(()) }) as weir_core::AckFuture) })
        }
    }
}
