//! The `webhook` endpoint kind: HTTP POSTs of NDJSON batches, signed with the endpoint's
//! secret; a batch counts as delivered on a 2xx answer, at least once (see `crate::sink`).
//!
//! One line per message:
//! `{"offset", "deviceId", "moduleId"?, "enqueuedTime", "source", "route", "messageId"?,
//! "correlationId"?, "contentType"?, "contentEncoding"?, "properties", "systemProperties",
//! "body" | "bodyText" | "bodyBase64"}` — `body` when the body is JSON, `bodyText` when it
//! is other UTF-8 text, `bodyBase64` otherwise, so the receiver gets it byte for byte.

pub mod options;
mod publisher;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use weir_core::{Delivery, EndpointKind};

use crate::Kind;
use crate::amqp::message_source;
use crate::factory::BrokerSinkFactory;
use crate::link::Link;

/// The sink kind, as rules files name it and the commit store keys it.
pub const KIND: &str = "webhook";

/// HTTP endpoints.
pub struct Webhook;

pub type WebhookSinkFactory = BrokerSinkFactory<Webhook>;

impl Kind for Webhook {
    const NAME: &'static str = KIND;
    type Message = Vec<u8>;
    type Context = ();

    fn template(kind: &EndpointKind) -> Option<&str> {
        kind.webhook().map(|_| "")
    }

    fn open(
        _: &(),
        rt: &tokio::runtime::Handle,
        kind: &EndpointKind,
        endpoint: &str,
        _worker: usize,
    ) -> Option<Link<Self::Message>> {
        let o = kind.webhook()?;
        Some(publisher::open(rt, o.clone(), endpoint.to_owned()))
    }

    fn message(d: &Delivery, _key: &str) -> Self::Message {
        line(d)
    }
}

/// The NDJSON line for `d`, newline included.
pub fn line(d: &Delivery) -> Vec<u8> {
    let e = &d.event;
    let mut m = Map::new();
    m.insert("offset".into(), json!(e.offset));
    m.insert("deviceId".into(), json!(e.device_id.as_str()));
    if let Some(module) = &e.module_id {
        m.insert("moduleId".into(), json!(&**module));
    }
    if let Some(t) = chrono::DateTime::from_timestamp_millis(e.enqueued_ms) {
        let t = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        m.insert("enqueuedTime".into(), json!(t));
    }
    m.insert("source".into(), json!(message_source(e.source)));
    m.insert("route".into(), json!(&*d.route));
    for (k, v) in [
        ("messageId", &e.system.message_id),
        ("correlationId", &e.system.correlation_id),
        ("contentType", &e.system.content_type),
        ("contentEncoding", &e.system.content_encoding),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    let props: Map<String, Value> = e
        .properties
        .iter()
        .chain(&d.enrichments)
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    m.insert("properties".into(), Value::Object(props));
    let mut sys: Map<String, Value> = e
        .system
        .others()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    if let Some(g) = &e.gateway {
        sys.insert("weir-gateway".into(), json!(&**g));
    }
    m.insert("systemProperties".into(), Value::Object(sys));
    match serde_json::from_slice::<Value>(&e.body) {
        Ok(v) => m.insert("body".into(), v),
        Err(_) => match std::str::from_utf8(&e.body) {
            Ok(t) => m.insert("bodyText".into(), json!(t)),
            Err(_) => m.insert(
                "bodyBase64".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(&e.body)),
            ),
        },
    };
    let mut out = serde_json::to_vec(&Value::Object(m)).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {

    use bytes::Bytes;
    use weir_core::{DeviceId, Event};

    use super::*;

    fn delivery(body: &'static [u8]) -> Delivery {
        let mut e = Event::telemetry(
            DeviceId::parse("d1").expect("id"),
            1_000,
            Bytes::from_static(body),
        );
        e.offset = 9;
        e.properties.push(("k".into(), "v".into()));
        Delivery::plain(e, "r")
    }

    #[test]
    fn lines_keep_the_body_exactly() {
        let parse = |b: &'static [u8]| -> Value {
            serde_json::from_slice(&line(&delivery(b))).expect("json line")
        };
        let j = parse(br#"{"t": 1}"#);
        assert_eq!(j["body"], json!({"t": 1}));
        assert_eq!(j["offset"], json!(9));
        assert_eq!(j["properties"]["k"], json!("v"));
        assert_eq!(j["enqueuedTime"], json!("1970-01-01T00:00:01.000Z"));
        assert_eq!(parse(b"plain text")["bodyText"], json!("plain text"));
        assert_eq!(parse(&[0xff, 0x00])["bodyBase64"], json!("/wA="));
        assert!(line(&delivery(b"x")).ends_with(b"\n"));
    }
}
