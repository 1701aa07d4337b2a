//! The compiled form of a condition: names resolved, functions checked, ready to run.

use serde_json::Value as Json;

use crate::ast::{BinOp, Seg};
use crate::view::{SysProp, TwinSection};

#[derive(Debug, Clone, PartialEq)]
pub enum Const {
    Undef,
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Doc(Json),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Ir {
    Const(Const),
    Sys(SysProp),
    /// An application property (also what an unknown `$name` falls back to).
    App(String),
    Body(Vec<Seg>),
    /// A `$body` path whose first step is the top-level field a rule set numbered `.0`
    /// (see [`crate::RuleSet::view`]): the view reads it from a slot filled while the body
    /// is validated instead of searching the body's fields by name.
    Field(usize, Vec<Seg>),
    Twin(TwinSection, Vec<Seg>),
    Call(Func, Vec<Ir>),
    Not(Box<Ir>),
    Neg(Box<Ir>),
    Bin(BinOp, Box<Ir>, Box<Ir>),
    /// A comparison or arithmetic with a number literal on the right.
    NumRight(BinOp, Box<Ir>, f64),
    /// A comparison with a string literal on the right.
    StrRight(BinOp, Box<Ir>, Box<str>),
    In(Box<Ir>, Vec<Const>, bool),
}

impl Ir {
    /// True when evaluating this needs the message body.
    pub fn reads_body(&self) -> bool {
        self.any(&|e| matches!(e, Ir::Body(_) | Ir::Field(..)))
    }

    /// True when the expression reads the device's twin tags (`$twin.tags.…`), which the
    /// engine gives as they were at the event's position in the log.
    pub fn reads_tags(&self) -> bool {
        self.any(&|e| matches!(e, Ir::Twin(crate::view::TwinSection::Tags, _)))
    }

    /// Calls `f` on this expression and every part of it, parts first.
    pub fn visit_mut(&mut self, f: &mut impl FnMut(&mut Ir)) {
        match self {
            Ir::Body(_) | Ir::Field(..) | Ir::Const(_) | Ir::Sys(_) | Ir::App(_) | Ir::Twin(..) => {
            }
            Ir::Call(_, args) => args.iter_mut().for_each(|a| a.visit_mut(f)),
            Ir::Not(e)
            | Ir::Neg(e)
            | Ir::In(e, ..)
            | Ir::NumRight(_, e, _)
            | Ir::StrRight(_, e, _) => e.visit_mut(f),
            Ir::Bin(_, a, b) => {
                a.visit_mut(f);
                b.visit_mut(f);
            }
        }
        f(self);
    }

    /// True when `f` holds for this expression or any part of it.
    fn any(&self, f: &impl Fn(&Ir) -> bool) -> bool {
        f(self)
            || match self {
                Ir::Body(_)
                | Ir::Field(..)
                | Ir::Const(_)
                | Ir::Sys(_)
                | Ir::App(_)
                | Ir::Twin(..) => false,
                Ir::Call(_, args) => args.iter().any(|a| a.any(f)),
                Ir::Not(e)
                | Ir::Neg(e)
                | Ir::In(e, ..)
                | Ir::NumRight(_, e, _)
                | Ir::StrRight(_, e, _) => e.any(f),
                Ir::Bin(_, a, b) => a.any(f) || b.any(f),
            }
    }
}

/// Built-in functions, with their arity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Func {
    Abs,
    Exp,
    Power,
    Square,
    Ceiling,
    Floor,
    Sign,
    Sqrt,
    AsNumber,
    IsArray,
    IsBool,
    IsDefined,
    IsNull,
    IsNumber,
    IsObject,
    IsPrimitive,
    IsString,
    Concat,
    Length,
    Lower,
    Upper,
    Substring,
    IndexOf,
    StartsWith,
    EndsWith,
    Contains,
}

impl Func {
    pub const ALL: [(&'static str, Func); 26] = [
        ("ABS", Func::Abs),
        ("EXP", Func::Exp),
        ("POWER", Func::Power),
        ("SQUARE", Func::Square),
        ("CEILING", Func::Ceiling),
        ("FLOOR", Func::Floor),
        ("SIGN", Func::Sign),
        ("SQRT", Func::Sqrt),
        ("AS_NUMBER", Func::AsNumber),
        ("IS_ARRAY", Func::IsArray),
        ("IS_BOOL", Func::IsBool),
        ("IS_DEFINED", Func::IsDefined),
        ("IS_NULL", Func::IsNull),
        ("IS_NUMBER", Func::IsNumber),
        ("IS_OBJECT", Func::IsObject),
        ("IS_PRIMITIVE", Func::IsPrimitive),
        ("IS_STRING", Func::IsString),
        ("CONCAT", Func::Concat),
        ("LENGTH", Func::Length),
        ("LOWER", Func::Lower),
        ("UPPER", Func::Upper),
        ("SUBSTRING", Func::Substring),
        ("INDEX_OF", Func::IndexOf),
        ("STARTS_WITH", Func::StartsWith),
        ("ENDS_WITH", Func::EndsWith),
        ("CONTAINS", Func::Contains),
    ];

    pub fn parse(name: &str) -> Option<Func> {
        Self::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, f)| *f)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// Minimum and maximum number of arguments.
    pub fn arity(self) -> (usize, usize) {
        match self {
            Func::Power | Func::IndexOf | Func::StartsWith | Func::EndsWith | Func::Contains => {
                (2, 2)
            }
            Func::Substring => (2, 3),
            Func::Concat => (1, usize::MAX),
            _ => (1, 1),
        }
    }
}
