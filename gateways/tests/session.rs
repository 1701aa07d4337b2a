//! The MQTT session core, driven directly: no socket, no clock but the one passed in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;
use weir_core::{
    C2dDelivery, DeviceAuth, DeviceRecord, Feature, IngestError, Peer, Revocation, ServiceError,
    ToDevice,
};
use weir_gateways::mqtt::codec::{self, Inbound};
use weir_gateways::mqtt::dialect::{C2dLock, IotHub};
use weir_gateways::mqtt::session::{Action, End, Session, SessionConfig};
use weir_gateways::mqtt::translate::{TranslateAuth, Translation};
use weir_gateways::sas;
use weir_gateways::throttle::{ConnectThrottle, Throttled};

const KEY: &str = "c2Vzc2lvbi10ZXN0LWtleS0xMjM0NTY3OA==";
const NOW_MS: i64 = 1_800_000_000_000;

fn session() -> (Session, Instant) {
    session_with(Vec::new())
}

fn session_with(translations: Vec<Translation>) -> (Session, Instant) {
    let mut rec = DeviceRecord::with_tags("dev1", serde_json::json!({}));
    rec.generation_id = "g1".into();
    rec.auth = DeviceAuth::Sas {
        primary_key: KEY.into(),
        secondary_key: "b3RoZXIta2V5LWZvci10ZXN0cy0xMjM0NQ==".into(),
    };
    let mut disabled = rec.clone();
    disabled.device_id = "off".into();
    disabled.status = weir_core::DeviceStatus::Disabled;
    let directory: HashMap<String, Arc<DeviceRecord>> = [
        ("dev1".to_string(), Arc::new(rec)),
        ("off".to_string(), Arc::new(disabled)),
    ]
    .into();
    let dialect = Arc::new(IotHub {
        hub_name: "hub".into(),
        directory: Arc::new(directory),
        provisioning: None,
        translations: Arc::from(translations),
    });
    let config = SessionConfig {
        max_packet: 64 * 1024,
        max_connect: 8 * 1024,
        connect_timeout: Duration::from_secs(10),
    };
    let peer = Peer {
        addr: "127.0.0.1:5000".parse().expect("addr"),
        protocol: "mqtt",
        client_certs: None,
    };
    let now = Instant::now();
    (Session::new(dialect, config, peer, now), now)
}

fn token(device: &str, expiry_secs: i64) -> String {
    sas::build(&format!("hub/devices/{device}"), KEY, expiry_secs, None).expect("token")
}

fn connect_bytes(device: &str, keep_alive: u16, clean: bool, password: &str) -> BytesMut {
    let mut out = BytesMut::new();
    codec::connect(
        device,
        keep_alive,
        clean,
        Some((&format!("hub/{device}/?api-version=2021-04-12"), password)),
        &mut out,
    );
    out
}

/// Every packet the session wrote.
fn written(s: &mut Session) -> Vec<Inbound> {
    let mut buf = BytesMut::from(s.output().unwrap_or_default());
    s.written();
    let mut out = Vec::new();
    while let Ok(Some(p)) = codec::decode(&mut buf, 1 << 20) {
        out.push(p);
    }
    out
}

fn actions(s: &mut Session) -> Vec<Action> {
    std::iter::from_fn(|| s.next_action()).collect()
}

/// A session past CONNECT and registration, with its output and actions drained.
fn open(keep_alive: u16, expiry_secs: i64) -> (Session, Instant) {
    let (mut s, now) = session();
    s.received(
        &mut connect_bytes("dev1", keep_alive, true, &token("dev1", expiry_secs)),
        now,
        NOW_MS,
    );
    let a = actions(&mut s);
    assert!(
        matches!(a.as_slice(), [Action::Register { clean: true, .. }]),
        "{a:?}"
    );
    s.registered(Vec::new());
    assert!(matches!(
        written(&mut s).as_slice(),
        [Inbound::ConnAck {
            code: 0,
            session_present: false
        }]
    ));
    actions(&mut s);
    (s, now)
}

fn publish(topic: &str, payload: &[u8], qos: u8, pkid: u16) -> BytesMut {
    let mut out = BytesMut::new();
    codec::publish(topic, payload, qos, pkid, false, &mut out).expect("encode");
    out
}

fn pubacks(packets: &[Inbound]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|p| match p {
            Inbound::PubAck(id) => Some(*id),
            _ => None,
        })
        .collect()
}

fn close_of(a: Vec<Action>) -> Option<End> {
    a.into_iter().find_map(|a| match a {
        Action::Close(e) => Some(e),
        _ => None,
    })
}

