//! Routing-key templates of `amqp` endpoints on arbitrary strings: parsing never panics,
//! and a template renders for any delivery.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_brokers::template::Template;
use weir_core::{Delivery, DeviceId, Event};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(t) = Template::parse(s) else { return };
    let Ok(id) = DeviceId::parse("dev-1") else { return };
    let mut e = Event::telemetry(id, 0, Bytes::new());
    e.properties.push((s.to_owned(), s.to_owned()));
    let d = Delivery {
        event: Arc::new(e),
        enrichments: Vec::new(),
        columns: Vec::new(),
        priority: 5,
        rules_version: Arc::from("v"),
        route: Arc::from(s),
    };
    let mut out = String::new();
    t.render(&d, s, &mut out);
    if !s.contains('{') {
        assert_eq!(out, s, "a template without placeholders is itself");
    }
});
