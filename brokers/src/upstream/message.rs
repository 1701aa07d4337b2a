//! What the edge publishes to its hub for one event of its log.

use bytes::Bytes;
use weir_core::{Event, EventSource};
use weir_gateways::mqtt::topic::encode_bag;

/// What the upstream endpoint puts in the queue for one delivery.
pub struct Queued {
    pub event: std::sync::Arc<Event>,
    pub priority: u8,
    pub route: std::sync::Arc<str>,
}

/// One message for the hub, on behalf of `device`.
pub struct Message {
    pub device: String,
    pub topic_bag: String,
    pub body: Bytes,
}

impl Message {
    /// A child's message (`as_device`) goes out as that device's telemetry, with its
    /// properties. Other events (insights, drop ledgers, lifecycle events the edge saw) and
    /// messages of devices the hub does not know as the edge's children go out as the
    /// edge's own telemetry, naming their source and device in `weir-source` and
    /// `weir-device`: the hub would refuse them under the device's id.
    pub fn of(e: &Event, as_device: bool) -> Message {
        let s = &e.system;
        // Only an event without a message id needs one made up.
        let fallback_id;
        let mid = match s.message_id.as_deref() {
            Some(m) => m,
            None => {
                fallback_id = format!("edge-{}", e.offset);
                &fallback_id
            }
        };
        let own = !as_device || e.source != EventSource::DeviceMessages;
        let system = [
            ("$.mid", Some(mid)),
            ("$.cid", s.correlation_id.as_deref()),
            ("$.ct", s.content_type.as_deref()),
            ("$.ce", s.content_encoding.as_deref()),
            ("$.uid", s.user_id.as_deref()),
            ("$.schema", s.dt_dataschema.as_deref()),
            ("$.sub", s.dt_subject.as_deref()),
            ("iothub-creation-time-utc", s.creation_time_utc.as_deref()),
        ];
        // When the edge took the message (ms since the epoch): with catch-up sharing the
        // link, a device's messages may reach the hub out of order, and this restores it.
        let enqueued = e.enqueued_ms.to_string();
        let source = [
            ("weir-source", own.then_some(e.source.as_str())),
            ("weir-device", own.then_some(e.device_id.as_str())),
            ("weir-edge-enqueued", Some(enqueued.as_str())),
        ];
        let topic_bag = encode_bag(
            system
                .into_iter()
                .chain(source)
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .chain(e.properties.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        );
        Message {
            device: if own {
                String::new()
            } else {
                e.device_id.as_str().to_owned()
            },
            topic_bag,
            body: e.body.clone(),
        }
    }

    /// `devices/{device}/messages/events/{bag}`; the edge's own topic when the message is
    /// not a device's.
    pub fn topic(&self, edge: &str) -> String {
        let device = if self.device.is_empty() {
            edge
        } else {
            &self.device
        };
        format!("devices/{device}/messages/events/{}", self.topic_bag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::DeviceId;
    use weir_gateways::mqtt::topic::{DeviceTopic, decode_bag, telemetry};

    fn event() -> Event {
        let id = DeviceId::parse("child-1").expect("id");
        let mut e = Event::telemetry(id, 5, Bytes::from_static(b"{}"));
        e.offset = 42;
        e.properties = vec![("a&b".into(), "c=d %".into())];
        e
    }

    #[test]
    fn a_device_message_goes_out_as_the_device_with_its_properties() {
        let m = Message::of(&event(), true);
        let topic = m.topic("edge1");
        let Some(DeviceTopic::Telemetry { device, bag }) = telemetry(&topic) else {
            panic!("not a telemetry topic: {topic}");
        };
        assert_eq!(device, "child-1");
        let (sys, app) = decode_bag(bag).expect("bag");
        assert_eq!(sys.message_id.as_deref(), Some("edge-42"));
        assert_eq!(
            app,
            vec![
                ("weir-edge-enqueued".to_owned(), "5".to_owned()),
                ("a&b".to_owned(), "c=d %".to_owned())
            ]
        );
    }

    #[test]
    fn the_devices_own_message_id_is_kept_and_other_events_are_the_edges() {
        let mut e = event();
        e.system.message_id = Some("m-7".into());
        let (sys, _) = decode_bag(bag_of(&Message::of(&e, true).topic("edge1"))).expect("bag");
        assert_eq!(sys.message_id.as_deref(), Some("m-7"));
        // Not a child the hub knows: the edge's own telemetry, naming the device.
        let topic = Message::of(&e, false).topic("edge1");
        assert!(topic.starts_with("devices/edge1/messages/events/"));
        e.source = EventSource::Insights;
        let topic = Message::of(&e, true).topic("edge1");
        assert!(topic.starts_with("devices/edge1/messages/events/"));
        let (_, app) = decode_bag(bag_of(&topic)).expect("bag");
        assert!(app.contains(&("weir-device".to_owned(), "child-1".to_owned())));
        assert!(app.contains(&("weir-source".to_owned(), "Insights".to_owned())));
    }

    fn bag_of(topic: &str) -> &str {
        match telemetry(topic) {
            Some(DeviceTopic::Telemetry { bag, .. }) => bag,
            None => "",
        }
    }
}
