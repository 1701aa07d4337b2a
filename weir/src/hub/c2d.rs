//! Cloud-to-device messages on the wire (spec §2.5): topic, property bag, QoS 1.

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use weir_core::DevicePublish;
use weir_storage::c2d::C2dMessage;

/// Everything but unreserved characters is escaped, as the device SDK expects.
const BAG: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn pair(out: &mut Vec<String>, k: &str, v: &str) {
    out.push(format!(
        "{}={}",
        utf8_percent_encode(k, BAG),
        utf8_percent_encode(v, BAG)
    ));
}

/// The PUBLISH that delivers `m`: `devices/{id}/messages/devicebound/{bag}` at QoS 1.
pub fn publish(m: &C2dMessage) -> DevicePublish {
    let mut bag = Vec::new();
    pair(&mut bag, "$.mid", &m.message_id);
    pair(
        &mut bag,
        "$.to",
        &format!("/devices/{}/messages/deviceBound", m.device_id),
    );
    if let Some(c) = &m.correlation_id {
        pair(&mut bag, "$.cid", c);
    }
    if let Some(c) = &m.content_type {
        pair(&mut bag, "$.ct", c);
    }
    if let Some(c) = &m.content_encoding {
        pair(&mut bag, "$.ce", c);
    }
    for (k, v) in &m.properties {
        pair(&mut bag, k, v);
    }
    DevicePublish {
        topic: format!(
            "devices/{}/messages/devicebound/{}",
            m.device_id,
            bag.join("&")
        ),
        payload: Bytes::from(m.payload()),
        qos: 1,
        lock: Some(m.seq),
    }
}
