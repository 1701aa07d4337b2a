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
use crate::value::{Val, same};

pub enum LazyBody<'a> {
    /// A top-level object: fields in document order, values parsed on demand.
    Object(Vec<Field<'a>>),
    /// A top-level object of which only the fields a rule set reads were kept, by the
    /// number the set gave them.
    Slots(Slots<'a>),
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

pub struct Slots<'a> {
    slots: Vec<Slot<'a>>,
    /// Per slot, the field's value as JSON, for a path that goes into it; made on the
    /// first such path.
    parsed: OnceCell<Box<[OnceCell<Option<Json>>]>>,
    /// The validated body, for a path whose field has no slot.
    text: &'a str,
    whole: OnceCell<Option<Box<LazyBody<'a>>>>,
}

/// Plain data, so a body's slots are made and dropped without a loop over them.
#[derive(Default, Clone, Copy)]
struct Slot<'a> {
    raw: Option<&'a str>,
    /// True when `raw` is a string without escapes.
    plain: bool,
    /// True once a key equal to the field's name was seen: it beats any that differ in
    /// case.
    exact: bool,
    /// The value, when it is a scalar: read once the body is validated, as the fields
    /// kept are the ones the rules read.
    scalar: Option<Scalar<'a>>,
}

/// A top-level scalar as read from its text.
#[derive(Clone, Copy)]
enum Scalar<'a> {
    /// A number serde_json would refuse (cannot happen in a validated body).
    Undef,
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
}

impl<'a> Scalar<'a> {
    fn val(self) -> Val<'a> {
        match self {
            Scalar::Undef => Val::Undef,
            Scalar::Null => Val::Null,
            Scalar::Bool(b) => Val::Bool(b),
            Scalar::Num(n) => Val::Num(n),
            Scalar::Str(s) => Val::Str(Cow::Borrowed(s)),
        }
    }
}

/// The top-level fields a rule set reads, numbered, with an index that finds the few a
/// body's key could be in a couple of instructions: comparing every key with every name
/// cost more than the rest of reading the body.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldTable {
    names: Vec<Box<str>>,
    /// By a key's length and first letter (ASCII case ignored, as matches may), the slots
    /// whose name has the same; a bit per slot.
    buckets: [u64; 64],
}

impl FieldTable {
    /// At most this many fields get a slot; a rule set that reads more reads the others
    /// by name.
    pub const MAX: usize = 64;

    pub const EMPTY: FieldTable = FieldTable {
        names: Vec::new(),
        buckets: [0; 64],
    };

    /// The slot of `name`, numbering it if it is new; `None` when the table is full.
    pub fn slot(&mut self, name: &str) -> Option<usize> {
        if let Some(i) = self.names.iter().position(|n| **n == *name) {
            return Some(i);
        }
        if self.names.len() == Self::MAX {
            return None;
        }
        let i = self.names.len();
        self.buckets[bucket(name)] |= 1 << i;
        self.names.push(name.into());
        Some(i)
    }

    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl Default for FieldTable {
    fn default() -> Self {
        FieldTable::EMPTY
    }
}

fn bucket(key: &str) -> usize {
    let first = key.as_bytes().first().map_or(0, u8::to_ascii_lowercase);
    ((key.len() & 7) << 3) | usize::from(first & 7)
}

impl<'a> LazyBody<'a> {
    /// Splits `body` if it is valid JSON; `None` otherwise. With `fields`, a top-level
    /// object keeps only those fields' values, numbered as in `fields`.
    pub fn parse(body: &'a [u8], fields: &FieldTable) -> Option<LazyBody<'a>> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
        // JSON is UTF-8; checking the whole body at once is cheaper than checking each
        // string on its own.
        let body = std::str::from_utf8(body).ok()?;
        if *first != b'{' {
            return serde_json::from_str(body).ok().map(LazyBody::Other);
        }
        if !fields.is_empty() {
            return slots(body, fields).map(LazyBody::Slots);
        }
        let mut all = Vec::with_capacity(8);
        split_object(body, |key, raw, _| {
            all.push(Field {
                key,
                raw,
                scalar: OnceCell::new(),
                parsed: OnceCell::new(),
            })
        })?;
        Some(LazyBody::Object(all))
    }

