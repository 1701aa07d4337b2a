//! Values of the routing query language and the operations on them.
//!
//! IoT Hub's routing language follows Cosmos DB SQL: an expression can be *undefined*
//! (a missing property, a type mismatch), which is neither true nor false. Comparisons
//! between different types are undefined, `AND`/`OR` use three-valued logic, and only a
//! condition that evaluates to exactly `true` routes a message.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value as Json;

use crate::ast::BinOp;

#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Undef,
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'a, str>),
    /// A JSON array or object. Always borrowed (from the body, a twin or a constant):
    /// every value is moved on each step of an evaluation, so it is kept small.
    Doc(&'a Json),
}

impl<'a> Val<'a> {
    pub fn from_json(v: &'a Json) -> Val<'a> {
        match v {
            Json::Null => Val::Null,
            Json::Bool(b) => Val::Bool(*b),
            Json::Number(n) => n.as_f64().map_or(Val::Undef, Val::Num),
            Json::String(s) => Val::Str(Cow::Borrowed(s)),
            Json::Array(_) | Json::Object(_) => Val::Doc(v),
        }
    }

    pub fn is_true(&self) -> bool {
        matches!(self, Val::Bool(true))
    }

    pub fn num(n: f64) -> Val<'a> {
        if n.is_finite() {
            Val::Num(n)
        } else {
            Val::Undef
        }
    }

    /// The value as JSON, for printing; `None` when undefined.
    pub fn to_json(&self) -> Option<Json> {
        Some(match self {
            Val::Undef => return None,
            Val::Null => Json::Null,
            Val::Bool(b) => Json::Bool(*b),
            Val::Num(n) => serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number),
            Val::Str(s) => Json::String(s.to_string()),
            Val::Doc(d) => (*d).clone(),
        })
    }
}

/// Equality as `=` sees it: `None` when the comparison is undefined.
pub fn equals(a: &Val, b: &Val) -> Option<bool> {
    match (a, b) {
        (Val::Undef, _) | (_, Val::Undef) => None,
        (Val::Null, Val::Null) => Some(true),
        (Val::Bool(x), Val::Bool(y)) => Some(x == y),
        (Val::Num(x), Val::Num(y)) => Some(x == y),
        (Val::Str(x), Val::Str(y)) => Some(x == y),
        (Val::Doc(x), Val::Doc(y)) => Some(x == y),
        _ => None,
    }
}

