//! The MQTT gateway: MQTT 3.1.1 over TCP and TLS in the Azure IoT Hub device dialect.

pub mod codec;
pub mod connect;
mod connection;
mod sessions;
pub mod topic;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use weir_core::{DeviceDirectory, Ingest};

use crate::metrics::GatewayMetrics;
pub use sessions::Sessions;

#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Largest accepted packet (remaining length), default 256 KiB as IoT Hub.
    pub max_message_bytes: usize,
    /// Time a client has to finish TLS and send CONNECT.
    pub connect_timeout: Duration,
    /// Connections beyond this are closed at accept.
    pub max_connections: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_message_bytes: 256 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_connections: 100_000,
        }
    }
}

/// State shared by every connection of the gateway.
pub(crate) struct Shared {
    config: MqttConfig,
    hub_name: String,
    directory: Arc<dyn DeviceDirectory>,
    ingest: Arc<dyn Ingest>,
    sessions: Sessions,
    metrics: Arc<GatewayMetrics>,
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
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_connections));
        MqttGateway {
            shared: Arc::new(Shared {
                config,
                hub_name,
                directory,
                ingest,
                sessions: Sessions::default(),
                metrics,
            }),
            permits,
        }
    }

    pub fn is_connected(&self, device: &str) -> bool {
        self.shared.sessions.is_connected(device)
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
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                GatewayMetrics::inc(&self.shared.metrics.connections_rejected_limit, 1);
                tracing::warn!(peer = %addr, limit = self.shared.config.max_connections, "connection limit reached; closing new connection");
                continue;
            };
            let _ = socket.set_nodelay(true);
            let shared = Arc::clone(&self.shared);
            let tls = tls.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shared.open_connection();
                let peer = addr.to_string();
                match tls {
                    None => connection::serve(socket, peer, Arc::clone(&shared), shutdown).await,
                    Some(acceptor) => {
                        let deadline = shared.config.connect_timeout;
                        match tokio::time::timeout(deadline, acceptor.accept(socket)).await {
                            Ok(Ok(stream)) => {
                                connection::serve(stream, peer, Arc::clone(&shared), shutdown).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
                shared.close_connection();
                drop(permit);
            });
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
