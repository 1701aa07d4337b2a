//! X.509 authentication in the MQTT session core: a CONNECT without a password is judged
//! by the client certificate chain the TLS layer saw, against the registry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};
use tokio::time::Instant;
use weir_core::{
    AuthMethod, CaCertificate, Credential, DeviceAuth, DeviceDirectory, DeviceRecord, Peer,
    key_digest,
};
use weir_gateways::mqtt::codec::{self, Inbound};
use weir_gateways::mqtt::dialect::IotHub;
use weir_gateways::mqtt::session::{Action, End, Session, SessionConfig};
use weir_gateways::x509;

/// 2027-01-15.
const NOW_MS: i64 = 1_800_000_000_000;

struct Directory {
    devices: HashMap<String, Arc<DeviceRecord>>,
    cas: Vec<Arc<CaCertificate>>,
}

impl DeviceDirectory for Directory {
    fn get(&self, id: &str) -> Option<Arc<DeviceRecord>> {
        self.devices.get(id).cloned()
    }

    fn verified_cas(&self) -> Arc<[Arc<CaCertificate>]> {
        Arc::from(self.cas.clone())
    }
}

fn record(id: &str, auth: DeviceAuth) -> (String, Arc<DeviceRecord>) {
    let mut rec = DeviceRecord::with_tags(id, serde_json::json!({}));
    rec.generation_id = "g1".into();
    rec.auth = auth;
    (id.to_owned(), Arc::new(rec))
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.distinguished_name.push(DnType::CommonName, name);
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2030, 1, 1);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

fn leaf(cn: &str, until: i32, by: Option<&CertifiedIssuer<'static, KeyPair>>) -> Vec<u8> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(until, 1, 1);
    let key = KeyPair::generate().expect("key");
    let cert = match by {
        Some(ca) => params.signed_by(&key, &**ca),
        None => params.self_signed(&key),
    };
    cert.expect("cert").der().to_vec()
}

fn session(directory: Arc<Directory>, chain: Option<Vec<u8>>) -> (Session, Instant) {
    let dialect = Arc::new(IotHub {
        hub_name: "hub".into(),
        directory,
        provisioning: None,
        translations: Arc::from(Vec::new()),
    });
    let config = SessionConfig {
        max_packet: 64 * 1024,
        max_connect: 8 * 1024,
        connect_timeout: Duration::from_secs(10),
    };
    let peer = Peer {
        addr: "127.0.0.1:5000".parse().expect("addr"),
        protocol: "mqtt",
        client_certs: chain.map(|c| Arc::from(vec![c])),
    };
    let now = Instant::now();
    (Session::new(dialect, config, peer, now), now)
}

/// CONNECTs as `device` without a password; returns the CONNACK code and, when accepted,
/// the identity.
fn connect(
    directory: &Arc<Directory>,
    device: &str,
    chain: Option<Vec<u8>>,
) -> (u8, Option<Arc<weir_core::Identity>>, Session) {
    let (mut s, now) = session(Arc::clone(directory), chain);
    let mut out = BytesMut::new();
    codec::connect(
        device,
        60,
        false,
        Some((&format!("hub/{device}/?api-version=2019-10-01"), "")),
        &mut out,
    );
    s.received(&mut out, now, NOW_MS);
    let mut actions = Vec::new();
    while let Some(a) = s.next_action() {
        actions.push(a);
    }
    if let [Action::Register { identity, .. }] = actions.as_slice() {
        return (0, Some(Arc::clone(identity)), s);
    }
    let mut buf = BytesMut::from(s.output().unwrap_or_default());
    let code = match codec::decode(&mut buf, 1 << 16) {
        Ok(Some(Inbound::ConnAck { code, .. })) => code,
        other => panic!("no CONNACK: {other:?} {actions:?}"),
    };
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Close(End::Refused(_)))),
        "{actions:?}"
    );
    (code, None, s)
}

