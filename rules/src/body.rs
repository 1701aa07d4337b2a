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

pub enum LazyBody<'a> {
    /// A top-level object: fields in document order, values parsed on demand.
    Object {
        fields: Vec<(Cow<'a, str>, &'a RawValue)>,
        parsed: Vec<OnceCell<Option<Json>>>,
    },
    /// Any other JSON document, parsed whole.
    Other(Json),
}

struct Fields;

impl<'de> Visitor<'de> for Fields {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            let v: &'de RawValue = map.next_value()?;
            out.push((k, v));
        }
        Ok(out)
    }
}

impl<'a> LazyBody<'a> {
    /// Splits `body` if it is valid JSON; `None` otherwise.
    pub fn parse(body: &'a [u8]) -> Option<LazyBody<'a>> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first == b'{' {
            let mut de = serde_json::Deserializer::from_slice(body);
            let fields = de.deserialize_map(Fields).ok()?;
            de.end().ok()?;
            let parsed = (0..fields.len()).map(|_| OnceCell::new()).collect();
            Some(LazyBody::Object { fields, parsed })
        } else {
            serde_json::from_slice(body).ok().map(LazyBody::Other)
        }
    }

    /// The value at `path`, if there is one. Names match exactly first, then ignoring ASCII
    /// case; a duplicate key resolves to its last value, as serde_json does.
    pub fn get(&self, path: &[Seg]) -> Option<&Json> {
        match self {
            LazyBody::Other(doc) => walk(doc, path),
            LazyBody::Object { fields, parsed } => {
                let (Seg::Field(name), rest) = path.split_first()? else {
                    return None;
                };
                let i = fields.iter().rposition(|(k, _)| k == name).or_else(|| {
                    // Like `walk` on a parsed object: the first case-insensitive match in
                    // key order.
                    fields
                        .iter()
                        .enumerate()
                        .filter(|(_, (k, _))| k.eq_ignore_ascii_case(name))
                        .min_by(|a, b| a.1.0.cmp(&b.1.0))
                        .map(|(i, _)| i)
                })?;
                let value = parsed[i]
                    .get_or_init(|| serde_json::from_str(fields[i].1.get()).ok())
                    .as_ref()?;
                walk(value, rest)
            }
        }
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
        assert_eq!(b.get(&[f("temp")]), Some(&serde_json::json!(21.5)));
        assert_eq!(
            b.get(&[f("nested"), f("x"), Seg::Index(1)]),
            Some(&serde_json::json!(2))
        );
        assert_eq!(b.get(&[f("s")]), Some(&serde_json::json!("a\"b")));
        assert_eq!(b.get(&[f("missing")]), None);
        assert!(LazyBody::parse(br#"{"temp": 21.5"#).is_none());
        assert!(LazyBody::parse(br#"{"a": 1} trailing"#).is_none());
        assert!(LazyBody::parse(br#"{"a": tru}"#).is_none());
        assert!(LazyBody::parse(b"").is_none());
        let arr = LazyBody::parse(b"[1, 2]").expect("array");
        assert_eq!(arr.get(&[Seg::Index(0)]), Some(&serde_json::json!(1)));
        let dup = LazyBody::parse(br#"{"a": 1, "a": 2}"#).expect("dup");
        assert_eq!(dup.get(&[f("a")]), Some(&serde_json::json!(2)));
    }
}