#[test]
fn connect_is_authenticated_and_refused_with_the_right_connack() {
    let secs = NOW_MS / 1000;
    let cases: Vec<(BytesMut, Option<u8>)> = vec![
        (
            connect_bytes("dev1", 60, true, &token("dev1", secs + 60)),
            None,
        ),
        (
            connect_bytes("dev1", 60, true, &token("dev1", secs - 1)),
            Some(5),
        ),
        (
            connect_bytes("dev1", 60, true, "SharedAccessSignature sr=x&sig=y&se=1"),
            Some(5),
        ),
        (
            connect_bytes("ghost", 60, true, &token("ghost", secs + 60)),
            Some(5),
        ),
        (
            connect_bytes("off", 60, true, &token("off", secs + 60)),
            Some(5),
        ),
    ];
    for (mut bytes, refused) in cases {
        let (mut s, now) = session();
        s.received(&mut bytes, now, NOW_MS);
        let a = actions(&mut s);
        match refused {
            None => assert!(matches!(a.as_slice(), [Action::Register { .. }])),
            Some(code) => {
                assert!(
                    matches!(written(&mut s).as_slice(), [Inbound::ConnAck { code: c, .. }] if *c == code)
                );
                assert!(matches!(close_of(a), Some(End::Refused(_))));
            }
        }
    }
    // The client id must name the username's device.
    let (mut s, now) = session();
    let mut out = BytesMut::new();
    codec::connect(
        "other",
        60,
        true,
        Some(("hub/dev1/?api-version=1", &token("dev1", secs + 60))),
        &mut out,
    );
    s.received(&mut out, now, NOW_MS);
    assert!(matches!(
        written(&mut s).as_slice(),
        [Inbound::ConnAck { code: 2, .. }]
    ));
    assert!(matches!(close_of(actions(&mut s)), Some(End::Refused(_))));
}

#[test]
fn anything_but_a_small_connect_first_is_refused_without_reading_it() {
    let (mut s, now) = session();
    s.received(
        &mut publish("devices/dev1/messages/events/", b"{}", 0, 0),
        now,
        NOW_MS,
    );
    assert!(written(&mut s).is_empty(), "no CONNACK for a PUBLISH");
    assert!(matches!(close_of(actions(&mut s)), Some(End::Refused(r)) if r.contains("PUBLISH")));

    let (mut s, now) = session();
    let mut big = connect_bytes("dev1", 60, true, &"x".repeat(9000));
    s.received(&mut big, now, NOW_MS);
    assert!(matches!(close_of(actions(&mut s)), Some(End::Refused(r)) if r.contains("8192")));

    // MQTT 5 (protocol level 5) gets CONNACK 1.
    let (mut s, now) = session();
    let mut v5 = BytesMut::from(
        &[
            0x10u8, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 0,
        ][..],
    );
    s.received(&mut v5, now, NOW_MS);
    assert!(matches!(
        written(&mut s).as_slice(),
        [Inbound::ConnAck { code: 1, .. }]
    ));

    let (mut s, now) = session();
    s.timeout(now + Duration::from_secs(9));
    assert!(actions(&mut s).is_empty());
    s.timeout(now + Duration::from_secs(10));
    assert!(matches!(close_of(actions(&mut s)), Some(End::Refused(r)) if r.contains("timeout")));
}

#[test]
fn a_device_publishes_and_subscribes_only_on_its_own_topics() {
    for bytes in [
        publish("devices/dev2/messages/events/", b"{}", 1, 1),
        publish("devices/dev10/messages/events/", b"{}", 1, 1),
        publish("$iothub/anything", b"{}", 1, 1),
        publish("devices/dev1/messages/events/", b"{}", 2, 1),
    ] {
        let (mut s, now) = open(60, NOW_MS / 1000 + 3600);
        let mut b = bytes;
        s.received(&mut b, now, NOW_MS);
        assert!(pubacks(&written(&mut s)).is_empty());
        assert!(matches!(close_of(actions(&mut s)), Some(End::Violation(_))));
    }
    let (mut s, now) = open(60, NOW_MS / 1000 + 3600);
    let mut sub = BytesMut::new();
    codec::subscribe(3, "devices/dev2/messages/devicebound/#", 1, &mut sub);
    s.received(&mut sub, now, NOW_MS);
    assert!(
        matches!(close_of(actions(&mut s)), Some(End::Violation(v)) if v.contains("devicebound"))
    );
}

