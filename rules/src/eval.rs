//! Evaluates compiled conditions against a message. This is the engine's hot path.

use std::borrow::Cow;

use serde_json::Value as Json;

use crate::ast::{BinOp, Seg};
use crate::ir::{Const, Func, Ir};
use crate::value::{self, Val};
use crate::view::MessageView;

/// Evaluates `ir` against `m`.
pub fn eval<'a, M: MessageView + ?Sized>(ir: &'a Ir, m: &'a M) -> Val<'a> {
    match ir {
        Ir::Const(c) => constant(c),
        Ir::Sys(p) => m.system(*p).map_or(Val::Undef, Val::Str),
        Ir::App(name) => m
            .app(name)
            .map_or(Val::Undef, |s| Val::Str(Cow::Borrowed(s))),
        Ir::Body(path) => m.body_path(path),
        Ir::Field(slot, path) => m.body_field(*slot, path),
        Ir::Twin(section, path) => m
            .twin(*section)
            .and_then(|t| walk(t, path))
            .map_or(Val::Undef, Val::from_json),
        Ir::Not(e) => match eval(e, m) {
            Val::Bool(b) => Val::Bool(!b),
            _ => Val::Undef,
        },
        Ir::Neg(e) => match eval(e, m) {
            Val::Num(n) => Val::Num(-n),
            _ => Val::Undef,
        },
        Ir::Bin(BinOp::And, a, b) => {
            let a = eval(a, m);
            if matches!(a, Val::Bool(false)) {
                return a;
            }
            value::and(&a, &eval(b, m))
        }
        Ir::Bin(BinOp::Or, a, b) => {
            let a = eval(a, m);
            if a.is_true() {
                return a;
            }
            value::or(&a, &eval(b, m))
        }
        Ir::Bin(op, a, b) => match &**b {
            // A constant on the right is read in place rather than through another call.
            Ir::Const(c) => value::binary(*op, &eval(a, m), &constant(c)),
            b => value::binary(*op, &eval(a, m), &eval(b, m)),
        },
        // The shapes most conditions have (`$body.temp > 30`, `level = 'critical'`): the
        // left value's type is tested once and compared directly.
        Ir::NumRight(op, a, n) => match eval(a, m) {
            Val::Num(x) => value::numbers(*op, x, *n),
            _ => Val::Undef,
        },
        Ir::StrRight(op, a, s) => match eval(a, m) {
            Val::Str(x) => value::strings(*op, &x, s),
            _ => Val::Undef,
        },
        Ir::In(e, items, negated) => {
            let v = eval(e, m);
            if v == Val::Undef {
                return Val::Undef;
            }
            let found = items
                .iter()
                .any(|c| value::equals(&v, &constant(c)) == Some(true));
            Val::Bool(found != *negated)
        }
        Ir::Call(f, args) => call(*f, args, m),
    }
}

/// True when `ir` evaluates to exactly `true`.
pub fn matches<M: MessageView + ?Sized>(ir: &Ir, m: &M) -> bool {
    eval(ir, m).is_true()
}

fn constant(c: &Const) -> Val<'_> {
    match c {
        Const::Undef => Val::Undef,
        Const::Null => Val::Null,
        Const::Bool(b) => Val::Bool(*b),
        Const::Num(n) => Val::Num(*n),
        Const::Str(s) => Val::Str(Cow::Borrowed(s)),
        Const::Doc(d) => Val::Doc(d),
    }
}

