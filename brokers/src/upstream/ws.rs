//! The upstream link over WebSocket: MQTT in binary frames at `/$iothub/websocket`
//! (subprotocol `mqtt`) over TLS, as IoT Hub and Weir's HTTPS listener serve it, for sites
//! whose firewall lets only HTTPS out.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::link::Stream;

/// The hub sends PUBACKs, twin documents and method requests; nothing near this.
const MAX_MESSAGE: usize = 4 << 20;

/// Upgrades `tls` (already connected to `hub`) to a WebSocket and returns a byte stream
/// whose bytes travel in its binary frames; a task pumps between the two and ends, closing
/// both, when either side does.
pub(crate) async fn upgrade(tls: Box<dyn Stream>, hub: &str) -> Result<DuplexStream, String> {
    let url = format!("wss://{hub}/$iothub/websocket");
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let (socket, response) =
        tokio_tungstenite::client_async_with_config(request, tls, Some(config))
            .await
            .map_err(|e| format!("the WebSocket upgrade at {url} failed: {e}"))?;
    if response.headers().get("Sec-WebSocket-Protocol") != Some(&HeaderValue::from_static("mqtt")) {
        return Err(format!("{url} did not accept the `mqtt` subprotocol"));
    }
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(pump(socket, ours));
    Ok(theirs)
}

async fn pump<S>(socket: tokio_tungstenite::WebSocketStream<S>, ours: DuplexStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(ours);
    let (mut sink, mut frames) = socket.split();
    let inbound = async {
        while let Some(Ok(msg)) = frames.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    let outbound = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = rd.read(&mut buf).await {
            if sink
                .send(Message::Binary(buf[..n].to_vec().into()))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = sink.close().await;
    };
    // Either side ending ends both: a black-holed hub would otherwise keep this task and
    // its socket forever, waiting for a close frame that never comes.
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
}
