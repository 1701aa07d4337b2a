//! The MQTT driver over in-memory byte streams (`tokio::io::duplex`) with paused time: the
//! session core wired to the connection registry, the hub's messages and the clock,
//! without sockets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{Client, Hub, hub};
use weir_core::{C2dDelivery, Peer, ToDevice};
use weir_gateways::mqtt::codec::{self, Inbound};

async fn until_connected(hub: &Hub) {
    for _ in 0..100 {
        if hub.connections.is_connected("dev1") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("dev1 never registered");
}

#[tokio::test(start_paused = true)]
async fn telemetry_is_ingested_and_acknowledged() {
    let hub = hub();
    let mut c = Client::open(&hub, 1);
    c.connect(60).await;
    let mut out = BytesMut::new();
    codec::publish(
        "devices/dev1/messages/events/",
        b"{\"t\":21}",
        1,
        5,
        false,
        &mut out,
    )
    .expect("encode");
    c.send(&out).await;
    assert!(matches!(c.recv().await, Some(Inbound::PubAck(5))));
    let events = hub.ingest.0.lock().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(&events[0].body[..], b"{\"t\":21}");
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_of_the_device_replaces_the_old_one() {
    let hub = hub();
    let mut old = Client::open(&hub, 1);
    old.connect(60).await;
    until_connected(&hub).await;
    let mut new = Client::open(&hub, 2);
    new.connect(60).await;
    assert!(old.recv().await.is_none(), "the old connection is closed");
    // The registry now reaches the new connection.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(hub.connections.send(
        "dev1",
        ToDevice::MethodRequest {
            rid: "1".into(),
            method: "ping".into(),
            payload: Bytes::from_static(b"{}"),
        }
    ));
    let mut sub = BytesMut::new();
    codec::subscribe(1, "$iothub/methods/POST/#", 0, &mut sub);
    new.send(&sub).await;
    let mut got_method = false;
    while let Some(p) = new.recv().await {
        if let Inbound::Publish(p) = p {
            assert_eq!(&p.topic[..], b"$iothub/methods/POST/ping/?$rid=1");
            got_method = true;
            break;
        }
    }
    assert!(got_method);
    assert_eq!(hub.connections.connected(), 1);
}

#[tokio::test(start_paused = true)]
async fn revoking_the_device_closes_its_live_connection() {
    let hub = hub();
    let mut c = Client::open(&hub, 1);
    c.connect(60).await;
    until_connected(&hub).await;
    assert_eq!(
        hub.connections.revalidate("dev1", None),
        Some(weir_core::Revocation::Deleted)
    );
    assert!(c.recv().await.is_none());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!hub.connections.is_connected("dev1"));
    let m = hub.mqtt.metrics.revoked[0].load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(m, 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_after_one_and_a_half_keep_alives() {
    let hub = hub();
    let mut c = Client::open(&hub, 1);
    c.connect(10).await;
    let start = tokio::time::Instant::now();
    assert!(c.recv().await.is_none());
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(15) && waited < Duration::from_secs(16),
        "{waited:?}"
    );

    // A PINGREQ is activity: the same client survives past 15 s when it pings.
    let mut c = Client::open(&hub, 2);
    c.connect(10).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(9)).await;
        let mut ping = BytesMut::new();
        codec::pingreq(&mut ping);
        c.send(&ping).await;
        assert!(matches!(c.recv().await, Some(Inbound::PingResp)));
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_connects_is_closed_at_the_connect_timeout() {
    let hub = hub();
    let mut c = Client::open(&hub, 1);
    let start = tokio::time::Instant::now();
    assert!(c.recv().await.is_none());
    assert_eq!(start.elapsed().as_secs(), 10);
}

#[tokio::test(start_paused = true)]
async fn cloud_to_device_messages_reach_a_subscribed_device() {
    let hub = hub();
    let mut c = Client::open(&hub, 1);
    c.connect(60).await;
    let mut sub = BytesMut::new();
    codec::subscribe(1, "devices/dev1/messages/devicebound/#", 1, &mut sub);
    c.send(&sub).await;
    assert!(matches!(c.recv().await, Some(Inbound::SubAck(1))));
    assert!(hub.connections.send(
        "dev1",
        ToDevice::CloudToDevice(C2dDelivery {
            lock: 7,
            message_id: "m7".into(),
            correlation_id: None,
            content_type: None,
            content_encoding: None,
            properties: Vec::new(),
            payload: Bytes::from_static(b"open"),
        })
    ));
    let Some(Inbound::Publish(p)) = c.recv().await else {
        panic!("a C2D publish");
    };
    assert_eq!((&p.payload[..], p.qos), (&b"open"[..], 1));
}

/// True when the hub closes the connection within a second (after whatever it sent).
async fn ends<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(c: &mut Client<S>) -> bool {
    tokio::time::timeout(Duration::from_secs(1), async {
        while c.recv().await.is_some() {}
    })
    .await
    .is_ok()
}

#[tokio::test(start_paused = true)]
async fn every_connection_ends_when_the_hub_stops() {
    let hub = hub();
    let mut registered = Client::open(&hub, 1);
    registered.connect(60).await;
    until_connected(&hub).await;
    // Not yet authenticated: it watches the shutdown itself.
    let mut silent = Client::open(&hub, 2);
    hub.shut_down();
    for c in [&mut registered, &mut silent] {
        assert!(ends(c).await, "the connection is closed at once");
    }
    assert!(!hub.connections.is_connected("dev1"));
}

#[tokio::test(start_paused = true)]
async fn a_connection_registering_after_the_stop_is_told_to_end() {
    let hub = hub();
    hub.connections.shut();
    let mut c = Client::open(&hub, 1);
    c.connect(60).await;
    // Accepted (CONNACK 0 above), then closed at once.
    assert!(ends(&mut c).await, "closed right after CONNACK");
    assert!(!hub.connections.is_connected("dev1"));
}

#[tokio::test]
async fn a_connection_future_stays_small() {
    // Every idle device holds one of these: growth here is memory per connection. Tokio
    // rounds a task up to 128 bytes; with a future of at most 408 bytes a plain TCP
    // connection's task is 512 bytes (decision 040).
    let hub = hub();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let _client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, addr) = listener.accept().await.expect("accept");
    let peer = Peer {
        addr,
        protocol: "mqtt",
        client_certs: None,
    };
    let metrics = hub.mqtt.ctx.metrics.protocol("mqtt");
    let admitted = hub
        .mqtt
        .ctx
        .admission
        .admit(peer.addr, &metrics)
        .expect("a slot");
    let fut = weir_gateways::mqtt::driver::serve(server, peer, Arc::clone(&hub.mqtt), admitted);
    let size = std::mem::size_of_val(&fut);
    assert!(size <= 408, "the connection future is {size} bytes");
}