/// Follows a path into a JSON document. Field names match exactly first, then ignoring
/// ASCII case, as IoT Hub treats property names case-insensitively.
pub fn walk<'a>(mut v: &'a Json, path: &[Seg]) -> Option<&'a Json> {
    for seg in path {
        v = match (seg, v) {
            (Seg::Field(name), Json::Object(map)) => match map.get(name) {
                Some(x) => x,
                None => map
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, x)| x)?,
            },
            (Seg::Index(i), Json::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

fn call<'a, M: MessageView + ?Sized>(f: Func, args: &'a [Ir], m: &'a M) -> Val<'a> {
    let arg = |i: usize| args.get(i).map_or(Val::Undef, |a| eval(a, m));
    let num1 = |g: fn(f64) -> f64| match arg(0) {
        Val::Num(n) => Val::num(g(n)),
        _ => Val::Undef,
    };
    match f {
        Func::Abs => num1(f64::abs),
        Func::Exp => num1(f64::exp),
        Func::Square => num1(|x| x * x),
        Func::Ceiling => num1(f64::ceil),
        Func::Floor => num1(f64::floor),
        Func::Sign => num1(|x| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }),
        Func::Sqrt => num1(f64::sqrt),
        Func::Power => match (arg(0), arg(1)) {
            (Val::Num(x), Val::Num(y)) => Val::num(x.powf(y)),
            _ => Val::Undef,
        },
        Func::AsNumber => match arg(0) {
            Val::Num(n) => Val::Num(n),
            Val::Str(s) => s.trim().parse::<f64>().ok().map_or(Val::Undef, Val::num),
            _ => Val::Undef,
        },
        Func::IsArray => Val::Bool(matches!(arg(0), Val::Doc(d) if d.is_array())),
        Func::IsBool => Val::Bool(matches!(arg(0), Val::Bool(_))),
        Func::IsDefined => Val::Bool(arg(0) != Val::Undef),
        Func::IsNull => Val::Bool(arg(0) == Val::Null),
        Func::IsNumber => Val::Bool(matches!(arg(0), Val::Num(_))),
        Func::IsObject => Val::Bool(matches!(arg(0), Val::Doc(d) if d.is_object())),
        Func::IsPrimitive => Val::Bool(matches!(
            arg(0),
            Val::Null | Val::Bool(_) | Val::Num(_) | Val::Str(_)
        )),
        Func::IsString => Val::Bool(matches!(arg(0), Val::Str(_))),
        Func::Concat => {
            let mut out = String::new();
            for i in 0..args.len() {
                match arg(i) {
                    Val::Str(s) => out.push_str(&s),
                    _ => return Val::Undef,
                }
            }
            Val::Str(Cow::Owned(out))
        }
        Func::Length => match arg(0) {
            Val::Str(s) => Val::Num(s.chars().count() as f64),
            _ => Val::Undef,
        },
        Func::Lower => match arg(0) {
            Val::Str(s) if s.is_ascii() => Val::Str(Cow::Owned(s.to_ascii_lowercase())),
            Val::Str(s) => Val::Str(Cow::Owned(s.to_lowercase())),
            _ => Val::Undef,
        },
        // ASCII text (most of it) has ASCII case rules, without Unicode's tables.
        Func::Upper => match arg(0) {
            Val::Str(s) if s.is_ascii() => Val::Str(Cow::Owned(s.to_ascii_uppercase())),
            Val::Str(s) => Val::Str(Cow::Owned(s.to_uppercase())),
            _ => Val::Undef,
        },
        Func::Substring => {
            let (Val::Str(s), Val::Num(start)) = (arg(0), arg(1)) else {
                return Val::Undef;
            };
            let len = match args.len() {
                3 => match arg(2) {
                    Val::Num(n) => n,
                    _ => return Val::Undef,
                },
                _ => f64::INFINITY,
            };
            let start = start.max(0.0) as usize;
            let len = if len.is_finite() {
                len.max(0.0) as usize
            } else {
                usize::MAX
            };
            Val::Str(Cow::Owned(s.chars().skip(start).take(len).collect()))
        }
        Func::IndexOf => match (arg(0), arg(1)) {
            (Val::Str(s), Val::Str(frag)) => Val::Num(
                s.find(frag.as_ref())
                    .map_or(-1.0, |byte| s[..byte].chars().count() as f64),
            ),
            _ => Val::Undef,
        },
        Func::StartsWith | Func::EndsWith | Func::Contains => match (arg(0), arg(1)) {
            (Val::Str(s), Val::Str(x)) => Val::Bool(match f {
                Func::StartsWith => s.starts_with(x.as_ref()),
                Func::EndsWith => s.ends_with(x.as_ref()),
                _ => s.contains(x.as_ref()),
            }),
            _ => Val::Undef,
        },
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use weir_core::{DeviceId, Event, NoDevices};

    use super::*;
    use crate::compile::compile_str;
    use crate::view::EventView;

    /// `text` evaluated against a message with `body`, as JSON (undefined: `None`).
    fn value(text: &str, body: &'static str) -> Option<Json> {
        let id = DeviceId::parse("d1").expect("id");
        let event = Event::telemetry(id, 0, Bytes::from_static(body.as_bytes()));
        let view = EventView::new(&event, &NoDevices);
        let ir = compile_str(text).unwrap_or_else(|e| panic!("{}", e.message));
        eval(&ir, &view).to_json()
    }

    #[test]
    fn case_functions_take_the_ascii_path_only_for_ascii_text() {
        let body = r#"{"a": "Line-b 7", "u": "straße İx", "n": [1, {"k": 2}]}"#;
        let s = |t: &str| Some(Json::String(t.into()));
        assert_eq!(value("UPPER($body.a)", body), s("LINE-B 7"));
        assert_eq!(value("LOWER($body.a)", body), s("line-b 7"));
        assert_eq!(
            value("UPPER($body.u)", body),
            s(&"straße İx".to_uppercase())
        );
        assert_eq!(
            value("LOWER($body.u)", body),
            s(&"straße İx".to_lowercase())
        );
        // Documents are borrowed from the body and compare by value.
        assert_eq!(value("IS_ARRAY($body.n)", body), Some(Json::Bool(true)));
        assert_eq!(value("$body.n = $body.n", body), Some(Json::Bool(true)));
        assert_eq!(value("$body.n[1].k > 1", body), Some(Json::Bool(true)));
        assert_eq!(value("$body.n > 1", body), None);
    }
}
