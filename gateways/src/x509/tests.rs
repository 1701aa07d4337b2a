use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// 2027-01-15, inside every "valid" certificate below (2020–2030).
const NOW: i64 = 1_800_000_000;

fn ca(name: &str, until: i32) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(until, 1, 1);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

fn leaf_params(cn: &str, from: i32, until: i32) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = date_time_ymd(from, 1, 1);
    params.not_after = date_time_ymd(until, 1, 1);
    params
}

fn signed(cn: &str, from: i32, until: i32, by: &CertifiedIssuer<'static, KeyPair>) -> Vec<u8> {
    let key = KeyPair::generate().expect("key");
    leaf_params(cn, from, until)
        .signed_by(&key, &**by)
        .expect("leaf")
        .der()
        .to_vec()
}

fn registered(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> Arc<CaCertificate> {
    Arc::new(CaCertificate {
        name: name.into(),
        der: Arc::from(ca.der().to_vec()),
        digest: weir_core::key_digest(name),
    })
}

#[test]
fn thumbprints_common_names_and_validity() {
    let key = KeyPair::generate().expect("key");
    let der = leaf_params("dev1", 2020, 2030)
        .self_signed(&key)
        .expect("cert")
        .der()
        .to_vec();
    let info = inspect(&der).expect("parses");
    assert_eq!(info.common_name.as_deref(), Some("dev1"));
    assert_eq!((info.sha1.len(), info.sha256.len()), (40, 64));
    let colons: Vec<String> = info
        .sha1
        .to_lowercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert_eq!(
        weir_core::normalize_thumbprint(&colons.join(":")).as_deref(),
        Some(info.sha1.as_str()),
        "openssl's fingerprint form is the same thumbprint"
    );
    assert!(info.check_time(NOW).is_ok());
    assert!(matches!(
        info.check_time(1_900_000_000),
        Err(X509Error::Expired(_))
    ));
    assert!(matches!(
        info.check_time(1_500_000_000),
        Err(X509Error::NotYetValid(_))
    ));
    assert!(matches!(inspect(b"garbage"), Err(X509Error::Malformed(_))));
}

#[test]
fn a_chain_is_accepted_only_to_a_registered_ca_and_while_everything_on_it_is_valid() {
    let root = ca("root", 2030);
    let other = ca("other", 2030);
    let cas = [registered(&other, "other"), registered(&root, "root")];
    let good = signed("dev1", 2020, 2030, &root);
    let found = verify_chain(&good, &[], &cas, NOW).expect("chains to root");
    assert_eq!(found.ca.name, "root");
    assert_eq!(found.not_after, inspect(root.der()).expect("ca").not_after);
    assert!(matches!(
        verify_chain(&good, &[], &cas[..1], NOW),
        Err(X509Error::Chain(_))
    ));
    assert!(matches!(
        verify_chain(&good, &[], &[], NOW),
        Err(X509Error::Chain(_))
    ));
    let expired = signed("dev1", 2020, 2021, &root);
    assert!(matches!(
        verify_chain(&expired, &[], &cas, NOW),
        Err(X509Error::Expired(_))
    ));
    let early = signed("dev1", 2029, 2030, &root);
    assert!(matches!(
        verify_chain(&early, &[], &cas, NOW),
        Err(X509Error::NotYetValid(_))
    ));
    let old_root = ca("old", 2026);
    let under_old = signed("dev1", 2020, 2030, &old_root);
    assert!(matches!(
        verify_chain(&under_old, &[], &[registered(&old_root, "old")], NOW),
        Err(X509Error::CaExpired { .. })
    ));
}

#[test]
fn an_intermediate_sent_with_the_leaf_completes_the_chain() {
    let root = ca("root", 2030);
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params
        .distinguished_name
        .push(DnType::CommonName, "intermediate");
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2030, 1, 1);
    let mid = CertifiedIssuer::signed_by(params, KeyPair::generate().expect("key"), &*root)
        .expect("intermediate");
    let leaf = signed("dev1", 2020, 2030, &mid);
    let cas = [registered(&root, "root")];
    assert!(verify_chain(&leaf, &[mid.der().to_vec()], &cas, NOW).is_ok());
    assert!(
        matches!(
            verify_chain(&leaf, &[], &cas, NOW),
            Err(X509Error::Chain(_))
        ),
        "without the intermediate there is no path"
    );
}

#[test]
fn proof_of_possession_needs_the_code_as_cn_and_the_cas_signature() {
    let root = ca("root", 2030);
    let other = ca("other", 2030);
    let code = "3F2A9C0B";
    let proof = signed(code, 2020, 2030, &root);
    assert!(check_verification(root.der(), code, &proof, NOW).is_ok());
    assert!(check_verification(root.der(), &code.to_lowercase(), &proof, NOW).is_ok());
    assert!(matches!(
        check_verification(root.der(), "OTHERCODE", &proof, NOW),
        Err(X509Error::Verification(_))
    ));
    let forged = signed(code, 2020, 2030, &other);
    assert!(matches!(
        check_verification(root.der(), code, &forged, NOW),
        Err(X509Error::Verification(_))
    ));
}

#[test]
fn only_ca_certificates_register_and_both_encodings_decode() {
    let root = ca("root", 2030);
    assert!(check_ca(root.der(), NOW).is_ok());
    let leaf = signed("dev1", 2020, 2030, &root);
    assert!(matches!(check_ca(&leaf, NOW), Err(X509Error::NotCa(_))));
    assert_eq!(
        decode_certificate(&root.pem()).expect("pem"),
        root.der().to_vec()
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(root.der());
    assert_eq!(
        decode_certificate(&b64).expect("base64"),
        root.der().to_vec()
    );
    assert!(decode_certificate("not a certificate").is_err());
}
