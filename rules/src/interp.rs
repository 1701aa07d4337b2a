//! A deliberately plain reference evaluator.
//!
//! It walks the syntax tree directly, resolves every name by string comparison on each
//! call and represents values as `Option<serde_json::Value>` (`None` is undefined). It
//! shares no code with the compiled evaluator, so tests can run both on the same random
//! input and compare: a mismatch is a bug in one of them.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use crate::ast::{BinOp, Expr, ExprKind, Lit, Seg};

/// A message as the reference evaluator sees it.
#[derive(Debug, Clone, Default)]
pub struct RefMessage {
    /// System properties by lower-case name, without `$`.
    pub system: BTreeMap<String, String>,
    pub app: Vec<(String, String)>,
    pub body: Option<Json>,
    pub tags: Option<Json>,
    pub desired: Option<Json>,
    pub reported: Option<Json>,
}

/// True when the condition routes the message.
pub fn routes(e: &Expr, m: &RefMessage) -> bool {
    eval(e, m) == Some(Json::Bool(true))
}

pub fn eval(e: &Expr, m: &RefMessage) -> Option<Json> {
    match &e.kind {
        ExprKind::Lit(l) => lit(l),
        ExprKind::Array(items) => Some(Json::Array(
            items.iter().map(|l| lit(l).unwrap_or(Json::Null)).collect(),
        )),
        ExprKind::Sys(name) => {
            let key = name.to_lowercase();
            let key = match key.as_str() {
                "creationtimeutc" => "iothub-creation-time-utc".to_string(),
                "iothub-outputname" => "outputname".to_string(),
                _ => key,
            };
            if is_system(&key) {
                m.system.get(&key).map(|s| Json::String(s.clone()))
            } else {
                app(m, name)
            }
        }
        ExprKind::App(name) => app(m, name),
        ExprKind::Body(path) => follow(m.body.as_ref()?, path),
        ExprKind::Twin(path) => {
            let names: Vec<String> = path
                .iter()
                .map(|s| match s {
                    Seg::Field(f) => f.to_lowercase(),
                    Seg::Index(_) => String::new(),
                })
                .collect();
            if names.first().map(String::as_str) == Some("tags") {
                follow(m.tags.as_ref()?, &path[1..])
            } else if names.len() >= 2 && names[0] == "properties" && names[1] == "desired" {
                follow(m.desired.as_ref()?, &path[2..])
            } else if names.len() >= 2 && names[0] == "properties" && names[1] == "reported" {
                follow(m.reported.as_ref()?, &path[2..])
            } else {
                None
            }
        }
        ExprKind::Not(x) => match eval(x, m) {
            Some(Json::Bool(b)) => Some(Json::Bool(!b)),
            _ => None,
        },
        ExprKind::Neg(x) => match eval(x, m) {
            Some(Json::Number(n)) => number(-n.as_f64()?),
            _ => None,
        },
        ExprKind::Bin(BinOp::And, a, b) => {
            let (a, b) = (eval(a, m), eval(b, m));
            if a == Some(Json::Bool(false)) || b == Some(Json::Bool(false)) {
                Some(Json::Bool(false))
            } else if a == Some(Json::Bool(true)) && b == Some(Json::Bool(true)) {
                Some(Json::Bool(true))
            } else {
                None
            }
        }
        ExprKind::Bin(BinOp::Or, a, b) => {
            let (a, b) = (eval(a, m), eval(b, m));
            if a == Some(Json::Bool(true)) || b == Some(Json::Bool(true)) {
                Some(Json::Bool(true))
            } else if a == Some(Json::Bool(false)) && b == Some(Json::Bool(false)) {
                Some(Json::Bool(false))
            } else {
                None
            }
        }
        ExprKind::Bin(op, a, b) => binary(*op, eval(a, m)?, eval(b, m)?),
        ExprKind::In(x, items, negated) => {
            let v = eval(x, m)?;
            let hit = items
                .iter()
                .filter_map(lit)
                .any(|i| same_type(&v, &i) && numeric_eq(&v, &i));
            Some(Json::Bool(hit != *negated))
        }
        ExprKind::Call(name, args) => call(&name.to_uppercase(), args, m),
    }
}

fn is_system(key: &str) -> bool {
    [
        "contenttype",
        "contentencoding",
        "connectiondeviceid",
        "connectionmoduleid",
        "connectiondevicegenerationid",
        "connectionauthmethod",
        "messageid",
        "correlationid",
        "userid",
        "enqueuedtime",
        "iothub-creation-time-utc",
        "dt-dataschema",
        "dt-subject",
        "outputname",
    ]
    .contains(&key)
}

fn app(m: &RefMessage, name: &str) -> Option<Json> {
    let lower = name.to_lowercase();
    m.app
        .iter()
        .find(|(k, _)| k.to_lowercase() == lower)
        .map(|(_, v)| Json::String(v.clone()))
}

fn follow(doc: &Json, path: &[Seg]) -> Option<Json> {
    let mut cur = doc.clone();
    for seg in path {
        cur = match seg {
            Seg::Index(i) => cur.as_array()?.get(*i)?.clone(),
            Seg::Field(f) => {
                let obj = cur.as_object()?;
                if let Some(v) = obj.get(f) {
                    v.clone()
                } else {
                    obj.iter()
                        .find(|(k, _)| k.to_lowercase() == f.to_lowercase())?
                        .1
                        .clone()
                }
            }
        };
    }
    Some(cur)
}

