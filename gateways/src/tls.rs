//! TLS server configuration (rustls with the ring provider): TLS 1.2 and 1.3 for MQTT/TLS
//! and HTTPS, TLS 1.3 only for QUIC. Client certificates are asked for, never required
//! (SAS devices send none), and judged at CONNECT ([`crate::x509`]).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

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
    let verifier = Arc::new(DeferredClientAuth {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The longest client chain accepted (the device's certificate and intermediates).
const MAX_CLIENT_CHAIN: usize = 8;

/// Asks for a client certificate without requiring one, and accepts any chain whose sender
/// proves it holds the certificate's key (the handshake signature, always checked): a
/// device's self-signed certificate or one from a CA registered at run time cannot be
/// judged by a verifier fixed when the listener starts, so the MQTT dialect judges it at
/// CONNECT and answers with a CONNACK the device SDKs understand, not a TLS alert.
#[derive(Debug)]
struct DeferredClientAuth {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for DeferredClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if intermediates.len() >= MAX_CLIENT_CHAIN {
            return Err(rustls::Error::General(
                "client certificate chain too long".into(),
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The chain a client sent, as the gateways keep it for CONNECT (`None` when it sent none).
pub fn client_chain(certs: Option<&[CertificateDer<'_>]>) -> Option<Arc<[Vec<u8>]>> {
    let certs = certs.filter(|c| !c.is_empty())?;
    Some(certs.iter().map(|c| c.to_vec()).collect())
}
