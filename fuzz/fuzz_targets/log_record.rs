//! Log records on arbitrary bytes: the framing scan stops at the first bad record, and the
//! payload decoder rejects garbage; a decoded event re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::{codec, record};

fuzz_target!(|data: &[u8]| {
    let s = record::scan(data, 0);
    assert!(s.valid_bytes as usize <= data.len());
    if let Ok(e) = codec::decode(data, 0, None) {
        let mut out = Vec::new();
        codec::encode(&e, &mut out);
        assert_eq!(out, data);
    }
});
