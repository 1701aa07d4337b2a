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

/// A client certificate chain and its key from PEM files.
pub type ClientAuth = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// Reads a PEM certificate chain and the PEM private key that goes with it.
pub fn client_auth(cert: &std::path::Path, key: &std::path::Path) -> Result<ClientAuth, String> {
    let pem = std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("bad key in {}: {e}", key.display()))?
        .ok_or_else(|| format!("{} holds no private key", key.display()))?;
    Ok((chain, key))
}

/// A TLS client (rustls, ring) trusting `roots`.
pub fn with_roots(roots: rustls::RootCertStore) -> Result<tokio_rustls::TlsConnector, String> {
    client_config(roots, None, false).map(|c| tokio_rustls::TlsConnector::from(Arc::new(c)))
}

/// A client configuration trusting `roots`, presenting `auth` when given, TLS 1.3 only
/// when `tls13` (QUIC).
pub fn client_config(
    roots: rustls::RootCertStore,
    auth: Option<ClientAuth>,
    tls13: bool,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ));
    let builder = if tls13 {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    match auth {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("the client certificate cannot be used: {e}")),
        None => Ok(builder.with_no_client_auth()),
    }
}
