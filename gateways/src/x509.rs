//! X.509 checks for device authentication and CA registration, free of I/O and clocks
//! (callers pass the time): thumbprints, subject common names, validity, chains to
//! registered CA certificates, and IoT Hub's proof of possession for a CA.
//!
//! The TLS layer only proves that a client holds the key of the certificate it sent
//! (`crate::tls`); everything here decides whether that certificate names a device.

use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use weir_core::CaCertificate;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    #[error("the certificate cannot be parsed: {0}")]
    Malformed(String),
    #[error("the certificate expired at {0}")]
    Expired(String),
    #[error("the certificate is not valid before {0}")]
    NotYetValid(String),
    #[error("the certificate has no subject common name")]
    NoCommonName,
    #[error("the certificate does not chain to a verified CA certificate ({0})")]
    Chain(String),
    #[error("the CA certificate {name} expired at {at}")]
    CaExpired { name: String, at: String },
    #[error("not a CA certificate: {0}")]
    NotCa(String),
    #[error("the verification certificate's {0}")]
    Verification(String),
}

/// What authentication and registration read of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub common_name: Option<String>,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    /// SHA-1 and SHA-256 of the DER, upper-case hex (IoT Hub's thumbprints).
    pub sha1: String,
    pub sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, X509Error> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| X509Error::Malformed(e.to_string()))
}

/// Reads `der`.
pub fn inspect(der: &[u8]) -> Result<CertInfo, X509Error> {
    let cert = parse(der)?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        common_name,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        sha1: hex(&Sha1::digest(der)),
        sha256: hex(&Sha256::digest(der)),
    })
}

/// A certificate time (seconds since the epoch), for messages.
pub fn show_time(secs: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(secs)
        .map_or_else(|_| format!("{secs} s after the epoch"), |t| t.to_string())
}

impl CertInfo {
    /// Whether the certificate is valid at `now_secs`.
    pub fn check_time(&self, now_secs: i64) -> Result<(), X509Error> {
        if now_secs > self.not_after {
            return Err(X509Error::Expired(show_time(self.not_after)));
        }
        if now_secs < self.not_before {
            return Err(X509Error::NotYetValid(show_time(self.not_before)));
        }
        Ok(())
    }
}

/// A certificate given as PEM or as base64 of its DER (IoT Hub's REST takes either).
pub fn decode_certificate(text: &str) -> Result<Vec<u8>, X509Error> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        let mut bytes = text.as_bytes();
        let mut certs = rustls_pemfile::certs(&mut bytes);
        return match certs.next() {
            Some(Ok(der)) => Ok(der.to_vec()),
            Some(Err(e)) => Err(X509Error::Malformed(e.to_string())),
            None => Err(X509Error::Malformed(
                "no CERTIFICATE block in the PEM".into(),
            )),
        };
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| X509Error::Malformed(format!("neither PEM nor base64 DER: {e}")))
}

/// Checks a certificate offered for registration as a CA: parses, is a CA, is usable as a
/// trust anchor, and is valid now.
pub fn check_ca(der: &[u8], now_secs: i64) -> Result<CertInfo, X509Error> {
    let info = inspect(der)?;
    if !info.is_ca {
        return Err(X509Error::NotCa(
            "its basic constraints do not say CA:TRUE".into(),
        ));
    }
    let cert = CertificateDer::from(der);
    webpki::anchor_from_trusted_cert(&cert).map_err(|e| X509Error::NotCa(format!("{e:?}")))?;
    info.check_time(now_secs)?;
    Ok(info)
}

/// The signature algorithms chains may use: ring's, as the TLS layer.
fn algorithms() -> &'static [&'static dyn rustls::pki_types::SignatureVerificationAlgorithm] {
    rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all
}

fn unix(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(secs).unwrap_or(0),
    ))
}

/// A chain [`verify_chain`] accepted.
#[derive(Debug, Clone)]
pub struct Chained {
    pub ca: Arc<CaCertificate>,
    /// When the first certificate above the leaf (an intermediate sent with it, or the CA)
    /// expires, in seconds since the epoch: the chain is no longer valid then.
    pub not_after: i64,
}

/// Verifies that `leaf` (sent with `intermediates`) chains to one of `cas` and that every
/// certificate on the way, the CA included, is valid at `now_secs`.
pub fn verify_chain(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    cas: &[Arc<CaCertificate>],
    now_secs: i64,
) -> Result<Chained, X509Error> {
    let leaf_der = CertificateDer::from(leaf);
    let end_entity = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| X509Error::Malformed(format!("{e:?}")))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let mut last = String::from("no verified CA certificate");
    for ca in cas {
        let ca_der = CertificateDer::from(&*ca.der);
        let Ok(anchor) = webpki::anchor_from_trusted_cert(&ca_der) else {
            continue;
        };
        match end_entity.verify_for_usage(
            algorithms(),
            &[anchor],
            &intermediates,
            unix(now_secs),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        ) {
            Ok(_) => {
                let info = inspect(&ca.der)?;
                if now_secs > info.not_after {
                    return Err(X509Error::CaExpired {
                        name: ca.name.clone(),
                        at: show_time(info.not_after),
                    });
                }
                let not_after = intermediates
                    .iter()
                    .filter_map(|d| inspect(d).ok())
                    .map(|i| i.not_after)
                    .fold(info.not_after, i64::min);
                return Ok(Chained {
                    ca: Arc::clone(ca),
                    not_after,
                });
            }
            Err(webpki::Error::CertExpired { not_after, .. }) => {
                return Err(X509Error::Expired(show_time(
                    i64::try_from(not_after.as_secs()).unwrap_or(i64::MAX),
                )));
            }
            Err(webpki::Error::CertNotValidYet { not_before, .. }) => {
                return Err(X509Error::NotYetValid(show_time(
                    i64::try_from(not_before.as_secs()).unwrap_or(i64::MAX),
                )));
            }
            Err(e) => last = format!("{e:?}"),
        }
    }
    Err(X509Error::Chain(last))
}

/// IoT Hub's proof of possession: `cert` is signed by the CA `ca`, names `code` as its
/// subject CN, and is valid at `now_secs`.
pub fn check_verification(
    ca: &[u8],
    code: &str,
    cert: &[u8],
    now_secs: i64,
) -> Result<(), X509Error> {
    let ca_cert = parse(ca)?;
    let proof = parse(cert)?;
    let cn = inspect(cert)?.common_name.unwrap_or_default();
    if !cn.eq_ignore_ascii_case(code) {
        return Err(X509Error::Verification(format!(
            "subject CN {cn:?} is not the verification code"
        )));
    }
    if proof.issuer().as_raw() != ca_cert.subject().as_raw() {
        return Err(X509Error::Verification(
            "issuer is not the CA certificate's subject".into(),
        ));
    }
    proof
        .verify_signature(Some(ca_cert.public_key()))
        .map_err(|_| X509Error::Verification("signature is not the CA key's".into()))?;
    inspect(cert)?.check_time(now_secs)
}

#[cfg(test)]
mod tests;
