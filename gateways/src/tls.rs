//! TLS server configuration (rustls with the ring provider): TLS 1.2 and 1.3 for MQTT/TLS
//! and HTTPS, TLS 1.3 only for QUIC.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} contains no certificate")]
    NoCertificate(String),
    #[error("{0} contains no private key")]
    NoKey(String),
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Loads a PEM certificate chain and private key into a server config for TLS 1.2 and
/// 1.3.
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    build(
        cert,
        key,
        alpn,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
    .map(Arc::new)
}

/// The same certificate for QUIC: TLS 1.3 only (QUIC has no other), and no 0-RTT (early
/// data is replayable; see docs/decisions/021-mqtt-over-quic.md).
pub fn quic_server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let mut config = build(cert, key, alpn, &[&rustls::version::TLS13])?;
    config.max_early_data_size = 0;
    Ok(config)
}

/// The provider is chosen explicitly, so several rustls providers in one binary cannot
/// make it panic.
fn build(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: cert.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.display().to_string()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|source| TlsError::Read {
            path: key.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey(key.display().to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
