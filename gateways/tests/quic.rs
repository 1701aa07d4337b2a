//! The QUIC gateway over real UDP sockets on loopback with a quinn client: ALPN, the MQTT
//! stream, the connect timeout, one stream per connection, no 0-RTT.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use common::{Client, Hub, hub_for};
use quinn::crypto::rustls::QuicClientConfig;
use weir_gateways::mqtt::MqttConfig;
use weir_gateways::mqtt::codec::{self, Inbound};
use weir_gateways::quic::{self, ALPN, PROTOCOL, QuicListener};
use weir_gateways::{Gateway, tls};

struct Server {
    hub: Hub,
    addr: std::net::SocketAddr,
    cert: rustls::pki_types::CertificateDer<'static>,
}

/// A gateway on an ephemeral UDP port with a fresh self-signed certificate for localhost.
fn server(config: MqttConfig) -> Server {
    let dir = std::env::temp_dir().join(format!(
        "weir-quic-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, generated.cert.pem()).expect("write cert");
    std::fs::write(&key_path, generated.signing_key.serialize_pem()).expect("write key");
    let tls = tls::quic_server_config(&cert_path, &key_path, &[ALPN]).expect("tls config");
    assert_eq!(tls.max_early_data_size, 0, "no 0-RTT");
    let endpoint =
        quic::bind(([127, 0, 0, 1], 0).into(), tls, &config).expect("bind the QUIC endpoint");
    let addr = endpoint.local_addr().expect("local addr");
    let hub = hub_for(PROTOCOL, &config);
    let listener: Box<dyn Gateway> = Box::new(QuicListener { endpoint, config });
    tokio::spawn(listener.run(Arc::clone(&hub.ctx)));
    Server {
        hub,
        addr,
        cert: generated.cert.der().clone(),
    }
}

fn client(server: &Server, alpn: &[u8]) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(server.cert.clone())
        .expect("trust the certificate");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).expect("QUIC client config");
    let mut ep = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("client endpoint");
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep
}

async fn dial(ep: &quinn::Endpoint, server: &Server) -> Result<quinn::Connection, String> {
    ep.connect(server.addr, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn mqtt_runs_on_the_first_stream_of_a_quic_connection() {
    let server = server(MqttConfig::default());
    let ep = client(&server, ALPN);
    let conn = dial(&ep, &server).await.expect("handshake");
    assert_eq!(
        conn.handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol),
        Some(ALPN.to_vec())
    );
    let (send, recv) = conn.open_bi().await.expect("stream");
    let mut c = Client::new(tokio::io::join(recv, send));
    c.connect(60).await;
    let mut out = BytesMut::new();
    codec::publish(
        "devices/dev1/messages/events/",
        b"{}",
        1,
        7,
        false,
        &mut out,
    )
    .expect("encode");
    c.send(&out).await;
    assert!(matches!(c.recv().await, Some(Inbound::PubAck(7))));
    assert!(server.hub.connections.is_connected("dev1"));
    let events = server.hub.ingest.0.lock().expect("events").len();
    assert_eq!(events, 1);
    let metrics = server.hub.ctx.metrics.protocol(PROTOCOL);
    assert_eq!(metrics.messages_in.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.connections_total.load(Ordering::Relaxed), 1);

    // One MQTT session per connection: a second stream is never granted.
    let second = tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await;
    assert!(second.is_err(), "a second stream was opened");
}

#[tokio::test]
async fn a_client_without_the_mqtt_alpn_is_refused() {
    let server = server(MqttConfig::default());
    let ep = client(&server, b"h3");
    let err = dial(&ep, &server).await.expect_err("handshake must fail");
    assert!(
        err.contains("no_application_protocol") || err.contains("120"),
        "{err}"
    );
}

#[tokio::test]
async fn a_connection_that_opens_no_stream_is_closed_at_the_connect_timeout() {
    let server = server(MqttConfig {
        connect_timeout: Duration::from_millis(500),
        ..MqttConfig::default()
    });
    let ep = client(&server, ALPN);
    let conn = dial(&ep, &server).await.expect("handshake");
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed by the hub");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(1));
        }
        other => panic!("unexpected close: {other}"),
    }
    assert!(!server.hub.connections.is_connected("dev1"));
}

#[tokio::test]
async fn hub_shutdown_closes_the_endpoint() {
    let server = server(MqttConfig::default());
    let ep = client(&server, ALPN);
    let conn = dial(&ep, &server).await.expect("handshake");
    let (send, recv) = conn.open_bi().await.expect("stream");
    let mut c = Client::new(tokio::io::join(recv, send));
    c.connect(60).await;
    server.hub.shut_down();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), c.recv())
            .await
            .expect("the session ends")
            .is_none()
    );
}