#[test]
fn telemetry_is_acknowledged_once_durable_and_never_when_it_is_not() {
    let (mut s, now) = open(60, NOW_MS / 1000 + 3600);
    let mut b = publish(
        "devices/dev1/messages/events/%24.mid=m1&color=blue%20sky",
        b"{\"t\":1}",
        1,
        7,
    );
    s.received(&mut b, now, NOW_MS);
    assert!(
        pubacks(&written(&mut s)).is_empty(),
        "not before it is durable"
    );
    let a = actions(&mut s);
    let Some(Action::Ingest { events, acks: true }) = a.into_iter().next() else {
        panic!("an ingest");
    };
    assert_eq!(events[0].system.message_id.as_deref(), Some("m1"));
    assert_eq!(
        events[0].properties,
        vec![("color".to_string(), "blue sky".to_string())]
    );
    assert_eq!(events[0].packet_id, Some(7));
    s.ingested(Ok(()), now);
    assert_eq!(pubacks(&written(&mut s)), vec![7]);

    s.received(
        &mut publish("devices/dev1/messages/events/", b"x", 1, 8),
        now,
        NOW_MS,
    );
    actions(&mut s);
    s.ingested(Err(IngestError::Unavailable("disk full".into())), now);
    assert!(pubacks(&written(&mut s)).is_empty());
    assert!(matches!(close_of(actions(&mut s)), Some(End::NotStored(_))));
}

#[test]
fn pubacks_keep_publish_order_across_telemetry_and_twin_requests() {
    let (mut s, now) = open(60, NOW_MS / 1000 + 3600);
    let mut burst = BytesMut::new();
    for p in [
        publish("$iothub/twin/GET/?$rid=r0", b"", 1, 1),
        publish("devices/dev1/messages/events/", b"{\"n\":1}", 1, 2),
        publish("$iothub/twin/GET/?$rid=r1", b"", 1, 3),
        publish("devices/dev1/messages/events/", b"{\"n\":2}", 1, 4),
        publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=r2",
            b"{\"x\":1}",
            1,
            5,
        ),
    ] {
        burst.extend_from_slice(&p);
    }
    s.received(&mut burst, now, NOW_MS);
    assert_eq!(
        pubacks(&written(&mut s)),
        vec![1],
        "the request before any telemetry"
    );
    let a = actions(&mut s);
    assert!(matches!(&a[0], Action::TwinGet { rid } if rid == "r0"));
    assert!(matches!(&a[1], Action::TwinGet { rid } if rid == "r1"));
    assert!(matches!(&a[2], Action::TwinPatch { rid, .. } if rid == "r2"));
    assert!(matches!(&a[3], Action::Ingest { events, .. } if events.len() == 2));
    s.twin_read("r1", Ok(serde_json::json!({"desired": {"$version": 1}})));
    let replies = written(&mut s);
    assert!(
        pubacks(&replies).is_empty(),
        "3 waits behind 2, which is not durable yet"
    );
    assert!(
        matches!(&replies[0], Inbound::Publish(p) if &p.topic[..] == b"$iothub/twin/res/200/?$rid=r1")
    );
    s.ingested(Ok(()), now);
    assert_eq!(pubacks(&written(&mut s)), vec![2, 3, 4, 5]);
    s.twin_patched("r2", Ok(4));
    assert!(
        matches!(&written(&mut s)[0], Inbound::Publish(p) if &p.topic[..] == b"$iothub/twin/res/204/?$rid=r2&$version=4")
    );
    s.twin_read("r0", Err(ServiceError::new(404, "device not found")));
    assert!(
        matches!(&written(&mut s)[0], Inbound::Publish(p) if &p.topic[..] == b"$iothub/twin/res/404/?$rid=r0")
    );
}

