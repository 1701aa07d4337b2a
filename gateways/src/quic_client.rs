//! The client side of MQTT over QUIC, shared by the edge's upstream link and `weir
//! simulate`: the MQTT stream of one QUIC connection as a byte stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Join, ReadBuf};

/// The first bidirectional stream of a QUIC connection, holding the connection (and,
/// when it is the only user, the endpoint that drives it): dropping it closes both.
pub struct QuicStream {
    io: Join<quinn::RecvStream, quinn::SendStream>,
    _conn: quinn::Connection,
    _endpoint: Option<quinn::Endpoint>,
}

impl QuicStream {
    /// Opens the MQTT stream on `conn`; `endpoint` is kept alive with it when given.
    pub async fn open(
        conn: quinn::Connection,
        endpoint: Option<quinn::Endpoint>,
    ) -> Result<QuicStream, quinn::ConnectionError> {
        let (send, recv) = conn.open_bi().await?;
        Ok(QuicStream {
            io: tokio::io::join(recv, send),
            _conn: conn,
            _endpoint: endpoint,
        })
    }
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
