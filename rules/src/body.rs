//! A JSON body parsed only as far as conditions look into it.
//!
//! Routes usually read a few top-level fields of small bodies. Building a full
//! `serde_json::Value` allocates every key and value; instead the top-level object is
//! split into `(key, raw value)` pairs borrowed from the body (the [`crate::scan`]
//! validates the whole document on the way), and a field's value is parsed the first
//! time a path needs it.

use std::borrow::Cow;
use std::cell::OnceCell;

use serde_json::Value as Json;

use crate::ast::Seg;
use crate::eval::walk;
use crate::scan::split_object;
use crate::value::Val;

pub enum LazyBody<'a> {
    /// A top-level object: fields in document order, values parsed on demand.
    Object(Vec<Field<'a>>),
    /// Any other JSON document, parsed whole.
    Other(Json),
}

pub struct Field<'a> {
    key: Cow<'a, str>,
    raw: &'a str,
    /// The value as a condition sees it, read the first time one does.
    scalar: OnceCell<Option<Val<'a>>>,
    parsed: OnceCell<Option<Json>>,
}

impl<'a> LazyBody<'a> {
    /// Splits `body` if it is valid JSON; `None` otherwise.
    pub fn parse(body: &'a [u8]) -> Option<LazyBody<'a>> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
        // JSON is UTF-8; checking the whole body at once is cheaper than checking each
        // string on its own.
        let body = std::str::from_utf8(body).ok()?;
        if *first == b'{' {
            let mut fields = Vec::with_capacity(8);
            split_object(body, |key, raw| {
                fields.push(Field {
                    key,
                    raw,
                    scalar: OnceCell::new(),
                    parsed: OnceCell::new(),
                })
            })?;
            Some(LazyBody::Object(fields))
        } else {
            serde_json::from_str(body).ok().map(LazyBody::Other)
        }
    }

    /// The value at `path`; undefined when there is none. Names match exactly first, then
    /// ignoring ASCII case; a duplicate key resolves to its last value, as serde_json does.
    pub fn get(&self, path: &[Seg]) -> Val<'_> {
        match self {
            LazyBody::Other(doc) => walk(doc, path).map_or(Val::Undef, Val::from_json),
            LazyBody::Object(fields) => {
                let Some((Seg::Field(name), rest)) = path.split_first() else {
                    return Val::Undef;
                };
                let field = fields.iter().rfind(|f| same(&f.key, name)).or_else(|| {
                    // Like `walk` on a parsed object: the first case-insensitive match in
                    // key order.
                    fields
                        .iter()
                        .filter(|f| f.key.eq_ignore_ascii_case(name))
                        .min_by(|a, b| a.key.cmp(&b.key))
                });
                let Some(field) = field else {
                    return Val::Undef;
                };
                if rest.is_empty()
                    && let Some(v) = field.scalar.get_or_init(|| scalar(field.raw))
                {
                    return v.clone();
                }
                field
                    .parsed
                    .get_or_init(|| serde_json::from_str(field.raw).ok())
                    .as_ref()
                    .and_then(|v| walk(v, rest))
                    .map_or(Val::Undef, Val::from_json)
            }
        }
    }
}

/// Whether two keys are equal. Keys are short: comparing their bytes here costs less
/// than the call into libc's `memcmp` that `==` makes.
#[inline]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// A scalar read straight from its validated JSON text: most conditions compare top-level
/// numbers and plain strings, and building a `serde_json::Value` for them (a `String` per
/// string field) was most of the cost of evaluating a route. `None` for anything else.
fn scalar(raw: &str) -> Option<Val<'_>> {
    match raw.as_bytes().first()? {
        // A byte loop: these strings are short, and a call into `memchr` cost more.
        b'"' if !raw.bytes().any(|b| b == b'\\') => raw
            .get(1..raw.len() - 1)
            .map(|s| Val::Str(Cow::Borrowed(s))),
        b't' => Some(Val::Bool(true)),
        b'f' => Some(Val::Bool(false)),
        b'n' => Some(Val::Null),
        b'-' | b'0'..=b'9' => Some(short_number(raw).map_or_else(
            || serde_json::from_str::<f64>(raw).map_or(Val::Undef, Val::Num),
            Val::Num,
        )),
        _ => None,
    }
}

