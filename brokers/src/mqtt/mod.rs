//! The `mqtt` endpoint kind: publishes to an external MQTT broker at QoS 1 and commits
//! after the PUBACK, at least once (see `crate::sink`).

pub(crate) mod client;
pub mod options;
mod publisher;

use weir_core::{Delivery, EndpointKind};

use crate::Kind;
use crate::factory::BrokerSinkFactory;
use crate::link::Link;

/// The sink kind, as rules files name it and the commit store keys it.
pub const KIND: &str = "mqtt";

/// MQTT broker endpoints.
pub struct Mqtt;

pub type MqttSinkFactory = BrokerSinkFactory<Mqtt>;

impl Kind for Mqtt {
    const NAME: &'static str = KIND;
    type Message = publisher::Message;
    type Context = ();

    fn template(kind: &EndpointKind) -> Option<&str> {
        kind.mqtt().map(|o| o.topic.as_str())
    }

    fn open(
        _: &(),
        rt: &tokio::runtime::Handle,
        kind: &EndpointKind,
        endpoint: &str,
        worker: usize,
    ) -> Option<Link<Self::Message>> {
        let o = kind.mqtt()?;
        Some(publisher::open(rt, o.clone(), endpoint.to_owned(), worker))
    }

    fn message(d: &Delivery, topic: &str) -> Self::Message {
        publisher::Message {
            topic: topic_name(topic),
            body: d.event.body.clone(),
        }
    }
}

/// A topic to publish to: no wildcards or NUL (a device id or property could bring them
/// in), not empty, at most 65535 bytes.
fn topic_name(t: &str) -> String {
    let mut s: String = t
        .chars()
        .map(|c| {
            if matches!(c, '+' | '#' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() {
        s.push('_');
    }
    let mut end = s.len().min(65535);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn topics_lose_wildcards() {
        assert_eq!(super::topic_name("weir/hot/a+b#"), "weir/hot/a_b_");
        assert_eq!(super::topic_name(""), "_");
    }
}
