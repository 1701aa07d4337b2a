//! Lowers a parsed condition to [`Ir`], rejecting what cannot work at run time.

use crate::ast::{BinOp, Expr, ExprKind, Lit, Seg};
use crate::ir::{Const, Func, Ir};
use crate::parse::SyntaxError;
use crate::view::{SysProp, TwinSection};

/// Parses and compiles a condition.
pub fn compile_str(src: &str) -> Result<Ir, SyntaxError> {
    compile(&crate::parse::parse(src)?)
}

pub fn compile(e: &Expr) -> Result<Ir, SyntaxError> {
    let err = |message: String, hint: Option<String>| SyntaxError {
        span: e.span.clone(),
        message,
        hint,
    };
    Ok(match &e.kind {
        ExprKind::Lit(l) => Ir::Const(lit(l)),
        ExprKind::Array(items) => Ir::Const(Const::Doc(serde_json::Value::Array(
            items.iter().map(lit_json).collect(),
        ))),
        ExprKind::Sys(name) => match SysProp::parse(name) {
            Some(p) => Ir::Sys(p),
            None => Ir::App(name.clone()),
        },
        ExprKind::App(name) => Ir::App(name.clone()),
        ExprKind::Body(path) if path.is_empty() => {
            return Err(err(
                "$body on its own is not supported".into(),
                Some("reference a field, such as $body.temperature".into()),
            ));
        }
        ExprKind::Body(path) => Ir::Body(path.clone()),
        ExprKind::Twin(path) => {
            let (section, rest) = twin_section(path).ok_or_else(|| {
                err(
                    "a $twin path must start with tags, properties.desired or properties.reported"
                        .into(),
                    Some(
                        "for example $twin.tags.site or $twin.properties.reported.firmware".into(),
                    ),
                )
            })?;
            Ir::Twin(section, rest.to_vec())
        }
        ExprKind::Call(name, args) => {
            let f = Func::parse(name).ok_or_else(|| {
                err(
                    format!("unknown function {name}"),
                    Some(match closest(name) {
                        Some(c) => format!("did you mean {c}?"),
                        None => format!(
                            "functions are {}",
                            Func::ALL
                                .iter()
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }),
                )
            })?;
            let (min, max) = f.arity();
            if args.len() < min || args.len() > max {
                let want = if min == max {
                    format!("{min}")
                } else if max == usize::MAX {
                    format!("at least {min}")
                } else {
                    format!("{min} to {max}")
                };
                return Err(err(
                    format!("{} takes {want} argument(s), got {}", f.name(), args.len()),
                    None,
                ));
            }
            Ir::Call(f, args.iter().map(compile).collect::<Result<_, _>>()?)
        }
        ExprKind::Not(x) => Ir::Not(Box::new(compile(x)?)),
        ExprKind::Neg(x) => Ir::Neg(Box::new(compile(x)?)),
        ExprKind::Bin(op, a, b) => binary(*op, compile(a)?, compile(b)?),
        ExprKind::In(x, items, neg) => {
            Ir::In(Box::new(compile(x)?), items.iter().map(lit).collect(), *neg)
        }
    })
}

/// Most conditions compare something with a literal (`$body.temp > 30`, `level =
/// 'critical'`) or do arithmetic with one: those get nodes that test the left value's type
/// once and compare it directly, instead of going through the generic operators.
fn binary(op: BinOp, a: Ir, b: Ir) -> Ir {
    let comparison = op.is_comparison();
    let arithmetic = matches!(
        op,
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod
    );
    match b {
        Ir::Const(Const::Num(n)) if comparison || arithmetic => Ir::NumRight(op, Box::new(a), n),
        Ir::Const(Const::Str(s)) if comparison => Ir::StrRight(op, Box::new(a), s.into()),
        b => Ir::Bin(op, Box::new(a), Box::new(b)),
    }
}

fn twin_section(path: &[Seg]) -> Option<(TwinSection, &[Seg])> {
    let is = |s: &Seg, name: &str| matches!(s, Seg::Field(f) if f.eq_ignore_ascii_case(name));
    match path {
        [first, rest @ ..] if is(first, "tags") => Some((TwinSection::Tags, rest)),
        [first, second, rest @ ..] if is(first, "properties") && is(second, "desired") => {
            Some((TwinSection::Desired, rest))
        }
        [first, second, rest @ ..] if is(first, "properties") && is(second, "reported") => {
            Some((TwinSection::Reported, rest))
        }
        _ => None,
    }
}

/// The function whose name differs least from `name`, if any is close.
fn closest(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    Func::ALL
        .iter()
        .map(|(n, _)| (edit_distance(&upper, n), *n))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn lit(l: &Lit) -> Const {
    match l {
        Lit::Num(n) => Const::Num(*n),
        Lit::Str(s) => Const::Str(s.clone()),
        Lit::Bool(b) => Const::Bool(*b),
        Lit::Null => Const::Null,
        Lit::Undefined => Const::Undef,
    }
}

fn lit_json(l: &Lit) -> serde_json::Value {
    match l {
        Lit::Num(n) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Lit::Str(s) => serde_json::Value::String(s.clone()),
        Lit::Bool(b) => serde_json::Value::Bool(*b),
        Lit::Null | Lit::Undefined => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_functions_with_a_suggestion() {
        let e = compile_str("UPPR(a) = 'X'").expect_err("unknown");
        assert_eq!(e.span, 0..7);
        assert_eq!(e.hint.as_deref(), Some("did you mean UPPER?"));
        let e = compile_str("power(2)").expect_err("arity");
        assert!(e.message.contains("POWER takes 2"), "{}", e.message);
        assert!(compile_str("$twin.location = 'x'").is_err());
        assert!(compile_str("$body = 1").is_err());
        assert!(matches!(
            compile_str("$CONTENTTYPE").expect("ok"),
            Ir::Sys(SysProp::ContentType)
        ));
        assert!(matches!(compile_str("$custom").expect("ok"), Ir::App(_)));
    }
}
