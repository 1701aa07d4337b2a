//! MQTT 3.1.1 in the Azure IoT Hub device dialect: the codec, the I/O-free session core
//! (`session.rs`, speaking to its driver in `action.rs`), the dialect (`dialect.rs`), and the driver that runs a session over any
//! byte stream (`driver.rs`): TCP and TLS here, WebSocket and QUIC in their own modules.

pub mod action;
pub mod codec;
pub mod connect;
pub mod dialect;
pub mod dps;
pub mod driver;
pub mod requests;
pub mod session;
pub mod topic;
pub mod translate;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use weir_core::Peer;

use crate::context::{Gateway, GatewayContext};
use crate::metrics::ProtocolMetrics;
use dialect::{Dialect, IotHub};
use session::SessionConfig;

#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Largest accepted packet (remaining length), default 256 KiB as IoT Hub.
    pub max_message_bytes: usize,
    /// Time a client has to finish TLS and send CONNECT.
    pub connect_timeout: Duration,
    /// `[[translate]]` entries: plain MQTT clients mapped onto device identities.
    pub translations: Arc<[translate::Translation]>,
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
            translations: Arc::from(Vec::new()),
        }
    }
}

/// What every MQTT connection of one protocol shares.
pub struct Mqtt {
    pub ctx: Arc<GatewayContext>,
    pub dialect: Arc<dyn Dialect>,
    pub session: SessionConfig,
    pub protocol: &'static str,
    pub metrics: Arc<ProtocolMetrics>,
}

impl Mqtt {
    /// MQTT in the IoT Hub dialect, counted under `protocol`.
    pub fn iothub(
        ctx: Arc<GatewayContext>,
        config: &MqttConfig,
        protocol: &'static str,
    ) -> Arc<Mqtt> {
        let dialect = Arc::new(IotHub {
            hub_name: ctx.hub_name.clone(),
            directory: Arc::clone(&ctx.directory),
            provisioning: ctx.provisioning.clone(),
            translations: Arc::clone(&config.translations),
        });
        Arc::new(Mqtt {
            metrics: ctx.metrics.protocol(protocol),
            dialect,
            session: SessionConfig {
                max_packet: config.max_message_bytes,
                max_connect: MAX_CONNECT_BYTES,
                connect_timeout: config.connect_timeout,
            },
            protocol,
            ctx,
        })
    }

    /// Serves one already-accepted byte stream (MQTT over WebSocket hands its stream
    /// here). False when a connection limit is reached and the stream was dropped.
    pub fn serve_stream<S>(self: &Arc<Self>, stream: S, peer: Peer) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Some(admitted) = self.ctx.admission.admit(peer.addr, &self.metrics) else {
            return false;
        };
        tokio::spawn(driver::serve(stream, peer, Arc::clone(self), admitted));
        true
    }
}

/// MQTT over TCP, or over TLS with an acceptor: a listener and the connections it accepts.
pub struct MqttListener {
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
    pub config: MqttConfig,
}

impl Gateway for MqttListener {
    fn protocol(&self) -> &'static str {
        "mqtt"
    }

    fn run(
        self: Box<Self>,
        ctx: Arc<GatewayContext>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mqtt = Mqtt::iothub(Arc::clone(&ctx), &self.config, "mqtt");
            let mut shutdown = ctx.shutdown.clone();
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.changed() => break,
                    a = self.listener.accept() => a,
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
                let Some(admitted) = ctx.admission.admit(addr, &mqtt.metrics) else {
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let mut peer = Peer {
                    addr,
                    protocol: "mqtt",
                    client_certs: None,
                };
                let m = Arc::clone(&mqtt);
                // Separate tasks for plain and TLS connections: one future holding both
                // would carry the TLS state (kilobytes) on every plain connection too. The
                // driver's future is the plain task itself, with no wrapper around it.
                match self.tls.clone() {
                    None => {
                        tokio::spawn(driver::serve(socket, peer, m, admitted));
                    }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            let deadline = m.session.connect_timeout;
                            match tokio::time::timeout(deadline, acceptor.accept(socket)).await {
                                Ok(Ok(stream)) => {
                                    peer.client_certs = crate::tls::client_chain(
                                        stream.get_ref().1.peer_certificates(),
                                    );
                                    driver::serve(stream, peer, m, admitted).await
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(peer = %addr, error = %e, "TLS handshake failed")
                                }
                                Err(_) => tracing::debug!(peer = %addr, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
        })
    }
}
