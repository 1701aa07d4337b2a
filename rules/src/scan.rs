//! A one-pass JSON validator that splits a top-level object into borrowed `(key, raw
//! value)` pairs.
//!
//! Routing reads a few top-level fields of small bodies, so most of the cost of a route
//! was serde_json walking the body through its visitor machinery (a `RawValue` per field,
//! a key deserializer per key). This scanner checks the same grammar (RFC 8259) in one
//! pass over the bytes, without recursion, and leaves every value as text. Fields are
//! decoded later, and only when a condition reads them. It accepts what serde_json
//! accepts; the `json_body` fuzz target and the tests below hold it to that.

use std::borrow::Cow;

/// Validates `text` as one JSON object and gives `field` each top-level key (decoded only
/// when it has escapes) with its value's text, in document order, and whether that value
/// is a string without escapes. `None` when `text` is not
/// valid JSON or not an object; `field` may have seen some fields by then.
pub(crate) fn split_object<'a>(
    text: &'a str,
    mut field: impl FnMut(Cow<'a, str>, &'a str, bool),
) -> Option<()> {
    let mut sc = Scan {
        s: text.as_bytes(),
        i: 0,
    };
    sc.ws();
    sc.eat(b'{')?;
    sc.ws();
    if sc.peek() == Some(b'}') {
        sc.i += 1;
    } else {
        loop {
            let k0 = sc.i;
            let escaped = sc.string()?;
            let key = if escaped {
                // Rare: let serde_json decode the escapes (and refuse lone surrogates in a
                // key, as it does when it parses one).
                Cow::Owned(serde_json::from_str::<String>(text.get(k0..sc.i)?).ok()?)
            } else {
                Cow::Borrowed(text.get(k0 + 1..sc.i - 1)?)
            };
            sc.ws();
            sc.eat(b':')?;
            sc.ws();
            let v0 = sc.i;
            let plain = sc.top_value()?;
            field(key, text.get(v0..sc.i)?, plain);
            sc.ws();
            match sc.next()? {
                b',' => sc.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    sc.ws();
    (sc.i == sc.s.len()).then_some(())
}

/// The bytes that end a run of plain string text: the quote, the backslash and the control
/// characters JSON wants escaped.
static STRING_STOPS: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// JSON's four whitespace characters, and nothing else.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// A string, starting at its opening quote; true when it holds an escape.
    fn string(&mut self) -> Option<bool> {
        self.eat(b'"')?;
        let mut escaped = false;
        loop {
            // Skips to the next byte a string cannot hold as is: one table load a byte.
            let mut i = self.i;
            while i < self.s.len() && !STRING_STOPS[usize::from(self.s[i])] {
                i += 1;
            }
            self.i = i;
            match self.next()? {
                b'"' => return Some(escaped),
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 4;
                        }
                        _ => return None,
                    }
                }
                // A raw control character: JSON wants it escaped.
                _ => return None,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, and within a double's range:
    /// serde_json refuses a document with a number that overflows one.
    fn number(&mut self) -> Option<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let mut large = false;
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => large = self.digits() >= 300,
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            (self.digits() > 0).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            (self.digits() > 0).then_some(())?;
            large = true;
        }
        if large {
            let text = std::str::from_utf8(self.s.get(start..self.i)?).ok()?;
            text.parse::<f64>().ok().filter(|n| n.is_finite())?;
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.s.get(self.i..end)? == word).then_some(())?;
        self.i = end;
        Some(())
    }

    /// An object's key and its colon, starting at the key's quote.
    fn key(&mut self) -> Option<()> {
        self.string()?;
        self.ws();
        self.eat(b':')
    }

    /// A field's value: scalars (most fields) directly, anything else through
    /// [`Scan::value`]. True when it is a string without escapes.
    fn top_value(&mut self) -> Option<bool> {
        match self.peek()? {
            b'"' => return self.string().map(|escaped| !escaped),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.value(),
        }
        .map(|()| false)
    }

    /// One value of any kind. Nesting is tracked on a heap stack, not by recursion, so a
    /// deeply nested body cannot overflow the worker's stack.
    fn value(&mut self) -> Option<()> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            self.ws();
            match self.peek()? {
                b'{' => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        open.push(b'}');
                        self.key()?;
                        continue;
                    }
                }
                b'[' => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        open.push(b']');
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // A value is complete: close what it completes, up to the next element.
            loop {
                let Some(&close) = open.last() else {
                    return Some(());
                };
                self.ws();
                match self.next()? {
                    b',' if close == b'}' => {
                        self.ws();
                        self.key()?;
                        break;
                    }
                    b',' => break,
                    b if b == close => {
                        open.pop();
                    }
                    _ => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(text: &str) -> Option<Vec<(Cow<'_, str>, &str)>> {
        let mut out = Vec::new();
        split_object(text, |k, v, _| out.push((k, v)))?;
        Some(out)
    }

    fn accepts(text: &str) -> bool {
        let ours = fields(text).is_some();
        let theirs = matches!(
            serde_json::from_str::<serde_json::Value>(text),
            Ok(serde_json::Value::Object(_))
        );
        assert_eq!(ours, theirs, "{text:?}");
        ours
    }

    #[test]
    fn accepts_what_serde_json_accepts() {
        for ok in [
            r#"{}"#,
            " {\t\"a\" :\n1 ,\r\"b\":[ ]} ",
            r#"{"a": -0.5e+10, "b": 0, "c": 1E3, "d": [1, [2, {"x": null}], {}], "e": "\u00e9\n"}"#,
            r#"{"a": {"b": {"c": [true, false, null, "s"]}}}"#,
            r#"{"a": "ü ✓ 😀", "b": "\ud83d\ude00"}"#,
            r#"{"t\u0065mp": 3}"#,
            r#"{"tiny": 1e-400, "max": 1.7976931348623157e308}"#,
        ] {
            assert!(accepts(ok), "{ok}");
        }
        for bad in [
            "",
            "{",
            "}",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":+1}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":[}"#,
            r#"{"a":{]}"#,
            "{\"a\":\"x\ty\"}",
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u12g4"}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}{}"#,
            "{\"a\":1}\u{c}",
            r#"{"\ud800": 1}"#,
            r#"{'a': 1}"#,
            r#"{"a": NaN}"#,
            r#"{"a": 1e400}"#,
            r#"{"a": [-2e309]}"#,
        ] {
            assert!(!accepts(bad), "{bad}");
        }
    }

    #[test]
    fn keeps_keys_and_raw_values() {
        let f = fields(r#"{"a": [1, 2] , "b":"x\"y", "c\n": -1.5}"#).expect("valid");
        let got: Vec<(&str, &str)> = f.iter().map(|(k, v)| (&**k, *v)).collect();
        assert_eq!(got, [("a", "[1, 2]"), ("b", r#""x\"y""#), ("c\n", "-1.5")]);
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(fields(&deep).is_some());
        let unclosed = format!("{{\"a\":{}}}", "[".repeat(100_000));
        assert!(fields(&unclosed).is_none());
    }

    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i32>().prop_map(|n| n.to_string()),
            (-1e6f64..1e6).prop_map(|n| format!("{n:e}")),
            "[a-z\\\\\"\u{e9} ]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-z]{1,3}", inner), 0..4).prop_map(|v| {
                    let body: Vec<String> = v
                        .into_iter()
                        .map(|(k, x)| format!("\"{k}\": {x}"))
                        .collect();
                    format!("{{{}}}", body.join(", "))
                }),
            ]
        })
    }

    proptest! {
        /// Valid documents with one byte changed, dropped or added: the scanner and
        /// serde_json agree on every one.
        #[test]
        fn agrees_with_serde_json_on_mutations(
            doc in json_text(),
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(b"{}[]:,\"\\ -.0123456789eEtrufalsn\t\x01x".to_vec()),
            how in 0u8..3,
        ) {
            let text = format!("{{\"k\": {doc}}}");
            let mut bytes = text.into_bytes();
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
            if let Ok(text) = String::from_utf8(bytes) {
                accepts(&text);
            }
        }
    }
}
