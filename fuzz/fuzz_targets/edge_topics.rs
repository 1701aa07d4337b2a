//! What an edge and its hub parse from each other, and what plain MQTT clients bring
//! through `[[translate]]`, on arbitrary strings: `$weir/edge/...` topics both ways,
//! telemetry topics naming any device, translation patterns and the topics matched
//! against them, and action payload templates. Nothing panics; what parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_brokers::actions::Payload;
use weir_gateways::mqtt::requests::{self, ToEdge};
use weir_gateways::mqtt::topic::{self, DeviceTopic};
use weir_gateways::mqtt::translate::{TranslateAuth, Translation};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(ToEdge::ChildMethod { child, method, rid, timeout_secs }) = requests::to_edge(s) {
        let again = requests::child_method_topic(child, method, rid, timeout_secs);
        assert!(requests::to_edge(&again).is_some(), "{again}");
    }
    if let Some((child, status, rid)) = requests::child_method_response(s) {
        let again = requests::child_method_response_topic(child, status, rid);
        assert!(requests::child_method_response(&again).is_some(), "{again}");
    }
    let _ = requests::children_request(s);
    if let Some(DeviceTopic::Telemetry { device, bag }) = topic::telemetry(s) {
        assert!(!device.contains('/'));
        let _ = topic::decode_bag(bag);
    }
    let fixed = Translation::new("f", "plant/{deviceId}/+/telemetry", TranslateAuth::DeviceKey);
    if let Ok(t) = fixed {
        if let Some(device) = t.device_of(s) {
            assert!(!device.is_empty() && !device.contains('/'));
        }
    }
    if let Ok(t) = Translation::new("f", s, TranslateAuth::DeviceKey) {
        let _ = t.device_of(s);
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(s) {
        let _ = Payload::parse(&v);
    }
});