/// A number of at most 15 digits and no exponent (`-12`, `21.50`), the common case in
/// telemetry, without serde_json's deserializer. Its digits fit an f64's 53-bit
/// significand exactly, so one division by an exact power of ten is correctly rounded and
/// gives the same double as serde_json (which computes it the same way). The text is
/// already valid JSON.
fn short_number(raw: &str) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, text) = match raw.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, raw),
    };
    // One pass over the digits (the text is valid JSON: digits, at most one `.`, maybe an
    // exponent, which sends it to serde_json).
    let (mut n, mut digits, mut fraction) = (0i64, 0usize, None);
    for b in text.bytes() {
        match b {
            b'0'..=b'9' => {
                digits += 1;
                if digits > 15 {
                    return None;
                }
                n = n * 10 + i64::from(b - b'0');
            }
            b'.' => fraction = Some(digits),
            _ => return None,
        }
    }
    let scale = fraction.map_or(0, |at| digits - at);
    let v = n as f64 / *POW10.get(scale)?;
    // `-0` is a zero with its sign, as serde_json reads it.
    Some(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Seg {
        Seg::Field(s.into())
    }

    #[test]
    fn reads_fields_lazily_and_rejects_invalid_json() {
        let body = br#" {"temp": 21.5, "Nested": {"x": [1, 2]}, "s": "a\"b"} "#;
        let b = LazyBody::parse(body).expect("valid");
        assert_eq!(b.get(&[f("temp")]), Val::Num(21.5));
        assert_eq!(b.get(&[f("nested"), f("x"), Seg::Index(1)]), Val::Num(2.0));
        assert_eq!(b.get(&[f("s")]), Val::Str("a\"b".into()));
        assert_eq!(b.get(&[f("missing")]), Val::Undef);
        assert!(LazyBody::parse(br#"{"temp": 21.5"#).is_none());
        assert!(LazyBody::parse(br#"{"a": 1} trailing"#).is_none());
        assert!(LazyBody::parse(br#"{"a": tru}"#).is_none());
        assert!(LazyBody::parse(b"").is_none());
        let arr = LazyBody::parse(b"[1, 2]").expect("array");
        assert_eq!(arr.get(&[Seg::Index(0)]), Val::Num(1.0));
        let escaped = LazyBody::parse(br#"{"t\u0065mp": 3}"#).expect("escaped key");
        assert_eq!(escaped.get(&[f("temp")]), Val::Num(3.0));
        let dup = LazyBody::parse(br#"{"a": 1, "a": 2}"#).expect("dup");
        assert_eq!(dup.get(&[f("a")]), Val::Num(2.0));
        let scalars = LazyBody::parse(br#"{"t": true, "f": false, "n": null, "e": "", "i": -0}"#)
            .expect("scalars");
        assert_eq!(scalars.get(&[f("t")]), Val::Bool(true));
        assert_eq!(scalars.get(&[f("f")]), Val::Bool(false));
        assert_eq!(scalars.get(&[f("n")]), Val::Null);
        assert_eq!(scalars.get(&[f("e")]), Val::Str("".into()));
        assert_eq!(scalars.get(&[f("i")]), Val::Num(0.0));
        // The short path and serde_json read numbers to the same double.
        for text in [
            "0",
            "-0",
            "7",
            "-12",
            "21.50",
            "0.1",
            "0.3",
            "123456789.012345",
            "-0.000001",
        ] {
            let body = format!(r#"{{"x": {text}}}"#);
            let lazy = LazyBody::parse(body.as_bytes()).expect("valid");
            let json: serde_json::Value = serde_json::from_str(&body).expect("valid");
            assert_eq!(lazy.get(&[f("x")]), Val::from_json(&json["x"]), "{text}");
            assert_eq!(
                short_number(text).map(f64::to_bits),
                json["x"].as_f64().map(f64::to_bits),
                "{text}"
            );
        }
        assert!(
            LazyBody::parse(br#"{"big": 1e400}"#).is_none(),
            "serde_json refuses a number a double cannot hold"
        );
        assert_eq!(scalars.get(&[f("t"), f("deeper")]), Val::Undef);
    }
}
