//! Serving the REST API over HTTP/1.1, in the clear or over TLS.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Accepts connections until `shutdown` turns true. Each connection is served on its
/// own task; a TLS handshake that stalls is dropped after ten seconds.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
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
        let app = app
            .clone()
            .layer(axum::Extension(crate::api::ws::ClientAddr(peer)));
        let tls = tls.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let service = TowerToHyperService::new(app);
            let builder = hyper::server::conn::http1::Builder::new();
            let result = match tls {
                None => {
                    let conn = builder
                        .serve_connection(TokioIo::new(socket), service)
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
                        Ok(Ok(stream)) => {
                            let conn = builder
                                .serve_connection(TokioIo::new(stream), service)
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
