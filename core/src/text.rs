//! Message bodies as text: UTF-8 by default, UTF-16 or UTF-32 when the device declared it
//! in `$.ce` (IoT Hub's `contentEncoding`).

use std::borrow::Cow;

/// The character encodings a device may declare for its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    Utf8,
    Utf16 { big_endian: bool },
    Utf32 { big_endian: bool },
}

/// Reads a declared `contentEncoding`. Without a byte-order mark, plain "utf-16" and
/// "utf-32" mean little-endian: that is what .NET's `Encoding.Unicode` and
/// `Encoding.UTF32` (what device code on Windows and the C# SDK samples use) produce.
/// Anything that is not a Unicode charset (`gzip`, say) is treated as UTF-8.
fn charset(declared: Option<&str>) -> Charset {
    let Some(d) = declared else {
        return Charset::Utf8;
    };
    let d = d.trim().to_ascii_lowercase().replace('_', "-");
    match d.as_str() {
        "utf-16" | "utf16" | "utf-16le" | "utf16le" | "unicode" => {
            Charset::Utf16 { big_endian: false }
        }
        "utf-16be" | "utf16be" => Charset::Utf16 { big_endian: true },
        "utf-32" | "utf32" | "utf-32le" | "utf32le" => Charset::Utf32 { big_endian: false },
        "utf-32be" | "utf32be" => Charset::Utf32 { big_endian: true },
        _ => Charset::Utf8,
    }
}

/// The body as text, or `None` when it is not valid in its declared encoding (then it is
/// binary, and whoever stores it must keep the bytes).
pub fn body_text<'a>(body: &'a [u8], content_encoding: Option<&str>) -> Option<Cow<'a, str>> {
    match charset(content_encoding) {
        Charset::Utf8 => std::str::from_utf8(body).ok().map(Cow::Borrowed),
        Charset::Utf16 { big_endian } => utf16(body, big_endian).map(Cow::Owned),
        Charset::Utf32 { big_endian } => utf32(body, big_endian).map(Cow::Owned),
    }
}

fn utf16(mut b: &[u8], mut big_endian: bool) -> Option<String> {
    match b {
        [0xff, 0xfe, rest @ ..] => (b, big_endian) = (rest, false),
        [0xfe, 0xff, rest @ ..] => (b, big_endian) = (rest, true),
        _ => {}
    }
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let units = b.chunks_exact(2).map(|c| {
        let pair = [c[0], c[1]];
        if big_endian {
            u16::from_be_bytes(pair)
        } else {
            u16::from_le_bytes(pair)
        }
    });
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .ok()
}

fn utf32(mut b: &[u8], mut big_endian: bool) -> Option<String> {
    match b {
        [0xff, 0xfe, 0, 0, rest @ ..] => (b, big_endian) = (rest, false),
        [0, 0, 0xfe, 0xff, rest @ ..] => (b, big_endian) = (rest, true),
        _ => {}
    }
    if !b.len().is_multiple_of(4) {
        return None;
    }
    b.chunks_exact(4)
        .map(|c| {
            let quad = [c[0], c[1], c[2], c[3]];
            let v = if big_endian {
                u32::from_be_bytes(quad)
            } else {
                u32::from_le_bytes(quad)
            };
            char::from_u32(v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn decodes_declared_unicode_encodings_and_refuses_binary() {
        let text = "{\"t\": \"21.5°C ✓ 𝄞\"}";
        assert_eq!(body_text(text.as_bytes(), None).as_deref(), Some(text));
        assert_eq!(
            body_text(text.as_bytes(), Some("UTF-8")).as_deref(),
            Some(text)
        );
        assert_eq!(
            body_text(&le16(text), Some("utf-16")).as_deref(),
            Some(text)
        );
        let be: Vec<u8> = [0xfe, 0xff]
            .into_iter()
            .chain(text.encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        assert_eq!(
            body_text(&be, Some("utf-16")).as_deref(),
            Some(text),
            "BOM wins"
        );
        let u32be: Vec<u8> = text
            .chars()
            .flat_map(|c| (c as u32).to_be_bytes())
            .collect();
        assert_eq!(body_text(&u32be, Some("utf-32be")).as_deref(), Some(text));
        let u32le: Vec<u8> = text
            .chars()
            .flat_map(|c| (c as u32).to_le_bytes())
            .collect();
        assert_eq!(body_text(&u32le, Some("utf-32")).as_deref(), Some(text));
        assert_eq!(body_text(&[0xff, 0x00, 0xc3], None), None);
        assert_eq!(
            body_text(&[0x41, 0x00, 0x42], Some("utf-16")),
            None,
            "odd length"
        );
        assert_eq!(
            body_text(&[0x00, 0xd8], Some("utf-16")),
            None,
            "lone surrogate"
        );
        assert_eq!(
            body_text(&[0, 0, 0x11, 0], Some("utf-32")),
            None,
            "beyond U+10FFFF"
        );
    }
}