#[test]
fn certificates_authenticate_the_devices_they_name_and_nothing_else() {
    let root = ca("root");
    let stranger = ca("stranger");
    let own = leaf("thumb", 2030, None);
    let own_info = x509::inspect(&own).expect("inspect");
    let secondary = leaf("thumb", 2030, None);
    let secondary_sha256 = x509::inspect(&secondary).expect("inspect").sha256;
    let expired_own = leaf("thumb-old", 2021, None);
    let expired_info = x509::inspect(&expired_own).expect("inspect");
    let directory = Arc::new(Directory {
        devices: [
            record(
                "thumb",
                DeviceAuth::SelfSigned {
                    primary_thumbprint: own_info.sha1.clone(),
                    secondary_thumbprint: Some(secondary_sha256.clone()),
                },
            ),
            record(
                "thumb-old",
                DeviceAuth::SelfSigned {
                    primary_thumbprint: expired_info.sha256.clone(),
                    secondary_thumbprint: None,
                },
            ),
            record("chained", DeviceAuth::CertificateAuthority),
            record(
                "keyed",
                DeviceAuth::Sas {
                    primary_key: "c2Vzc2lvbi10ZXN0LWtleS0xMjM0NTY3OA==".into(),
                    secondary_key: "b3RoZXIta2V5LWZvci10ZXN0cy0xMjM0NQ==".into(),
                },
            ),
        ]
        .into(),
        cas: vec![Arc::new(CaCertificate {
            name: "root".into(),
            der: Arc::from(root.der().to_vec()),
            digest: key_digest("root-sha256"),
        })],
    });

    let (code, id, s) = connect(&directory, "thumb", Some(own.clone()));
    let id = id.unwrap_or_else(|| panic!("refused with {code}"));
    assert_eq!(id.auth, AuthMethod::X509Thumbprint);
    assert_eq!(
        id.credential,
        Credential::X509Thumbprint(key_digest(&own_info.sha1))
    );
    assert_eq!(
        id.expires,
        Some(own_info.not_after),
        "the session ends with the certificate"
    );
    assert!(
        s.peer().client_certs.is_none(),
        "the chain is not kept after CONNECT"
    );

    let (code, id, _) = connect(&directory, "thumb", Some(secondary));
    assert_eq!(
        (code, id.is_some()),
        (0, true),
        "the secondary thumbprint (SHA-256)"
    );

    let (_, id, _) = connect(
        &directory,
        "chained",
        Some(leaf("chained", 2030, Some(&root))),
    );
    let id = id.expect("a chain to the verified CA");
    assert_eq!(id.auth, AuthMethod::X509Ca);
    assert_eq!(id.credential, Credential::X509Ca(key_digest("root-sha256")));

    let refusals: Vec<(&str, Option<Vec<u8>>, u8)> = vec![
        ("thumb", Some(leaf("thumb", 2030, None)), 5),
        ("thumb-old", Some(expired_own), 5),
        ("chained", Some(leaf("chained", 2030, Some(&stranger))), 5),
        ("chained", Some(leaf("chained", 2021, Some(&root))), 5),
        ("chained", Some(leaf("someone-else", 2030, Some(&root))), 5),
        ("keyed", Some(own.clone()), 5),
        ("ghost", Some(own.clone()), 5),
        ("thumb", Some(b"not a certificate".to_vec()), 5),
        ("thumb", None, 4),
    ];
    for (device, chain, want) in refusals {
        let (code, id, _) = connect(&directory, device, chain);
        assert!(id.is_none(), "{device} was accepted");
        assert_eq!(code, want, "{device}");
    }
}

#[test]
fn a_thumbprint_that_is_replaced_revokes_the_connection() {
    let own = leaf("thumb", 2030, None);
    let info = x509::inspect(&own).expect("inspect");
    let (name, rec) = record(
        "thumb",
        DeviceAuth::SelfSigned {
            primary_thumbprint: info.sha1.clone(),
            secondary_thumbprint: None,
        },
    );
    let directory = Arc::new(Directory {
        devices: [(name, Arc::clone(&rec))].into(),
        cas: Vec::new(),
    });
    let (_, id, _) = connect(&directory, "thumb", Some(own));
    let id = id.expect("accepted");
    assert_eq!(id.revoked_by(Some(&rec)), None);
    let mut replaced = (*rec).clone();
    replaced.auth = DeviceAuth::SelfSigned {
        primary_thumbprint: "AB".repeat(20),
        secondary_thumbprint: None,
    };
    assert_eq!(
        id.revoked_by(Some(&replaced)),
        Some(weir_core::Revocation::Credential)
    );
    let mut keyed = (*rec).clone();
    keyed.auth = DeviceAuth::CertificateAuthority;
    assert_eq!(
        id.revoked_by(Some(&keyed)),
        Some(weir_core::Revocation::Credential),
        "a change of authentication type revokes too"
    );
}
