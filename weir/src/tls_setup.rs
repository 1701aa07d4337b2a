//! TLS out of the box: a development CA and a server certificate, made at first start.
//!
//! The CA is the hub's own: its name is unique (so clients that trust several hubs' CAs in
//! one bundle find the right issuer), it lives a few years, and name constraints limit it
//! to the names this hub answers to, so its key cannot vouch for anyone else's site. The
//! server certificate names its issuer by key identifier and is renewed before it expires.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{Datelike, Duration, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CidrSubnet, DnType, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};
use weir_storage::fsutil;
use weir_storage::secret::{random_hex, write_private};

/// Where the certificate and key Weir serves come from.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

const CA_YEARS: i32 = 5;
const SERVER_DAYS: i64 = 397;
/// A certificate this close to its end is replaced at start-up.
const RENEW_BEFORE_DAYS: i64 = 30;

/// The names the server certificate must carry: what devices dial.
fn names(hostname: &str) -> Vec<String> {
    let mut n = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !n.iter().any(|x| x.eq_ignore_ascii_case(hostname)) {
        n.push(hostname.to_string());
    }
    n
}

fn day(d: chrono::DateTime<Utc>) -> time::OffsetDateTime {
    rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
}

/// When the PEM certificate at `path` stops being valid, and the names a CA's constraints
/// permit (empty for a certificate without them).
fn inspect(path: &Path) -> Option<(i64, Vec<String>)> {
    let pem = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let mut permitted = Vec::new();
    if let Ok(Some(nc)) = cert.name_constraints() {
        for s in nc.value.permitted_subtrees.iter().flatten() {
            match &s.base {
                x509_parser::extensions::GeneralName::DNSName(n) => permitted.push(n.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) if b.len() == 8 => {
                    permitted.push(IpAddr::from([b[0], b[1], b[2], b[3]]).to_string())
                }
                _ => {}
            }
        }
    }
    Some((not_after, permitted))
}

fn fresh(not_after: i64) -> bool {
    not_after > (Utc::now() + Duration::days(RENEW_BEFORE_DAYS)).timestamp()
}

/// Creates a CA for `hostname` whose constraints permit exactly `wanted`.
fn new_ca(ca_pem: &Path, ca_key: &Path, hostname: &str, wanted: &[String]) -> anyhow::Result<()> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Weir");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Weir development CA for {hostname} {}", random_hex(4)?),
    );
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = Utc::now();
    params.not_before = day(now - Duration::days(1));
    params.not_after = rcgen::date_time_ymd(now.year() + CA_YEARS, now.month() as u8, 1);
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: wanted
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                    ip,
                    if ip.is_ipv4() { 32 } else { 128 },
                )),
                Err(_) => GeneralSubtree::DnsName(n.clone()),
            })
            .collect(),
        excluded_subtrees: Vec::new(),
    });
    let key = KeyPair::generate()?;
    let key_pem = key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(params, key)?;
    write_private(ca_pem, ca.pem().as_bytes())?;
    write_private(ca_key, key_pem.as_bytes())?;
    Ok(())
}

/// Ensures `<data_dir>/tls/{ca.pem, ca.key, server.pem, server.key}` exist, cover
/// `hostname` and are not about to expire. Files are written 0600 in a 0700 directory.
/// Reuses what is there when it still fits.
pub fn ensure_dev_certs(data_dir: &Path, hostname: &str) -> anyhow::Result<TlsFiles> {
    let dir = data_dir.join("tls");
    fsutil::create_dir_durable(&dir)
        .and_then(|()| fsutil::restrict(&dir))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let wanted = names(hostname);
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
    };
    let ca = inspect(&ca_pem).filter(|_| ca_key.exists());
    let ca_ok = ca.as_ref().is_some_and(|(end, permitted)| {
        fresh(*end)
            && wanted
                .iter()
                .all(|w| permitted.iter().any(|p| p.eq_ignore_ascii_case(w)))
    });
    if !ca_ok {
        if ca.is_some() {
            tracing::warn!(
                ca = %ca_pem.display(),
                "the development CA expires soon or does not cover this hub's names; made a new one: clients must trust the new CA file"
            );
        }
        new_ca(&ca_pem, &ca_key, hostname, &wanted)?;
    }
    let server_ok = ca_ok
        && key.exists()
        && inspect(&cert).is_some_and(|(end, _)| fresh(end))
        && std::fs::read_to_string(dir.join("server.names")).is_ok_and(|m| m == wanted.join(","));
    if server_ok {
        return Ok(files);
    }
    let issuer = Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(&ca_pem)?,
        KeyPair::from_pem(&std::fs::read_to_string(&ca_key)?)
            .context("reading the development CA key")?,
    )
    .context("reading the development CA")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, hostname);
    for n in &wanted {
        params.subject_alt_names.push(match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.clone().try_into()?),
        });
    }
    let now = Utc::now();
    params.not_before = day(now - Duration::days(1));
    params.not_after = day(now + Duration::days(SERVER_DAYS));
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server = params.signed_by(&server_key, &issuer)?;
    write_private(&cert, server.pem().as_bytes())?;
    write_private(&key, server_key.serialize_pem().as_bytes())?;
    write_private(&dir.join("server.names"), wanted.join(",").as_bytes())?;
    tracing::info!(
        ca = %ca_pem.display(),
        cert = %cert.display(),
        names = %wanted.join(","),
        "created a development TLS certificate; clients should trust the CA file"
    );
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_constrained_certs_with_private_files_and_reuses_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = ensure_dev_certs(dir.path(), "myhub.example").expect("certs");
        for name in ["ca.key", "ca.pem", "server.key", "server.pem"] {
            let mode = std::fs::metadata(dir.path().join("tls").join(name))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let (ca_end, permitted) = inspect(&dir.path().join("tls/ca.pem")).expect("ca");
        assert_eq!(permitted, vec!["localhost", "127.0.0.1", "myhub.example"]);
        let years = (ca_end - Utc::now().timestamp()) / (365 * 86_400);
        assert!((4..=5).contains(&years), "CA valid for {years} years");
        let before = std::fs::read(&f.cert).expect("cert");
        let ca_before = std::fs::read(dir.path().join("tls/ca.pem")).expect("ca");
        ensure_dev_certs(dir.path(), "myhub.example").expect("again");
        assert_eq!(before, std::fs::read(&f.cert).expect("cert"));
        ensure_dev_certs(dir.path(), "other.example").expect("new name");
        assert_ne!(before, std::fs::read(&f.cert).expect("cert"));
        assert_ne!(
            ca_before,
            std::fs::read(dir.path().join("tls/ca.pem")).expect("ca"),
            "the old CA may not vouch for the new name"
        );
        weir_gateways::tls::server_config(&f.cert, &f.key, &[]).expect("rustls accepts it");
    }
}
