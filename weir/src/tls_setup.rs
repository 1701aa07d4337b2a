//! TLS out of the box: a development CA and a server certificate, made at first start.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use weir_storage::secret::write_private;

/// Where the certificate and key Weir serves come from.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The names the server certificate must carry: what devices dial.
fn names(hostname: &str) -> Vec<String> {
    let mut n = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !n.iter().any(|x| x.eq_ignore_ascii_case(hostname)) {
        n.push(hostname.to_string());
    }
    n
}

/// Ensures `<data_dir>/tls/{ca.pem, ca.key, server.pem, server.key}` exist and cover
/// `hostname`. Keys are written 0600. Reuses what is there when it still fits.
pub fn ensure_dev_certs(data_dir: &Path, hostname: &str) -> anyhow::Result<TlsFiles> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert, key, marker) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("server.names"),
    );
    let wanted = names(hostname).join(",");
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
    };
    if cert.exists()
        && key.exists()
        && ca_pem.exists()
        && std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted)
    {
        return Ok(files);
    }
    let issuer = if ca_pem.exists() && ca_key.exists() {
        let key = KeyPair::from_pem(&std::fs::read_to_string(&ca_key)?)
            .context("reading the development CA key")?;
        Issuer::from_ca_cert_pem(&std::fs::read_to_string(&ca_pem)?, key)
            .context("reading the development CA")?
    } else {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Weir development CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(params, key)?;
        std::fs::write(&ca_pem, ca.pem())?;
        write_private(&ca_key, key_pem.as_bytes())?;
        let key = KeyPair::from_pem(&key_pem)?;
        Issuer::from_ca_cert_pem(&ca.pem(), key)?
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, hostname);
    for n in names(hostname) {
        params.subject_alt_names.push(match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.try_into()?),
        });
    }
    let server_key = KeyPair::generate()?;
    let server = params.signed_by(&server_key, &issuer)?;
    std::fs::write(&cert, server.pem())?;
    write_private(&key, server_key.serialize_pem().as_bytes())?;
    std::fs::write(&marker, &wanted)?;
    tracing::info!(
        ca = %ca_pem.display(),
        cert = %cert.display(),
        names = %wanted,
        "created a development TLS certificate; clients should trust the CA file"
    );
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_certs_with_private_keys_and_reuses_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = ensure_dev_certs(dir.path(), "myhub.example").expect("certs");
        let mode = std::fs::metadata(&f.key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(dir.path().join("tls/ca.key"))
            .expect("ca key")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let before = std::fs::read(&f.cert).expect("cert");
        ensure_dev_certs(dir.path(), "myhub.example").expect("again");
        assert_eq!(before, std::fs::read(&f.cert).expect("cert"));
        ensure_dev_certs(dir.path(), "other.example").expect("new name");
        assert_ne!(before, std::fs::read(&f.cert).expect("cert"));
        weir_gateways::tls::server_config(&f.cert, &f.key, &[]).expect("rustls accepts it");
    }
}
