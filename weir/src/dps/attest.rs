//! What an enrollment lets a registration attest with, and which enrollment a
//! registration came through (I/O-free).

use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use weir_core::{Attestations, CaCertificate, Credential, key_digest, normalize_thumbprint};
use weir_gateways::x509;
use weir_storage::dps::Enrollment;

/// IoT DPS's group-derived device key: base64(HMAC-SHA256(base64decode(group key),
/// registration id)). `None` for a key that is not base64.
pub fn derive_key(group_key: &str, registration_id: &str) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(group_key)
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(registration_id.as_bytes());
    Some(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

fn kind(e: &Enrollment) -> &str {
    e.attestation["type"].as_str().unwrap_or("")
}

/// The symmetric keys of an enrollment (primary, secondary).
pub fn keys(e: &Enrollment) -> Vec<String> {
    if kind(e) != "symmetricKey" {
        return Vec::new();
    }
    let k = &e.attestation["symmetricKey"];
    ["primaryKey", "secondaryKey"]
        .iter()
        .filter_map(|n| k[n].as_str().map(str::to_owned))
        .collect()
}

/// The certificates of an X.509 enrollment: client certificates for an individual one,
/// signing (CA) certificates for a group.
pub fn certificates(e: &Enrollment) -> Vec<Vec<u8>> {
    if kind(e) != "x509" {
        return Vec::new();
    }
    let x = &e.attestation["x509"];
    let set = if x["signingCertificates"].is_object() {
        &x["signingCertificates"]
    } else {
        &x["clientCertificates"]
    };
    ["primary", "secondary"]
        .iter()
        .filter_map(|n| set[n]["certificate"].as_str())
        .filter_map(|c| x509::decode_certificate(c).ok())
        .collect()
}

fn ca(der: Vec<u8>) -> Option<Arc<CaCertificate>> {
    let info = x509::inspect(&der).ok()?;
    Some(Arc::new(CaCertificate {
        name: info.subject,
        digest: key_digest(&info.sha256),
        der: Arc::from(der),
    }))
}

/// Everything `registration_id` may attest with: its individual enrollment's alone when
/// it has one (as DPS), else what the enabled groups give it.
pub fn attestations(
    registration_id: &str,
    individual: Option<&Enrollment>,
    groups: &[Enrollment],
) -> Attestations {
    let mut out = Attestations::default();
    if let Some(e) = individual {
        if e.is_enabled() {
            out.keys = keys(e);
            for der in certificates(e) {
                if let Ok(info) = x509::inspect(&der) {
                    out.thumbprints.push(info.sha1);
                    out.thumbprints.push(info.sha256);
                }
            }
        }
        return out;
    }
    for g in groups.iter().filter(|g| g.is_enabled()) {
        out.keys.extend(
            keys(g)
                .iter()
                .filter_map(|k| derive_key(k, registration_id)),
        );
        out.cas.extend(certificates(g).into_iter().filter_map(ca));
    }
    out
}

/// The group a registration authenticated through, judged by its credential.
pub fn group_of<'g>(
    registration_id: &str,
    credential: Credential,
    groups: &'g [Enrollment],
) -> Option<&'g Enrollment> {
    groups
        .iter()
        .filter(|g| g.is_enabled())
        .find(|g| match credential {
            Credential::SasKey(d) => keys(g)
                .iter()
                .filter_map(|k| derive_key(k, registration_id))
                .any(|k| key_digest(&k) == d),
            Credential::X509Ca(d) => certificates(g)
                .into_iter()
                .filter_map(ca)
                .any(|c| c.digest == d),
            Credential::X509Thumbprint(_) | Credential::Password => false,
        })
}