/// Ordering for `<`, `<=`, `>`, `>=`: numbers, strings (ordinal) and booleans only.
fn order(a: &Val, b: &Val) -> Option<Ordering> {
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => x.partial_cmp(y),
        (Val::Str(x), Val::Str(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Applies a comparison or arithmetic operator (not `AND`/`OR`, which short-circuit).
pub fn binary<'a>(op: BinOp, a: &Val<'a>, b: &Val<'a>) -> Val<'a> {
    let cmp = |f: fn(Ordering) -> bool| order(a, b).map_or(Val::Undef, |o| Val::Bool(f(o)));
    match op {
        BinOp::Eq => equals(a, b).map_or(Val::Undef, Val::Bool),
        BinOp::Ne => equals(a, b).map_or(Val::Undef, |e| Val::Bool(!e)),
        BinOp::Lt => cmp(|o| o == Ordering::Less),
        BinOp::Le => cmp(|o| o != Ordering::Greater),
        BinOp::Gt => cmp(|o| o == Ordering::Greater),
        BinOp::Ge => cmp(|o| o != Ordering::Less),
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => {
            let (Val::Num(x), Val::Num(y)) = (a, b) else {
                return Val::Undef;
            };
            match op {
                BinOp::Add => Val::num(x + y),
                BinOp::Sub => Val::num(x - y),
                BinOp::Mul => Val::num(x * y),
                BinOp::Div if *y == 0.0 => Val::Undef,
                BinOp::Div => Val::num(x / y),
                BinOp::Mod if *y == 0.0 => Val::Undef,
                _ => Val::num(x % y),
            }
        }
        BinOp::And => and(a, b),
        BinOp::Or => or(a, b),
    }
}

/// [`binary`] of two numbers.
#[inline]
pub fn numbers<'a>(op: BinOp, x: f64, y: f64) -> Val<'a> {
    let cmp = |f: fn(Ordering) -> bool| x.partial_cmp(&y).map_or(Val::Undef, |o| Val::Bool(f(o)));
    match op {
        BinOp::Eq => Val::Bool(x == y),
        BinOp::Ne => Val::Bool(x != y),
        BinOp::Lt => cmp(Ordering::is_lt),
        BinOp::Le => cmp(Ordering::is_le),
        BinOp::Gt => cmp(Ordering::is_gt),
        BinOp::Ge => cmp(Ordering::is_ge),
        BinOp::Add => Val::num(x + y),
        BinOp::Sub => Val::num(x - y),
        BinOp::Mul => Val::num(x * y),
        BinOp::Div | BinOp::Mod if y == 0.0 => Val::Undef,
        BinOp::Div => Val::num(x / y),
        BinOp::Mod => Val::num(x % y),
        // Two numbers are neither true nor false.
        BinOp::And | BinOp::Or => Val::Undef,
    }
}

/// [`binary`] of two strings.
#[inline]
pub fn strings<'a>(op: BinOp, x: &str, y: &str) -> Val<'a> {
    let o = || x.as_bytes().cmp(y.as_bytes());
    match op {
        BinOp::Eq => Val::Bool(same(x, y)),
        BinOp::Ne => Val::Bool(!same(x, y)),
        BinOp::Lt => Val::Bool(o().is_lt()),
        BinOp::Le => Val::Bool(o().is_le()),
        BinOp::Gt => Val::Bool(o().is_gt()),
        BinOp::Ge => Val::Bool(o().is_ge()),
        _ => Val::Undef,
    }
}

/// Whether two strings are equal. Those compared here (keys, short values) are short:
/// comparing their bytes inline costs less than the call into libc's `memcmp` that `==`
/// makes.
#[inline]
pub(crate) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    // Eight bytes at a time, then the rest one at a time.
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    let word = |c: &[u8]| <[u8; 8]>::try_from(c).map(u64::from_ne_bytes).ok();
    x.by_ref().zip(y.by_ref()).all(|(p, q)| word(p) == word(q))
        && x.remainder().iter().zip(y.remainder()).all(|(p, q)| p == q)
}

pub fn and<'a>(a: &Val, b: &Val) -> Val<'a> {
    match (a, b) {
        (Val::Bool(false), _) | (_, Val::Bool(false)) => Val::Bool(false),
        (Val::Bool(true), Val::Bool(true)) => Val::Bool(true),
        _ => Val::Undef,
    }
}

pub fn or<'a>(a: &Val, b: &Val) -> Val<'a> {
    match (a, b) {
        (Val::Bool(true), _) | (_, Val::Bool(true)) => Val::Bool(true),
        (Val::Bool(false), Val::Bool(false)) => Val::Bool(false),
        _ => Val::Undef,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_types_are_undefined_and_logic_is_three_valued() {
        let n = Val::Num(1.0);
        let s = Val::Str("1".into());
        assert_eq!(binary(BinOp::Eq, &n, &s), Val::Undef);
        assert_eq!(binary(BinOp::Lt, &Val::Null, &Val::Null), Val::Undef);
        assert_eq!(binary(BinOp::Eq, &Val::Null, &Val::Null), Val::Bool(true));
        assert_eq!(and(&Val::Undef, &Val::Bool(false)), Val::Bool(false));
        assert_eq!(and(&Val::Undef, &Val::Bool(true)), Val::Undef);
        assert_eq!(or(&Val::Undef, &Val::Bool(true)), Val::Bool(true));
        assert_eq!(binary(BinOp::Div, &n, &Val::Num(0.0)), Val::Undef);
        assert_eq!(
            binary(BinOp::Lt, &Val::Str("B".into()), &Val::Str("a".into())),
            Val::Bool(true)
        );
    }

    #[test]
    fn the_typed_operators_agree_with_the_generic_one() {
        let nums = [-1.5, 0.0, -0.0, 2.0, 7.0, f64::MAX];
        let strs = [
            "",
            "a",
            "B",
            "ab",
            "é",
            "abcdefgh",
            "abcdefgi",
            "application/json",
            "application/jsoN",
            "bpplication/json",
        ];
        for op in BinOp::ALL {
            for x in nums {
                for y in nums {
                    assert_eq!(
                        numbers(op, x, y),
                        binary(op, &Val::Num(x), &Val::Num(y)),
                        "{x} {op:?} {y}"
                    );
                }
            }
            for x in strs {
                for y in strs {
                    let generic = binary(op, &Val::Str(x.into()), &Val::Str(y.into()));
                    assert_eq!(strings(op, x, y), generic, "{x} {op:?} {y}");
                }
            }
        }
    }
}
