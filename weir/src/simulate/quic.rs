//! The client side of MQTT over QUIC for `weir simulate`: one QUIC connection per device,
//! MQTT on its first bidirectional stream, ALPN `mqtt`, trusting only the given CA.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use quinn::crypto::rustls::QuicClientConfig;

pub use weir_gateways::quic_client::QuicStream;

/// A client endpoint (one UDP socket shared by every simulated device) trusting `ca`.
pub fn endpoint(ca: &Path, server: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let mut tls = crate::client::tls_client_config(ca)?;
    tls.alpn_protocols = vec![weir_gateways::quic::ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).context("the TLS client config lacks TLS 1.3")?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    // No idle timeout of our own: the hub's (longer than any MQTT keep-alive) applies, and
    // MQTT PINGREQs keep idle devices alive as they would over TCP.
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(None);
    config.transport_config(Arc::new(transport));
    let local: SocketAddr = if server.ip().is_loopback() {
        (server.ip(), 0).into()
    } else if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut ep = quinn::Endpoint::client(local)
        .with_context(|| format!("cannot open a UDP socket on {local}"))?;
    ep.set_default_client_config(config);
    Ok(ep)
}

/// Connects to `server` (its certificate must name `name`) and opens the MQTT stream.
pub async fn connect(
    ep: &quinn::Endpoint,
    server: SocketAddr,
    name: &str,
) -> anyhow::Result<QuicStream> {
    let conn = ep
        .connect(server, name)
        .with_context(|| format!("cannot connect to {server} over QUIC"))?
        .await
        .with_context(|| format!("QUIC handshake with {server} failed"))?;
    QuicStream::open(conn, None)
        .await
        .context("cannot open the MQTT stream")
}