#[test]
fn methods_and_cloud_to_device_messages_flow_both_ways() {
    let (mut s, now) = open(60, NOW_MS / 1000 + 3600);
    let mut sub = BytesMut::new();
    codec::subscribe(1, "devices/dev1/messages/devicebound/#", 1, &mut sub);
    codec::subscribe(2, "$iothub/methods/POST/#", 0, &mut sub);
    s.received(&mut sub, now, NOW_MS);
    let acks = written(&mut s);
    assert!(matches!(
        acks.as_slice(),
        [Inbound::SubAck(1), Inbound::SubAck(2)]
    ));
    let a = actions(&mut s);
    assert!(a.iter().any(|a| matches!(a, Action::C2dReady)));
    assert!(
        !a.iter().any(|a| matches!(a, Action::StoreSubscriptions(_))),
        "a clean session stores nothing"
    );

    s.to_device(&ToDevice::MethodRequest {
        rid: "9".into(),
        method: "reboot".into(),
        payload: Bytes::from_static(b"{}"),
    })
    .expect("method");
    assert!(
        matches!(&written(&mut s)[0], Inbound::Publish(p) if &p.topic[..] == b"$iothub/methods/POST/reboot/?$rid=9" && p.qos == 0)
    );
    s.received(
        &mut publish("$iothub/methods/res/200/?$rid=9", b"{\"ok\":1}", 0, 0),
        now,
        NOW_MS,
    );
    assert!(
        matches!(&actions(&mut s)[0], Action::MethodResponse { rid, status: 200, .. } if rid == "9")
    );

    s.to_device(&ToDevice::CloudToDevice(C2dDelivery {
        lock: 42,
        message_id: "m1".into(),
        correlation_id: None,
        content_type: None,
        content_encoding: None,
        properties: vec![("k".into(), "v".into())],
        payload: Bytes::from_static(b"hello"),
    }))
    .expect("c2d");
    let sent = written(&mut s);
    let Inbound::Publish(p) = &sent[0] else {
        panic!("a publish");
    };
    assert_eq!((p.qos, &p.payload[..]), (1, &b"hello"[..]));
    assert!(
        p.topic
            .starts_with(b"devices/dev1/messages/devicebound/%24.mid=m1")
    );
    let mut ack = BytesMut::from(&[0x40u8, 0x02][..]);
    ack.extend_from_slice(&p.pkid.to_be_bytes());
    s.received(&mut ack, now, NOW_MS);
    assert!(matches!(
        actions(&mut s).as_slice(),
        [Action::C2dAcknowledged(C2dLock {
            lock: 42,
            child: None
        })]
    ));

    // On an edge's connection, a child's message names the child, and so does its PUBACK.
    s.to_device(&ToDevice::ChildCloudToDevice {
        child: "c9".into(),
        message: C2dDelivery {
            lock: 43,
            message_id: "m2".into(),
            correlation_id: None,
            content_type: None,
            content_encoding: None,
            properties: vec![],
            payload: Bytes::from_static(b"for c9"),
        },
    })
    .expect("child c2d");
    let sent = written(&mut s);
    let Inbound::Publish(p) = &sent[0] else {
        panic!("a publish");
    };
    assert_eq!(p.qos, 1);
    assert!(
        p.topic.starts_with(
            b"$weir/edge/c9/messages/devicebound/%24.mid=m2&%24.to=%2Fdevices%2Fc9%2F"
        ),
        "{:?}",
        p.topic
    );
    let mut ack = BytesMut::from(&[0x40u8, 0x02][..]);
    ack.extend_from_slice(&p.pkid.to_be_bytes());
    s.received(&mut ack, now, NOW_MS);
    assert!(matches!(
        actions(&mut s).as_slice(),
        [Action::C2dAcknowledged(C2dLock { lock: 43, child: Some(c) })] if &**c == "c9"
    ));
}

#[test]
fn a_persistent_session_restores_and_stores_its_subscriptions() {
    let (mut s, now) = session();
    s.received(
        &mut connect_bytes("dev1", 60, false, &token("dev1", NOW_MS / 1000 + 60)),
        now,
        NOW_MS,
    );
    let Some(Action::Register {
        features,
        clean: false,
        ..
    }) = actions(&mut s).into_iter().next()
    else {
        panic!("register");
    };
    s.registered(vec!["$iothub/methods/POST/#".into()]);
    assert!(matches!(
        written(&mut s).as_slice(),
        [Inbound::ConnAck {
            code: 0,
            session_present: true
        }]
    ));
    assert!(
        features.has(Feature::Methods),
        "the stored subscription is live again"
    );
    let mut sub = BytesMut::new();
    codec::subscribe(1, "$iothub/twin/res/#", 0, &mut sub);
    s.received(&mut sub, now, NOW_MS);
    let a = actions(&mut s);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::StoreSubscriptions(f) if f.len() == 2))
    );
}

#[test]
fn keep_alive_and_token_expiry_end_the_session() {
    let (mut s, now) = open(10, NOW_MS / 1000 + 3600);
    assert_eq!(
        s.deadline(),
        Some(now + Duration::from_secs(15)),
        "1.5 × keep-alive"
    );
    s.timeout(now + Duration::from_millis(14_999));
    assert!(actions(&mut s).is_empty());
    s.timeout(now + Duration::from_secs(15));
    assert!(matches!(close_of(actions(&mut s)), Some(End::KeepAlive)));

    // A token valid through second se ends the session once that second is over.
    let se = NOW_MS / 1000 + 5;
    let (mut s, now) = open(60, se);
    let cut = now + Duration::from_millis(u64::try_from((se + 1) * 1000 - NOW_MS).expect("ms"));
    assert_eq!(s.deadline(), Some(cut));
    s.timeout(cut);
    assert!(matches!(
        close_of(actions(&mut s)),
        Some(End::Revoked(Revocation::Expired))
    ));

    // Telemetry that becomes durable after the token expired is not acknowledged.
    let (mut s, now) = open(60, se);
    let cut = s.deadline().expect("a deadline");
    assert!(cut < now + Duration::from_secs(60));
    s.received(
        &mut publish("devices/dev1/messages/events/", b"x", 1, 1),
        now,
        NOW_MS,
    );
    actions(&mut s);
    s.ingested(Ok(()), cut);
    assert!(pubacks(&written(&mut s)).is_empty());
    assert!(matches!(
        close_of(actions(&mut s)),
        Some(End::Revoked(Revocation::Expired))
    ));
}

