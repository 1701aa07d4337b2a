//! The client side of MQTT over QUIC for `weir simulate`: one QUIC connection per device,
//! MQTT on its first bidirectional stream, ALPN `mqtt`, trusting only the given CA.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, Join, ReadBuf};

/// The MQTT stream of a QUIC connection. Holds the connection: dropping the last handle
/// closes it.
pub struct QuicStream {
    io: Join<quinn::RecvStream, quinn::SendStream>,
    _conn: quinn::Connection,
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

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
    let (send, recv) = conn
        .open_bi()
        .await
        .context("cannot open the MQTT stream")?;
    Ok(QuicStream {
        io: tokio::io::join(recv, send),
        _conn: conn,
    })
}
