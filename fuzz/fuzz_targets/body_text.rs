//! Bodies as text in their declared encoding: never panics, agrees with the standard
//! library on UTF-8, and what it decodes from UTF-16 re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::text::body_text;

fuzz_target!(|data: &[u8]| {
    let Some((sel, body)) = data.split_first() else {
        return;
    };
    let declared = [None, Some("utf-8"), Some("utf-16"), Some("UTF-16BE"), Some("utf-32"), Some("utf-32be")];
    let ce = declared[usize::from(*sel) % declared.len()];
    let text = body_text(body, ce);
    match ce {
        None | Some("utf-8") => assert_eq!(text.as_deref(), std::str::from_utf8(body).ok()),
        Some("utf-16") if !body.starts_with(&[0xff, 0xfe]) && !body.starts_with(&[0xfe, 0xff]) => {
            if let Some(t) = text {
                let again: Vec<u8> = t.encode_utf16().flat_map(u16::to_le_bytes).collect();
                assert_eq!(again, body);
            }
        }
        _ => {}
    }
});
