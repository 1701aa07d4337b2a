//! A hub for gateway tests: one device (`dev1`, SAS key [`KEY`]), ingest that records
//! what it gets, no other services; and an MQTT client over any byte stream.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use weir_core::{
    ConnectionRegistry, DeviceAuth, DeviceId, DeviceRecord, Event, Ingest, IngestFuture,
    NoServices, Peer,
};
use weir_gateways::context::{Admission, GatewayContext};
use weir_gateways::metrics::GatewayMetrics;
use weir_gateways::mqtt::codec::{self, Inbound};
use weir_gateways::mqtt::{Mqtt, MqttConfig};
use weir_gateways::sas;

pub const KEY: &str = "ZHJpdmVyLXRlc3Qta2V5LTAxMjM0NTY3ODlhYmNkZWY=";

/// Every event handed to ingest, durable at once.
#[derive(Default)]
pub struct Recorded(pub Mutex<Vec<Event>>);

impl Ingest for Recorded {
    fn ingest(&self, _device: &DeviceId, batch: Vec<Event>) -> IngestFuture {
        if let Ok(mut all) = self.0.lock() {
            all.extend(batch);
        }
        Box::pin(async { Ok(Box::pin(async { Ok(()) }) as weir_core::AckFuture) })
    }
}

pub struct Hub {
    pub ctx: Arc<GatewayContext>,
    pub mqtt: Arc<Mqtt>,
    pub ingest: Arc<Recorded>,
    pub connections: Arc<ConnectionRegistry>,
    pub stop: watch::Sender<bool>,
}

pub fn hub() -> Hub {
    hub_for("mqtt", &MqttConfig::default())
}

/// The hub with its MQTT counted under `protocol`.
pub fn hub_for(protocol: &'static str, config: &MqttConfig) -> Hub {
    let mut rec = DeviceRecord::with_tags("dev1", serde_json::json!({}));
    rec.generation_id = "g1".into();
    rec.auth = DeviceAuth::Sas {
        primary_key: KEY.into(),
        secondary_key: KEY.into(),
    };
    let directory: HashMap<String, Arc<DeviceRecord>> =
        [("dev1".to_string(), Arc::new(rec))].into();
    let ingest = Arc::new(Recorded::default());
    let connections = Arc::new(ConnectionRegistry::default());
    tokio::spawn(ConnectionRegistry::sweep(Arc::downgrade(&connections)));
    let (stop, shutdown) = watch::channel(false);
    let ctx = Arc::new(GatewayContext {
        hub_name: "hub".into(),
        ingest: Arc::clone(&ingest) as Arc<dyn Ingest>,
        directory: Arc::new(directory),
        services: Arc::new(NoServices),
        provisioning: None,
        connections: Arc::clone(&connections),
        admission: Arc::new(Admission::new(8, 8)),
        metrics: Arc::new(GatewayMetrics::default()),
        shutdown,
    });
    Hub {
        mqtt: Mqtt::iothub(Arc::clone(&ctx), config, protocol),
        ctx,
        ingest,
        connections,
        stop,
    }
}

impl Hub {
    /// Stops the hub's gateways as `weir serve` does: the shutdown signal, then the
    /// connection registry tells every registered connection to end.
    pub fn shut_down(&self) {
        self.stop.send(true).expect("stop");
        self.connections.shut();
    }
}

/// The device's end of a connection.
pub struct Client<S> {
    pub io: S,
    pub buf: BytesMut,
}

impl Client<DuplexStream> {
    /// A connection over an in-memory stream served by the hub's MQTT driver.
    pub fn open(hub: &Hub, port: u16) -> Self {
        let (io, server) = tokio::io::duplex(64 * 1024);
        let peer = Peer {
            addr: ([127, 0, 0, 1], port).into(),
            protocol: "mqtt",
            client_certs: None,
        };
        assert!(hub.mqtt.serve_stream(server, peer));
        Client {
            io,
            buf: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(io: S) -> Self {
        Client {
            io,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
    }

    /// The next packet from the hub; `None` once it closed the connection.
    pub async fn recv(&mut self) -> Option<Inbound> {
        loop {
            if let Some(p) = codec::decode(&mut self.buf, 1 << 20).expect("a valid packet") {
                return Some(p);
            }
            if self.io.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    pub async fn connect(&mut self, keep_alive: u16) {
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
            + 3600;
        let token = sas::build("hub/devices/dev1", KEY, expiry, None).expect("token");
        let mut out = BytesMut::new();
        codec::connect(
            "dev1",
            keep_alive,
            true,
            Some(("hub/dev1/?api-version=2021-04-12", &token)),
            &mut out,
        );
        self.send(&out).await;
        assert!(matches!(
            self.recv().await,
            Some(Inbound::ConnAck { code: 0, .. })
        ));
    }
}
