//! MQTT over QUIC (quinn): one QUIC connection carries one MQTT session on the first
//! bidirectional stream the client opens (ALPN `mqtt`). The session is the same I/O-free
//! core and driver as MQTT over TCP, so authentication, topic rules, PUBACK durability,
//! twins, methods and C2D behave the same; only the transport differs.
//!
//! What QUIC adds: a device keeps its session when its address changes (NAT rebinding,
//! Wi-Fi to cellular), because connections are identified by connection ids, not by
//! address. What it does not get: 0-RTT (early data is replayable, and a replayed CONNECT
//! would take over the device's live connection), see docs/decisions/021-mqtt-over-quic.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, IdleTimeout, Incoming, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::time::{Instant, timeout_at};
use weir_core::Peer;

use crate::context::{Admitted, Gateway, GatewayContext};
use crate::mqtt::{Mqtt, MqttConfig, driver, session};

/// The ALPN protocol id clients must offer.
pub const ALPN: &[u8] = b"mqtt";

/// The `protocol` label of this gateway's metrics and of its connections' `Peer`.
pub const PROTOCOL: &str = "mqtt-quic";

/// QUIC application error codes sent when the hub closes a connection.
const CLOSED: VarInt = VarInt::from_u32(0);
const NO_STREAM: VarInt = VarInt::from_u32(1);
const STOPPING: VarInt = VarInt::from_u32(2);

/// How long the hub lets a peer read what was written last (a refusing CONNACK, the last
/// PUBACKs) before it closes the QUIC connection, which discards unread stream data.
const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("the TLS configuration cannot be used for QUIC (it needs TLS 1.3): {0}")]
    Crypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("cannot listen for QUIC on UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The QUIC transport for MQTT sessions: one bidirectional stream per connection, no
/// unidirectional ones, receive windows sized to the message limit (what a device can
/// make the hub buffer), and an idle timeout no shorter than the longest MQTT keep-alive,
/// so MQTT's own keep-alive decides when a quiet device is gone.
fn transport(config: &MqttConfig) -> Result<TransportConfig, quinn::VarIntBoundsExceeded> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    let window = u32::try_from(config.max_message_bytes.saturating_mul(2))
        .unwrap_or(u32::MAX)
        .max(64 * 1024);
    t.stream_receive_window(VarInt::from_u32(window));
    t.receive_window(VarInt::from_u32(window));
    let idle = session::idle_limit(u16::MAX) + Duration::from_secs(1);
    t.max_idle_timeout(Some(IdleTimeout::try_from(idle)?));
    Ok(t)
}

/// Binds the QUIC endpoint on `addr` with `tls` (TLS 1.3, ALPN `mqtt`, see
/// `tls::quic_server_config`).
pub fn bind(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    config: &MqttConfig,
) -> Result<Endpoint, QuicError> {
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let transport = transport(config).map_err(|_| QuicError::Bind {
        addr,
        source: std::io::Error::other("idle timeout out of range"),
    })?;
    server.transport_config(Arc::new(transport));
    server.migration(true);
    Endpoint::server(server, addr).map_err(|source| QuicError::Bind { addr, source })
}

/// The MQTT-over-QUIC gateway: a bound endpoint and the MQTT limits.
pub struct QuicListener {
    pub endpoint: Endpoint,
    pub config: MqttConfig,
}

impl Gateway for QuicListener {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn run(
        self: Box<Self>,
        ctx: Arc<GatewayContext>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mqtt = Mqtt::iothub(Arc::clone(&ctx), &self.config, PROTOCOL);
            let mut shutdown = ctx.shutdown.clone();
            loop {
                let incoming = tokio::select! {
                    _ = shutdown.changed() => break,
                    i = self.endpoint.accept() => i,
                };
                let Some(incoming) = incoming else { break };
                let Some(admitted) = ctx
                    .admission
                    .admit(incoming.remote_address(), &mqtt.metrics)
                else {
                    incoming.refuse();
                    continue;
                };
                tokio::spawn(connection(incoming, Arc::clone(&mqtt), admitted));
            }
            // Sessions end on the shutdown signal themselves; this tells the peers of any
            // connection still half-open.
            self.endpoint.close(STOPPING, b"hub stopping");
        })
    }
}

/// One QUIC connection: handshake and the first stream within the connect timeout, then
/// the MQTT session over that stream.
async fn connection(incoming: Incoming, mqtt: Arc<Mqtt>, admitted: Admitted) {
    let addr = incoming.remote_address();
    let deadline = Instant::now() + mqtt.session.connect_timeout;
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(peer = %addr, error = %e, "QUIC connection failed");
            return;
        }
    };
    let conn = match timeout_at(deadline, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %addr, "QUIC handshake timed out");
            return;
        }
    };
    let (send, recv) = match timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "QUIC connection ended before its MQTT stream");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %addr, "no MQTT stream within the connect timeout");
            conn.close(NO_STREAM, b"no MQTT stream within the connect timeout");
            return;
        }
    };
    let peer = Peer {
        addr: conn.remote_address(),
        protocol: PROTOCOL,
        client_certs: conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| crate::tls::client_chain(Some(&certs))),
    };
    let mut io = tokio::io::join(recv, send);
    driver::serve(&mut io, peer, mqtt, admitted).await;
    // The driver has finished the stream; closing the connection now would discard what
    // the peer has not read yet. Wait until it has, briefly.
    let (_, send) = io.into_inner();
    let _ = tokio::time::timeout(LINGER, send.stopped()).await;
    conn.close(CLOSED, b"");
}