fn lit(l: &Lit) -> Option<Json> {
    match l {
        Lit::Num(n) => number(*n),
        Lit::Str(s) => Some(Json::String(s.clone())),
        Lit::Bool(b) => Some(Json::Bool(*b)),
        Lit::Null => Some(Json::Null),
        Lit::Undefined => None,
    }
}

fn number(n: f64) -> Option<Json> {
    serde_json::Number::from_f64(n).map(Json::Number)
}

fn kind(v: &Json) -> u8 {
    match v {
        Json::Null => 0,
        Json::Bool(_) => 1,
        Json::Number(_) => 2,
        Json::String(_) => 3,
        Json::Array(_) | Json::Object(_) => 4,
    }
}

fn same_type(a: &Json, b: &Json) -> bool {
    kind(a) == kind(b)
}

/// Equality that treats 1 and 1.0 alike, as JSON numbers are all doubles here.
fn numeric_eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn binary(op: BinOp, a: Json, b: Json) -> Option<Json> {
    if !same_type(&a, &b) {
        return None;
    }
    match op {
        BinOp::Eq => Some(Json::Bool(numeric_eq(&a, &b))),
        BinOp::Ne => Some(Json::Bool(!numeric_eq(&a, &b))),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ord = match (&a, &b) {
                (Json::Number(x), Json::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?)?,
                (Json::String(x), Json::String(y)) => x.as_bytes().cmp(y.as_bytes()),
                (Json::Bool(x), Json::Bool(y)) => x.cmp(y),
                _ => return None,
            };
            let r = match op {
                BinOp::Lt => ord.is_lt(),
                BinOp::Le => ord.is_le(),
                BinOp::Gt => ord.is_gt(),
                _ => ord.is_ge(),
            };
            Some(Json::Bool(r))
        }
        _ => {
            let (x, y) = (a.as_f64()?, b.as_f64()?);
            let r = match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div if y != 0.0 => x / y,
                BinOp::Mod if y != 0.0 => x % y,
                _ => return None,
            };
            number(r)
        }
    }
}

fn call(name: &str, args: &[Expr], m: &RefMessage) -> Option<Json> {
    let vals: Vec<Option<Json>> = args.iter().map(|a| eval(a, m)).collect();
    let n = |i: usize| vals.get(i).cloned().flatten().and_then(|v| v.as_f64());
    let s = |i: usize| match vals.get(i).cloned().flatten() {
        Some(Json::String(s)) => Some(s),
        _ => None,
    };
    let first = vals.first().cloned().flatten();
    match name {
        "ABS" => number(n(0)?.abs()),
        "EXP" => number(n(0)?.exp()),
        "POWER" => number(n(0)?.powf(n(1)?)),
        "SQUARE" => number(n(0)? * n(0)?),
        "CEILING" => number(n(0)?.ceil()),
        "FLOOR" => number(n(0)?.floor()),
        "SIGN" => {
            let x = n(0)?;
            number(if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            })
        }
        "SQRT" => number(n(0)?.sqrt()),
        "AS_NUMBER" => match first? {
            Json::Number(x) => Some(Json::Number(x)),
            Json::String(t) => number(t.trim().parse().ok()?),
            _ => None,
        },
        "IS_ARRAY" => Some(json!(matches!(first, Some(Json::Array(_))))),
        "IS_BOOL" => Some(json!(matches!(first, Some(Json::Bool(_))))),
        "IS_DEFINED" => Some(json!(first.is_some())),
        "IS_NULL" => Some(json!(matches!(first, Some(Json::Null)))),
        "IS_NUMBER" => Some(json!(matches!(first, Some(Json::Number(_))))),
        "IS_OBJECT" => Some(json!(matches!(first, Some(Json::Object(_))))),
        "IS_PRIMITIVE" => Some(json!(matches!(
            first,
            Some(Json::Null | Json::Bool(_) | Json::Number(_) | Json::String(_))
        ))),
        "IS_STRING" => Some(json!(matches!(first, Some(Json::String(_))))),
        "CONCAT" => {
            let mut out = String::new();
            for i in 0..vals.len() {
                out += &s(i)?;
            }
            Some(Json::String(out))
        }
        "LENGTH" => number(s(0)?.chars().count() as f64),
        "LOWER" => Some(Json::String(s(0)?.to_lowercase())),
        "UPPER" => Some(Json::String(s(0)?.to_uppercase())),
        "SUBSTRING" => {
            let text: Vec<char> = s(0)?.chars().collect();
            let start = n(1)?.max(0.0) as usize;
            let len = if vals.len() == 3 {
                n(2)?.max(0.0) as usize
            } else {
                usize::MAX
            };
            Some(Json::String(text.iter().skip(start).take(len).collect()))
        }
        "INDEX_OF" => {
            let (hay, needle) = (s(0)?, s(1)?);
            let chars: Vec<char> = hay.chars().collect();
            let pat: Vec<char> = needle.chars().collect();
            let pos = (0..=chars.len().saturating_sub(pat.len()))
                .find(|&i| chars.len() >= pat.len() && chars[i..i + pat.len()] == pat[..]);
            number(pos.map_or(-1.0, |p| p as f64))
        }
        "STARTS_WITH" => Some(json!(s(0)?.starts_with(&s(1)?))),
        "ENDS_WITH" => Some(json!(s(0)?.ends_with(&s(1)?))),
        "CONTAINS" => Some(json!(s(0)?.contains(&s(1)?))),
        _ => None,
    }
}
