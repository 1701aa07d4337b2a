//! How a delivery becomes an AMQP 0-9-1 message: the device's body unchanged, its system
//! properties as the standard message properties, its application properties and IoT
//! Hub's system annotations as headers (the names IoT Hub's built-in endpoint uses), and
//! `weir-ingest-offset` so a consumer can recognise a redelivery.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use weir_core::{AuthMethod, Delivery, EventSource};

/// Persistent (written to disk by the broker), not transient.
const PERSISTENT: u8 = 2;

/// IoT Hub's value of `iothub-message-source` for each event source.
pub fn message_source(source: EventSource) -> &'static str {
    match source {
        EventSource::DeviceMessages => "Telemetry",
        EventSource::TwinChangeEvents => "twinChangeEvents",
        EventSource::DeviceLifecycleEvents => "deviceLifecycleEvents",
        EventSource::DeviceConnectionStateEvents => "deviceConnectionStateEvents",
        EventSource::Insights => "insights",
        EventSource::EdgeDrops => "edgeDrops",
        EventSource::Clock => "clock",
        EventSource::Registry => "registry",
        EventSource::Cluster => "cluster",
    }
}

fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

fn short(v: &str) -> ShortString {
    // A short string holds at most 255 bytes; longer values are cut at a char boundary.
    let mut end = v.len().min(255);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(v[..end].to_owned())
}

/// The properties and headers of `d`'s message.
pub fn properties(d: &Delivery) -> BasicProperties {
    let e = &d.event;
    let mut h = FieldTable::default();
    for (k, v) in e.properties.iter().chain(&d.enrichments) {
        h.insert(short(k), text(v));
    }
    h.insert(
        short("iothub-connection-device-id"),
        text(e.device_id.as_str()),
    );
    if let Some(m) = &e.module_id {
        h.insert(short("iothub-connection-module-id"), text(m));
    }
    if let Some(g) = &e.generation_id {
        h.insert(short("iothub-connection-auth-generation-id"), text(g));
    }
    if e.auth_method != AuthMethod::Internal {
        let method = format!(
            r#"{{"scope":"device","type":"{}","issuer":"iothub"}}"#,
            e.auth_method.as_str()
        );
        h.insert(short("iothub-connection-auth-method"), text(&method));
    }
    if let Some(t) = chrono::DateTime::from_timestamp_millis(e.enqueued_ms) {
        let t = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        h.insert(short("iothub-enqueuedtime"), text(&t));
    }
    h.insert(
        short("iothub-message-source"),
        text(message_source(e.source)),
    );
    for (k, v) in [
        ("iothub-creation-time-utc", &e.system.creation_time_utc),
        ("dt-dataschema", &e.system.dt_dataschema),
        ("dt-subject", &e.system.dt_subject),
        // Not AMQP's user-id property: RabbitMQ checks that against the publisher's login.
        ("iothub-userid", &e.system.user_id),
    ] {
        if let Some(v) = v {
            h.insert(short(k), text(v));
        }
    }
    h.insert(
        short("weir-ingest-offset"),
        AMQPValue::LongLongInt(i64::try_from(e.offset).unwrap_or(i64::MAX)),
    );
    h.insert(short("weir-route"), text(&d.route));
    let mut p = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(h)
        .with_timestamp(u64::try_from(e.enqueued_ms / 1000).unwrap_or(0));
    if let Some(v) = &e.system.content_type {
        p = p.with_content_type(short(v));
    }
    if let Some(v) = &e.system.content_encoding {
        p = p.with_content_encoding(short(v));
    }
    if let Some(v) = &e.system.message_id {
        p = p.with_message_id(short(v));
    }
    if let Some(v) = &e.system.correlation_id {
        p = p.with_correlation_id(short(v));
    }
    p
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use weir_core::{DeviceId, Event};

    use super::*;

    #[test]
    fn headers_carry_properties_and_annotations() {
        let mut e = Event::telemetry(
            DeviceId::parse("dev1").expect("id"),
            1_700_000_000_123,
            Bytes::new(),
        );
        e.offset = 42;
        e.properties.push(("color".into(), "blue".into()));
        e.system.message_id = Some("m1".into());
        e.system.content_type = Some("application/json".into());
        let d = Delivery {
            event: Arc::new(e),
            enrichments: vec![("site".into(), "berlin".into())],
            columns: Vec::new(),
            priority: 5,
            rules_version: Arc::from("v"),
            route: Arc::from("hot"),
        };
        let p = properties(&d);
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m1"));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        let h = p.headers().as_ref().expect("headers");
        let get = |k: &str| h.inner().get(&ShortString::from(k.to_owned())).cloned();
        assert_eq!(get("color"), Some(text("blue")));
        assert_eq!(get("site"), Some(text("berlin")));
        assert_eq!(get("iothub-connection-device-id"), Some(text("dev1")));
        assert_eq!(get("iothub-message-source"), Some(text("Telemetry")));
        assert_eq!(
            get("iothub-enqueuedtime"),
            Some(text("2023-11-14T22:13:20.123Z"))
        );
        assert_eq!(get("weir-ingest-offset"), Some(AMQPValue::LongLongInt(42)));
        assert_eq!(get("weir-route"), Some(text("hot")));
    }
}
