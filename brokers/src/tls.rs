//! The TLS client of broker links that trust one CA file (`ca` of an endpoint).

use std::sync::Arc;

/// The certificates in the PEM file `ca`.
pub fn roots(ca: &str) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("cannot read the CA file {ca}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("bad certificate in {ca}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("bad certificate in {ca}: {e}"))?;
    }
    Ok(roots)
}

/// A TLS client (rustls, ring) trusting only the certificates in the PEM file `ca`.
pub fn connector(ca: &str) -> Result<tokio_rustls::TlsConnector, String> {
    with_roots(roots(ca)?)
}

/// A TLS client (rustls, ring) trusting `roots`.
pub fn with_roots(roots: rustls::RootCertStore) -> Result<tokio_rustls::TlsConnector, String> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
