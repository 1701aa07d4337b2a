//! The upstream link over QUIC: one connection, MQTT on its first bidirectional stream
//! (ALPN `mqtt`), as Weir's QUIC gateway serves it. A lost UDP path shows as the QUIC
//! idle timeout, shorter than the link's silence limit.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use weir_gateways::quic_client::QuicStream;

use super::config::UpstreamConfig;

/// Dials the hub's QUIC listener and opens the MQTT stream.
pub(crate) async fn dial(
    cfg: &UpstreamConfig,
    mut tls: rustls::ClientConfig,
) -> Result<QuicStream, String> {
    let address = cfg.address();
    let addr = tokio::net::lookup_host(&address)
        .await
        .map_err(|e| format!("cannot resolve {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} resolves to nothing"))?;
    tls.alpn_protocols = vec![b"mqtt".to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(8)).map_err(|e| e.to_string())?,
    ));
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    client.transport_config(Arc::new(transport));
    let bind: std::net::SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(client);
    let conn = endpoint
        .connect(addr, &cfg.hub)
        .map_err(|e| format!("cannot dial {address} over QUIC: {e}"))?
        .await
        .map_err(|e| format!("QUIC with {address} failed: {e}"))?;
    QuicStream::open(conn, Some(endpoint))
        .await
        .map_err(|e| format!("QUIC with {address}: no stream: {e}"))
}
