//! The MQTT decoder on arbitrary bytes: every packet it yields, and the remainder, must be
//! handled without panicking; a decoded PUBLISH re-encodes to the bytes it came from.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weir_gateways::mqtt::codec::{self, Inbound};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(p)) = codec::decode(&mut buf, 64 * 1024) {
        if let Inbound::Publish(p) = p
            && let Ok(topic) = std::str::from_utf8(&p.topic)
        {
            let mut out = BytesMut::new();
            // A decoded topic always fits the encoder: its length came in 16 bits.
            assert!(codec::publish(topic, &p.payload, p.qos, p.pkid, p.dup, &mut out).is_ok());
            let mut again = out.clone();
            assert!(matches!(codec::decode(&mut again, 64 * 1024), Ok(Some(Inbound::Publish(q))) if q.payload == p.payload && q.pkid == p.pkid));
        }
    }
});
