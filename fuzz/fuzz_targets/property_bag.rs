//! Topic classification and property-bag decoding on arbitrary strings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_gateways::mqtt::topic::{DeviceTopic, classify, decode_bag};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = decode_bag(s);
    if let Some(DeviceTopic::Telemetry { bag, .. }) = classify(s, "dev-1") {
        if let Ok((_, props)) = decode_bag(bag) {
            assert!(props.iter().all(|(k, _)| !k.is_empty()));
        }
    }
});
