//! POSTing batches for one webhook endpoint in one worker: collect lines until the batch
//! is full or `max_delay_ms` old, POST them signed over one keep-alive connection, and
//! confirm them all on a 2xx answer. Anything else ends the link: the sink fails the
//! endpoint, backs off and replays from its commit point.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::sync::mpsc;
use weir_core::WebhookOptions;

use super::options::{Url, parse_url};
use crate::link::{Link, Outgoing, Progress};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts posting for `endpoint` with `options` on `rt`.
pub fn open(
    rt: &tokio::runtime::Handle,
    options: WebhookOptions,
    endpoint: String,
) -> Link<Vec<u8>> {
    let name = endpoint.clone();
    Link::spawn(rt, endpoint, move |rx, progress| async move {
        run(&options, &name, rx, &progress).await
    })
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

async fn connect(url: &Url, ca: Option<&str>) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|_| {
        format!(
            "cannot connect to {}:{} within {CONNECT_TIMEOUT:?}",
            url.host, url.port
        )
    })?
    .map_err(|e| format!("cannot connect to {}:{}: {e}", url.host, url.port))?;
    let _ = tcp.set_nodelay(true);
    if let (true, Some(ca)) = (url.tls, ca) {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("{}: {e}", url.host))?;
        let tls = crate::tls::connector(ca)?
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {} failed: {e}", url.host))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

async fn post(
    sender: &mut SendRequest<Full<Bytes>>,
    url: &Url,
    options: &WebhookOptions,
    endpoint: &str,
    body: Vec<u8>,
) -> Result<(), String> {
    let sig = signature(options.secret.expose(), &body);
    let host = if (url.tls && url.port == 443) || (!url.tls && url.port == 80) {
        url.host.clone()
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let req = hyper::Request::post(url.target.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
        .header("x-weir-signature", sig)
        .header("x-weir-endpoint", endpoint)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| format!("{} did not answer within {REQUEST_TIMEOUT:?}", options.url))?
        .map_err(|e| format!("posting to {} failed: {e}", options.url))?;
    let status = resp.status();
    // Read the answer so the connection can be used again.
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect()).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{} answered {status}", options.url))
    }
}

async fn run(
    options: &WebhookOptions,
    endpoint: &str,
    mut rx: mpsc::Receiver<Outgoing<Vec<u8>>>,
    progress: &Arc<Progress>,
) -> Result<(), String> {
    let url = parse_url(options.url.expose())?;
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let max_delay = Duration::from_millis(u64::from(options.max_delay_ms));
    loop {
        let Some(first) = rx.recv().await else {
            return Ok(());
        };
        let mut body = first.message;
        let mut count = 1u32;
        let deadline = tokio::time::Instant::now() + max_delay;
        while count < options.max_batch && body.len() < options.max_batch_bytes as usize {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => {
                    body.extend_from_slice(&m.message);
                    count += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = Some(connect(&url, options.ca.as_deref()).await?);
        }
        let Some(s) = sender.as_mut() else { continue };
        s.ready().await.map_err(|e| e.to_string())?;
        post(s, &url, options, endpoint, body).await?;
        for _ in 0..count {
            progress.confirm_oldest();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signs_like_the_documented_example() {
        // printf 'hello' | openssl dgst -sha256 -hmac 'secret'
        assert_eq!(
            super::signature("secret", b"hello"),
            "sha256=88aab3ede8d3adf94d26ab90d3bafd4a2083070c3bcce9c014ee04a443847c0b"
        );
    }
}
