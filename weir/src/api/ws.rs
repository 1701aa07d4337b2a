//! MQTT over WebSocket at `/$iothub/websocket` (subprotocol `mqtt`), as IoT Hub serves it
//! on 443. Binary frames are a byte stream for the MQTT gateway; an MQTT packet may span
//! frames and a frame may hold several packets.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ApiState;

/// The client address of the HTTP connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Whether the request came over TLS (cookies set on it are `Secure`).
#[derive(Debug, Clone, Copy)]
pub struct Secure(pub bool);

/// The TLS client certificate chain of the connection a request came on, if any.
#[derive(Debug, Clone)]
pub struct ClientCerts(pub Option<Arc<[Vec<u8>]>>);

pub async fn upgrade(
    State(s): State<Arc<ApiState>>,
    Extension(ClientAddr(peer)): Extension<ClientAddr>,
    Extension(ClientCerts(certs)): Extension<ClientCerts>,
    ws: WebSocketUpgrade,
) -> Response {
    // A frame may carry one MQTT packet and its fixed header; nothing bigger is buffered
    // for a client that has not even authenticated (the default would be 64 MiB).
    let limit = s.max_message_bytes + 16;
    ws.protocols(["mqtt"])
        .max_frame_size(limit)
        .max_message_size(limit)
        .on_upgrade(move |socket| bridge(s, socket, peer, certs))
}

/// Pipes the WebSocket's binary frames to and from an in-memory stream the gateway serves.
async fn bridge(
    s: Arc<ApiState>,
    socket: WebSocket,
    peer: SocketAddr,
    certs: Option<Arc<[Vec<u8>]>>,
) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let peer_info = weir_core::Peer {
        addr: peer,
        protocol: s.websocket.protocol,
        client_certs: certs,
    };
    if !s.websocket.serve_stream(theirs, peer_info) {
        tracing::warn!(%peer, "connection limit reached; closing WebSocket");
        return;
    }
    let (mut rd, mut wr) = tokio::io::split(ours);
    let (mut sink, mut stream) = socket.split();
    let inbound = async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    tokio::join!(inbound, outbound);
}