/// How the device authenticates at its hub, in the registry's REST shape: with the keys
/// (or certificate) it attested with here.
pub fn hub_authentication(registration_id: &str, enrollment: &Enrollment, group: bool) -> Value {
    let keys: Vec<String> = if group {
        keys(enrollment)
            .iter()
            .filter_map(|k| derive_key(k, registration_id))
            .collect()
    } else {
        keys(enrollment)
    };
    if let [primary, rest @ ..] = keys.as_slice() {
        let secondary = rest.first().unwrap_or(primary);
        return serde_json::json!({"type": "sas", "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary}});
    }
    if group {
        return serde_json::json!({"type": "certificateAuthority"});
    }
    let thumbprints: Vec<String> = certificates(enrollment)
        .iter()
        .filter_map(|d| x509::inspect(d).ok())
        .filter_map(|i| normalize_thumbprint(&i.sha1))
        .collect();
    serde_json::json!({"type": "selfSigned", "x509Thumbprint": {
        "primaryThumbprint": thumbprints.first(),
        "secondaryThumbprint": thumbprints.get(1),
    }})
}

/// Whether a hub device's `authentication` (as the hub shows it) is what a registration
/// would give it: the same type and the same keys or primary thumbprint.
pub fn same_authentication(existing: &Value, ours: &Value) -> bool {
    let field = |v: &Value, a: &str, b: &str| v[a][b].as_str().map(str::to_ascii_uppercase);
    existing["type"] == ours["type"]
        && match ours["type"].as_str() {
            Some("sas") => ["primaryKey", "secondaryKey"]
                .iter()
                .all(|k| existing["symmetricKey"][k] == ours["symmetricKey"][k]),
            Some("selfSigned") => {
                field(existing, "x509Thumbprint", "primaryThumbprint")
                    == field(ours, "x509Thumbprint", "primaryThumbprint")
            }
            Some("certificateAuthority") => true,
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrollment(v: Value) -> Enrollment {
        serde_json::from_value(v).expect("enrollment")
    }

    #[test]
    fn group_keys_are_derived_as_dps_derives_them() {
        // The key Azure's documentation derives for "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"
        // is computed the same way by the SDK samples; here: a fixed vector.
        let group = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWo=";
        let derived = derive_key(group, "dev-1").expect("derive");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(group)
            .expect("b64");
        let mut mac = Hmac::<Sha256>::new_from_slice(&raw).expect("mac");
        mac.update(b"dev-1");
        assert_eq!(
            derived,
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        assert_ne!(derived, derive_key(group, "dev-2").expect("derive"));
        assert!(derive_key("not base64!", "dev-1").is_none());
    }

    #[test]
    fn an_individual_enrollment_wins_over_groups_and_disabled_ones_attest_nothing() {
        let key = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWo=";
        let individual = enrollment(serde_json::json!({
            "registrationId": "d1",
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "cA==", "secondaryKey": "cw=="}}}));
        let group = enrollment(serde_json::json!({
            "enrollmentGroupId": "g",
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}}));
        let groups = vec![group];
        assert_eq!(
            attestations("d1", Some(&individual), &groups).keys,
            vec!["cA==", "cw=="]
        );
        let from_group = attestations("d2", None, &groups).keys;
        assert_eq!(from_group[0], derive_key(key, "d2").expect("derive"));
        let used = Credential::SasKey(key_digest(&from_group[0]));
        assert!(group_of("d2", used, &groups).is_some());
        assert!(
            group_of("d3", used, &groups).is_none(),
            "another id derives another key"
        );
        let mut off = individual.clone();
        off.provisioning_status = "disabled".into();
        assert!(attestations("d1", Some(&off), &groups).keys.is_empty());
        let auth = hub_authentication("d2", &groups[0], true);
        assert_eq!(auth["symmetricKey"]["primaryKey"], from_group[0].as_str());
        assert!(same_authentication(&auth, &auth));
        let other = hub_authentication("d3", &groups[0], true);
        assert!(!same_authentication(&other, &auth), "another device's keys");
        let ca = serde_json::json!({"type": "certificateAuthority"});
        assert!(!same_authentication(&ca, &auth));
    }
}
