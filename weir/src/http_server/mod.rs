//! Serving the REST API (and MQTT over WebSocket) over HTTP/1.1, in the clear or over
//! TLS, with bounds on what a client that never finishes a request can hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

mod head;

use crate::config::HttpSettings;
use head::{Prefixed, read_head};

/// Limits shared by every HTTP listener, and what they turned away.
pub struct HttpLimits {
    pub settings: HttpSettings,
    permits: Arc<Semaphore>,
    pub refused: AtomicU64,
    /// Refusals are logged at a bounded rate.
    log: weir_gateways::ratelog::LogLimiter,
}

impl HttpLimits {
    pub fn new(settings: HttpSettings) -> Arc<HttpLimits> {
        Arc::new(HttpLimits {
            permits: Arc::new(Semaphore::new(settings.max_connections)),
            settings,
            refused: AtomicU64::new(0),
            log: Default::default(),
        })
    }

    /// Connections open on the HTTP listeners (WebSocket ones count until upgraded).
    pub fn open(&self) -> usize {
        self.settings.max_connections - self.permits.available_permits()
    }
}

/// Accepts connections until `shutdown` turns true. Each connection is served on its own
/// task; a TLS handshake that stalls is dropped after ten seconds, a request whose headers
/// do not arrive within `header_timeout` (and a keep-alive connection idle that long) is
/// closed, and connections beyond `max_connections` are closed as they arrive.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Arc<HttpLimits>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&limits.permits).try_acquire_owned() else {
            limits.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = limits.log.allow() {
                tracing::warn!(%peer, limit = limits.settings.max_connections, suppressed, "HTTP connection limit reached (http.max_connections); closing new connection");
            }
            continue;
        };
        // The peer address goes into each request; layering the router per connection
        // instead would rebuild every route (tens of KiB a connection).
        let app = app.clone();
        // The TLS client certificate chain (MQTT over WebSocket may authenticate with it)
        // goes with each request too.
        let service = move |certs: Option<Arc<[Vec<u8>]>>, secure: bool| {
            let app = app.clone();
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let extensions = req.extensions_mut();
                extensions.insert(crate::api::ws::ClientAddr(peer));
                extensions.insert(crate::api::ws::ClientCerts(certs.clone()));
                extensions.insert(crate::api::ws::Secure(secure));
                let mut app = app.clone();
                async move { app.call(req).await }
            })
        };
        let tls = tls.clone();
        let mut stop = shutdown.clone();
        let header_timeout = limits.settings.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                // hyper's minimum: requests are small, and a bigger read buffer would be
                // held by every connection, idle or half-sent.
                .max_buf_size(8192);
            let result = match tls {
                None => {
                    let mut socket = socket;
                    let Some(head) = read_head(&mut socket, header_timeout).await else {
                        return;
                    };
                    let conn = builder
                        .serve_connection(
                            TokioIo::new(Prefixed::new(head, socket)),
                            service(None, false),
                        )
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = stop.changed() => { conn.as_mut().graceful_shutdown(); conn.await }
                    }
                }
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(socket))
                        .await
                    {
                        Ok(Ok(mut stream)) => {
                            let certs = weir_gateways::tls::client_chain(
                                stream.get_ref().1.peer_certificates(),
                            );
                            let Some(head) = read_head(&mut stream, header_timeout).await else {
                                return;
                            };
                            let conn = builder
                                .serve_connection(
                                    TokioIo::new(Prefixed::new(head, stream)),
                                    service(certs, true),
                                )
                                .with_upgrades();
                            tokio::pin!(conn);
                            tokio::select! {
                                r = conn.as_mut() => r,
                                _ = stop.changed() => { conn.as_mut().graceful_shutdown(); conn.await }
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}
