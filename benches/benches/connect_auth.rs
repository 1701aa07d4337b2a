//! What a device's CONNECT costs the hub by how it authenticates: the credential check
//! (SAS token, X.509 thumbprint, X.509 chain to a verified CA) and the TLS 1.2 handshake
//! with and without a client certificate (what the Azure SDKs negotiate), in memory.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use weir_core::{CaCertificate, DeviceAuth, DeviceDirectory, DeviceId, DeviceRecord, key_digest};
use weir_gateways::mqtt::connect::{verify_certificate, verify_device};
use weir_gateways::{sas, x509};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "c2Vzc2lvbi10ZXN0LWtleS0xMjM0NTY3OA==";
const NOW: i64 = 1_800_000_000;

struct Directory {
    devices: HashMap<String, Arc<DeviceRecord>>,
    cas: Arc<[Arc<CaCertificate>]>,
}

impl DeviceDirectory for Directory {
    fn get(&self, id: &str) -> Option<Arc<DeviceRecord>> {
        self.devices.get(id).cloned()
    }

    fn verified_cas(&self) -> Arc<[Arc<CaCertificate>]> {
        Arc::clone(&self.cas)
    }
}

fn leaf(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2030, 1, 1);
    p
}

fn record(id: &str, auth: DeviceAuth) -> (String, Arc<DeviceRecord>) {
    let mut r = DeviceRecord::with_tags(id, serde_json::json!({}));
    r.generation_id = "g".into();
    r.auth = auth;
    (id.into(), Arc::new(r))
}

fn credentials(c: &mut Criterion) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "root");
    ca_params.not_before = date_time_ymd(2020, 1, 1);
    ca_params.not_after = date_time_ymd(2030, 1, 1);
    let root =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let own_key = KeyPair::generate().expect("key");
    let own = leaf("thumb")
        .self_signed(&own_key)
        .expect("cert")
        .der()
        .to_vec();
    let chained_key = KeyPair::generate().expect("key");
    let chained = leaf("chained")
        .signed_by(&chained_key, &*root)
        .expect("cert")
        .der()
        .to_vec();
    let thumb = x509::inspect(&own).expect("inspect").sha256;
    let directory = Directory {
        devices: [
            record(
                "keyed",
                DeviceAuth::Sas {
                    primary_key: KEY.into(),
                    secondary_key: KEY.into(),
                },
            ),
            record(
                "thumb",
                DeviceAuth::SelfSigned {
                    primary_thumbprint: thumb,
                    secondary_thumbprint: None,
                },
            ),
            record("chained", DeviceAuth::CertificateAuthority),
        ]
        .into(),
        cas: Arc::from(vec![Arc::new(CaCertificate {
            name: "root".into(),
            der: Arc::from(root.der().to_vec()),
            digest: key_digest("root"),
        })]),
    };
    let token = sas::build("hub/devices/keyed", KEY, NOW + 3600, None).expect("token");
    let mut g = c.benchmark_group("connect_auth");
    g.bench_function("sas_token", |b| {
        b.iter(|| {
            let id = DeviceId::parse("keyed").expect("id");
            let t = sas::parse(&token).expect("parse");
            black_box(verify_device(id, &t, "hub", &directory, NOW).expect("ok"))
        })
    });
    for (name, device, chain) in [
        ("x509_thumbprint", "thumb", vec![own]),
        ("x509_ca_chain", "chained", vec![chained]),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let id = DeviceId::parse(device).expect("id");
                black_box(verify_certificate(id, &chain, &directory, NOW).expect("ok"))
            })
        });
    }
    g.finish();
}

/// Runs one TLS 1.2 handshake between `client` and `server` in memory.
fn handshake(client: &Arc<rustls::ClientConfig>, server: &Arc<rustls::ServerConfig>) {
    let name = ServerName::try_from("localhost").expect("name");
    let mut c = rustls::ClientConnection::new(Arc::clone(client), name).expect("client");
    let mut s = rustls::ServerConnection::new(Arc::clone(server)).expect("server");
    let mut buf = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        c.write_tls(&mut buf).expect("client write");
        s.read_tls(&mut buf.as_slice()).expect("server read");
        s.process_new_packets().expect("server");
        buf.clear();
        s.write_tls(&mut buf).expect("server write");
        c.read_tls(&mut buf.as_slice()).expect("client read");
        c.process_new_packets().expect("client");
    }
    c.writer().write_all(b"x").expect("write");
    buf.clear();
    c.write_tls(&mut buf).expect("flush");
    s.read_tls(&mut buf.as_slice()).expect("read");
    s.process_new_packets().expect("server");
    let mut one = [0u8; 1];
    s.reader().read_exact(&mut one).expect("data");
    assert!(s.peer_certificates().is_some() == client.client_auth_cert_resolver.has_certs());
}

fn tls(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    let server_key = KeyPair::generate().expect("key");
    let server_cert = leaf("localhost").self_signed(&server_key).expect("cert");
    let (cert_path, key_path) = (dir.path().join("s.pem"), dir.path().join("s.key"));
    std::fs::write(&cert_path, server_cert.pem()).expect("write");
    std::fs::write(&key_path, server_key.serialize_pem()).expect("write");
    let server =
        weir_gateways::tls::server_config(&cert_path, &key_path, &[]).expect("server config");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_cert.der().clone()).expect("root");
    let builder = || {
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("versions")
            .with_root_certificates(roots.clone())
    };
    // Every handshake a full one, as after a hub restart: no session resumption.
    let full = |mut config: rustls::ClientConfig| {
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    };
    let anonymous = full(builder().with_no_client_auth());
    let device_key = KeyPair::generate().expect("key");
    let device_cert = leaf("thumb").self_signed(&device_key).expect("cert");
    let with_cert = full(
        builder()
            .with_client_auth_cert(
                vec![CertificateDer::from(device_cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(device_key.serialize_der())),
            )
            .expect("client cert"),
    );
    let mut g = c.benchmark_group("tls12_handshake");
    g.bench_function("without_client_certificate", |b| {
        b.iter(|| handshake(&anonymous, &server))
    });
    g.bench_function("with_client_certificate", |b| {
        b.iter(|| handshake(&with_cert, &server))
    });
    g.finish();
}

criterion_group!(benches, credentials, tls);
criterion_main!(benches);