#[test]
fn disconnect_after_telemetry_acknowledges_it_first() {
    let (mut s, now) = open(60, NOW_MS / 1000 + 3600);
    let mut b = publish("devices/dev1/messages/events/", b"x", 1, 3);
    codec::disconnect(&mut b);
    s.received(&mut b, now, NOW_MS);
    let a = actions(&mut s);
    assert!(matches!(a.as_slice(), [Action::Ingest { .. }]), "{a:?}");
    s.ingested(Ok(()), now);
    assert_eq!(pubacks(&written(&mut s)), vec![3]);
    assert!(matches!(close_of(actions(&mut s)), Some(End::Disconnect)));
}

#[test]
fn a_translated_client_publishes_on_its_entrys_topics_as_its_device() {
    let entry = Translation::new(
        "plant",
        "plant/{deviceId}/telemetry",
        TranslateAuth::Password(weir_core::Secret::new("pw")),
    )
    .expect("pattern");
    let (mut s, now) = session_with(vec![entry]);
    let mut c = BytesMut::new();
    codec::connect("legacy-7", 60, true, Some(("dev1", "pw")), &mut c);
    s.received(&mut c, now, NOW_MS);
    let a = actions(&mut s);
    assert!(matches!(a.as_slice(), [Action::Register { .. }]), "{a:?}");
    s.registered(Vec::new());
    assert!(matches!(
        written(&mut s).as_slice(),
        [Inbound::ConnAck { code: 0, .. }]
    ));
    actions(&mut s);
    s.received(
        &mut publish("plant/dev1/telemetry", b"{\"t\":1}", 1, 3),
        now,
        NOW_MS,
    );
    let Some(Action::Ingest { events, .. }) = actions(&mut s).into_iter().next() else {
        panic!("an ingest");
    };
    assert_eq!(events[0].device_id.as_str(), "dev1");
    assert_eq!(events[0].auth_method, weir_core::AuthMethod::Password);
    s.ingested(Ok(()), now);
    assert_eq!(pubacks(&written(&mut s)), vec![3]);
    // Another device's topic, or the IoT Hub dialect's, is refused.
    s.received(
        &mut publish("plant/off/telemetry", b"{}", 1, 4),
        now,
        NOW_MS,
    );
    assert!(matches!(close_of(actions(&mut s)), Some(End::Violation(_))));

    let (mut s, now) = session_with(vec![
        Translation::new(
            "plant",
            "plant/{deviceId}/telemetry",
            TranslateAuth::DeviceKey,
        )
        .expect("pattern"),
    ]);
    let mut c = BytesMut::new();
    codec::connect("x", 60, true, Some(("dev1", "pw")), &mut c);
    s.received(&mut c, now, NOW_MS);
    assert!(matches!(
        written(&mut s).as_slice(),
        [Inbound::ConnAck { code: 5, .. }]
    ));
}

#[test]
fn a_throttled_connect_gets_connack_3_before_its_credentials_are_checked() {
    let limits = Arc::new(ConnectThrottle::new(1, 0));
    let (mut s, now) = session();
    s.throttle(Arc::clone(&limits));
    s.received(
        &mut connect_bytes("dev1", 60, true, &token("dev1", NOW_MS / 1000 + 60)),
        now,
        NOW_MS,
    );
    assert!(matches!(
        actions(&mut s).first(),
        Some(Action::Register { .. })
    ));
    // The second within the same second is over the limit.
    let (mut s, now) = session();
    s.throttle(limits);
    s.received(
        &mut connect_bytes("dev1", 60, true, "not even a token"),
        now,
        NOW_MS,
    );
    assert!(matches!(
        written(&mut s).as_slice(),
        [Inbound::ConnAck { code: 3, .. }]
    ));
    assert!(matches!(
        actions(&mut s).as_slice(),
        [Action::Close(End::Throttled(Throttled::Hub))]
    ));
}
