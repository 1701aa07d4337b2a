//! What devices and service callers send about certificates and registrations: client
//! certificate chains (DER) judged at CONNECT, certificate text uploaded to the REST API,
//! proofs of possession, and the provisioning service's usernames and topics.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use weir_core::CaCertificate;
use weir_gateways::mqtt::dps;
use weir_gateways::x509;

fuzz_target!(|data: &[u8]| {
    let now = 1_800_000_000;
    // As a certificate: inspected, checked as a CA, chained to itself as a CA.
    if let Ok(info) = x509::inspect(data) {
        let _ = info.check_time(now);
        assert!(info.sha1.len() == 40 && info.sha256.len() == 64);
    }
    let _ = x509::check_ca(data, now);
    let (half, rest) = data.split_at(data.len() / 2);
    let ca = Arc::new(CaCertificate {
        name: "fuzz".into(),
        der: Arc::from(half),
        digest: 0,
    });
    let _ = x509::verify_chain(rest, &[half.to_vec()], &[ca], now);
    let _ = x509::check_verification(half, "CODE", rest, now);
    // As text: a certificate upload, a registration username or topic.
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = x509::decode_certificate(s);
        if let Some((scope, registration)) = dps::parse_username(s) {
            assert!(!scope.is_empty() && !registration.is_empty());
        }
        let _ = dps::parse_request(s);
        let _ = weir_core::normalize_thumbprint(s);
    }
});