    /// The value at `path`; undefined when there is none. Names match exactly first, then
    /// ignoring ASCII case; a duplicate key resolves to its last value, as serde_json does.
    pub fn get(&self, path: &[Seg]) -> Val<'_> {
        match self {
            LazyBody::Other(doc) => walk(doc, path).map_or(Val::Undef, Val::from_json),
            LazyBody::Slots(s) => s
                .whole
                .get_or_init(|| {
                    LazyBody::parse(s.text.as_bytes(), &FieldTable::default()).map(Box::new)
                })
                .as_ref()
                .map_or(Val::Undef, |whole| whole.get(path)),
            LazyBody::Object(fields) => {
                let Some((Seg::Field(name), rest)) = path.split_first() else {
                    return Val::Undef;
                };
                let field = fields.iter().rfind(|f| same(&f.key, name)).or_else(|| {
                    // Like `walk` on a parsed object: the first case-insensitive match in
                    // key order, and of equal keys the last (`min_by` keeps the first of
                    // equals, hence `rev`).
                    fields
                        .iter()
                        .rev()
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

    /// The value at `path`, whose first field is the one numbered `slot` by the `fields`
    /// given to [`LazyBody::parse`].
    pub fn get_field(&self, slot: usize, path: &[Seg]) -> Val<'_> {
        let LazyBody::Slots(s) = self else {
            return self.get(path);
        };
        let Some(field) = s.slots.get(slot) else {
            return self.get(path);
        };
        let Some(raw) = field.raw else {
            return Val::Undef;
        };
        let rest = path.get(1..).unwrap_or_default();
        if rest.is_empty()
            && let Some(v) = field.scalar
        {
            return v.val();
        }
        let parsed = s
            .parsed
            .get_or_init(|| s.slots.iter().map(|_| OnceCell::new()).collect());
        let Some(parsed) = parsed.get(slot) else {
            return Val::Undef;
        };
        parsed
            .get_or_init(|| serde_json::from_str(raw).ok())
            .as_ref()
            .and_then(|v| walk(v, rest))
            .map_or(Val::Undef, Val::from_json)
    }
}

/// Validates the object `body` and keeps the values of `fields`. A field matches a key
/// exactly, or else ignoring ASCII case: then, as `walk` does on a parsed object, the
/// smallest such key, and of duplicates the last.
fn slots<'a>(body: &'a str, fields: &FieldTable) -> Option<Slots<'a>> {
    let names = &fields.names;
    let mut slots = vec![Slot::default(); names.len()];
    // Per slot, the key of a match that differs in case, made only when one is seen.
    let mut kept: Vec<Option<Cow<'a, str>>> = Vec::new();
    split_object(body, |key, raw, plain| {
        let mut candidates = fields.buckets[bucket(&key)];
        while candidates != 0 {
            let i = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            let (Some(name), Some(slot)) = (names.get(i), slots.get_mut(i)) else {
                continue;
            };
            if same(&key, name) {
                slot.raw = Some(raw);
                slot.plain = plain;
                slot.exact = true;
            } else if !slot.exact && key.eq_ignore_ascii_case(name) {
                if kept.is_empty() {
                    kept.resize(names.len(), None);
                }
                let Some(k) = kept.get_mut(i) else { continue };
                if k.as_deref().is_none_or(|k| *key <= *k) {
                    slot.raw = Some(raw);
                    slot.plain = plain;
                    *k = Some(key.clone());
                }
            }
        }
    })?;
    for slot in &mut slots {
        slot.scalar = match (slot.raw, slot.plain) {
            // The scanner saw no escape: the text between the quotes is the value.
            (Some(raw), true) => raw.get(1..raw.len() - 1).map(Scalar::Str),
            (Some(raw), false) => scalar_of(raw),
            (None, _) => None,
        };
    }
    Some(Slots {
        slots,
        parsed: OnceCell::new(),
        text: body,
        whole: OnceCell::new(),
    })
}

/// A scalar read straight from its validated JSON text: most conditions compare top-level
/// numbers and plain strings, and building a `serde_json::Value` for them (a `String` per
/// string field) was most of the cost of evaluating a route. `None` for anything else.
fn scalar(raw: &str) -> Option<Val<'_>> {
    scalar_of(raw).map(Scalar::val)
}

fn scalar_of(raw: &str) -> Option<Scalar<'_>> {
    match raw.as_bytes().first()? {
        // A byte loop: these strings are short, and a call into `memchr` cost more.
        b'"' if !raw.bytes().any(|b| b == b'\\') => raw.get(1..raw.len() - 1).map(Scalar::Str),
        b't' => Some(Scalar::Bool(true)),
        b'f' => Some(Scalar::Bool(false)),
        b'n' => Some(Scalar::Null),
        b'-' | b'0'..=b'9' => Some(short_number(raw).map_or_else(
            || serde_json::from_str::<f64>(raw).map_or(Scalar::Undef, Scalar::Num),
            Scalar::Num,
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
        let b = LazyBody::parse(body, &FieldTable::default()).expect("valid");
        assert_eq!(b.get(&[f("temp")]), Val::Num(21.5));
        assert_eq!(b.get(&[f("nested"), f("x"), Seg::Index(1)]), Val::Num(2.0));
        assert_eq!(b.get(&[f("s")]), Val::Str("a\"b".into()));
        assert_eq!(b.get(&[f("missing")]), Val::Undef);
        assert!(LazyBody::parse(br#"{"temp": 21.5"#, &FieldTable::default()).is_none());
        assert!(LazyBody::parse(br#"{"a": 1} trailing"#, &FieldTable::default()).is_none());
        assert!(LazyBody::parse(br#"{"a": tru}"#, &FieldTable::default()).is_none());
        assert!(LazyBody::parse(b"", &FieldTable::default()).is_none());
        let arr = LazyBody::parse(b"[1, 2]", &FieldTable::default()).expect("array");
        assert_eq!(arr.get(&[Seg::Index(0)]), Val::Num(1.0));
        let escaped =
            LazyBody::parse(br#"{"t\u0065mp": 3}"#, &FieldTable::default()).expect("escaped key");
        assert_eq!(escaped.get(&[f("temp")]), Val::Num(3.0));
        let dup = LazyBody::parse(br#"{"a": 1, "a": 2}"#, &FieldTable::default()).expect("dup");
        assert_eq!(dup.get(&[f("a")]), Val::Num(2.0));
        let scalars = LazyBody::parse(
            br#"{"t": true, "f": false, "n": null, "e": "", "i": -0}"#,
            &FieldTable::default(),
        )
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
            let lazy = LazyBody::parse(body.as_bytes(), &FieldTable::default()).expect("valid");
            let json: serde_json::Value = serde_json::from_str(&body).expect("valid");
            assert_eq!(lazy.get(&[f("x")]), Val::from_json(&json["x"]), "{text}");
            assert_eq!(
                short_number(text).map(f64::to_bits),
                json["x"].as_f64().map(f64::to_bits),
                "{text}"
            );
        }
        assert!(
            LazyBody::parse(br#"{"big": 1e400}"#, &FieldTable::default()).is_none(),
            "serde_json refuses a number a double cannot hold"
        );
        assert_eq!(scalars.get(&[f("t"), f("deeper")]), Val::Undef);
    }

    #[test]
    fn slots_read_what_a_search_by_name_reads() {
        let mut fields = FieldTable::default();
        for (i, name) in ["temp", "Temp", "nested", "absent", "s"]
            .into_iter()
            .enumerate()
        {
            assert_eq!(fields.slot(name), Some(i));
        }
        assert_eq!(fields.slot("nested"), Some(2), "a name has one slot");
        let paths: Vec<Vec<Seg>> = vec![
            vec![f("temp")],
            vec![f("Temp")],
            vec![f("nested"), f("x")],
            vec![f("absent")],
            vec![f("s")],
        ];
        for body in [
            r#"{"temp": 1, "Temp": 2, "s": "a\"b"}"#,
            r#"{"TEMP": 3, "Temp": 2, "temp": 1, "nested": {"x": [1]}}"#,
            r#"{"Temp": 1, "TEMP": 2, "Temp": 3}"#,
            r#"{"tEmp": 1, "NESTED": {"x": 5}, "Nested": {"x": 6}}"#,
            r#"{"temp": 1, "temp": 2}"#,
            r#"[1, 2]"#,
            r#"{}"#,
        ] {
            let by_name = LazyBody::parse(body.as_bytes(), &FieldTable::default()).expect("valid");
            let slotted = LazyBody::parse(body.as_bytes(), &fields).expect("valid");
            for (slot, path) in paths.iter().enumerate() {
                assert_eq!(
                    slotted.get_field(slot, path),
                    by_name.get(path),
                    "{body} {path:?}"
                );
            }
            // A field that has no slot is still found.
            assert_eq!(
                slotted.get(&[f("TEMP")]),
                by_name.get(&[f("TEMP")]),
                "{body}"
            );
        }
        assert!(LazyBody::parse(br#"{"temp": 1,}"#, &fields).is_none());
    }
}
