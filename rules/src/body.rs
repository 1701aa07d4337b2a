//! A JSON body parsed only as far as conditions look into it.
//!
//! Routes usually read a few top-level fields of small bodies. Building a full
//! `serde_json::Value` allocates every key and value; instead the top-level object is
//! split into `(key, raw value)` pairs borrowed from the body (serde_json still validates
//! the whole document), and a field's value is parsed the first time a path needs it.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;

use serde::Deserializer as _;
use serde::de::{MapAccess, Visitor};
use serde_json::Value as Json;
use serde_json::value::RawValue;

use crate::ast::Seg;
use crate::eval::walk;
use crate::value::Val;

pub enum LazyBody<'a> {
    /// A top-level object: fields in document order, values parsed on demand.
    Object(Vec<Field<'a>>),
    /// Any other JSON document, parsed whole.
    Other(Json),
}

pub struct Field<'a> {
    key: Cow<'a, str>,
    raw: &'a RawValue,
    parsed: OnceCell<Option<Json>>,
}

struct Fields;

/// A key borrowed from the body unless it has escapes. serde's own `Cow<str>` always
/// allocates, which was a `String` per field per event.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for Fields {
    type Value = Vec<Field<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(Key(key)) = map.next_key()? {
            let raw: &'de RawValue = map.next_value()?;
            out.push(Field {
                key,
                raw,
                parsed: OnceCell::new(),
            });
        }
        Ok(out)
    }
}

impl<'a> LazyBody<'a> {
    /// Splits `body` if it is valid JSON; `None` otherwise.
    pub fn parse(body: &'a [u8]) -> Option<LazyBody<'a>> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
        // JSON is UTF-8; checking the whole body at once is cheaper than serde_json
        // checking each string of a byte slice on its own.
        let body = std::str::from_utf8(body).ok()?;
        if *first == b'{' {
            let mut de = serde_json::Deserializer::from_str(body);
            let fields = de.deserialize_map(Fields).ok()?;
            de.end().ok()?;
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
                let field = fields.iter().rfind(|f| f.key == *name).or_else(|| {
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
                    && let Some(v) = scalar(field.raw.get())
                {
                    return v;
                }
                field
                    .parsed
                    .get_or_init(|| serde_json::from_str(field.raw.get()).ok())
                    .as_ref()
                    .and_then(|v| walk(v, rest))
                    .map_or(Val::Undef, Val::from_json)
            }
        }
    }
}

/// A scalar read straight from its validated JSON text: most conditions compare top-level
/// numbers and plain strings, and building a `serde_json::Value` for them (a `String` per
/// string field) was most of the cost of evaluating a route. `None` for anything else.
fn scalar(raw: &str) -> Option<Val<'_>> {
    match raw.as_bytes().first()? {
        b'"' if !raw.contains('\\') => raw
            .get(1..raw.len() - 1)
            .map(|s| Val::Str(Cow::Borrowed(s))),
        b't' => Some(Val::Bool(true)),
        b'f' => Some(Val::Bool(false)),
        b'n' => Some(Val::Null),
        b'-' | b'0'..=b'9' => Some(serde_json::from_str::<f64>(raw).map_or(Val::Undef, Val::Num)),
        _ => None,
    }
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
        let scalars =
            LazyBody::parse(br#"{"t": true, "f": false, "n": null, "e": "", "big": 1e400}"#)
                .expect("scalars");
        assert_eq!(scalars.get(&[f("t")]), Val::Bool(true));
        assert_eq!(scalars.get(&[f("f")]), Val::Bool(false));
        assert_eq!(scalars.get(&[f("n")]), Val::Null);
        assert_eq!(scalars.get(&[f("e")]), Val::Str("".into()));
        assert_eq!(scalars.get(&[f("big")]), Val::Undef);
        assert_eq!(scalars.get(&[f("t"), f("deeper")]), Val::Undef);
    }
}
