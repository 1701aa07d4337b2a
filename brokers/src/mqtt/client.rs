//! The MQTT client handshake the `mqtt` endpoint and the edge's upstream link share.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weir_gateways::mqtt::codec::{self, Inbound};

/// A byte stream MQTT runs over: TCP, TLS or a QUIC stream.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why a session did not start.
pub(crate) enum Refused {
    /// The server answered CONNACK with this code.
    Code(u8),
    /// No CONNACK: what happened instead.
    Failed(String),
}

/// Sends a clean-session CONNECT and waits up to `patience` for the CONNACK; what the
/// server sent after it stays in the returned buffer. `peer` names the server in errors.
pub(crate) async fn handshake(
    stream: &mut Box<dyn Stream>,
    client_id: &str,
    keep_alive: u16,
    login: Option<(&str, &str)>,
    patience: Duration,
    peer: &str,
) -> Result<BytesMut, Refused> {
    let mut out = BytesMut::new();
    codec::connect(client_id, keep_alive, true, login, &mut out);
    let fail = |m: String| Refused::Failed(m);
    stream
        .write_all(&out)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match codec::decode(&mut buf, 1 << 20).map_err(|e| fail(e.to_string()))? {
            Some(Inbound::ConnAck { code: 0, .. }) => return Ok(buf),
            Some(Inbound::ConnAck { code, .. }) => return Err(Refused::Code(code)),
            Some(other) => return Err(fail(format!("expected CONNACK, got {}", other.name()))),
            None => {}
        }
        let n = tokio::time::timeout(patience, stream.read_buf(&mut buf))
            .await
            .map_err(|_| fail(format!("{peer} sent no CONNACK")))?
            .map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            return Err(fail(format!("{peer} closed the connection before CONNACK")));
        }
    }
}
