//! The syntax tree of a routing condition, as written (names unresolved).

use std::ops::Range;

pub type Span = Range<usize>;

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    /// Byte range in the condition text.
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Lit(Lit),
    /// `[1, 'a', true]`
    Array(Vec<Lit>),
    /// `$name`: a system property (or, failing that, an application property).
    Sys(String),
    /// A bare name: an application property.
    App(String),
    /// `$body.a.b[0]`; empty when `$body` stands alone.
    Body(Vec<Seg>),
    /// `$twin.tags.x`, `$twin.properties.desired.x`, `$twin.properties.reported.x`.
    Twin(Vec<Seg>),
    Call(String, Vec<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    /// `x IN [..]` or, when the flag is set, `x NOT IN [..]`.
    In(Box<Expr>, Vec<Lit>, bool),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Num(f64),
    Str(String),
    Bool(bool),
    Null,
    Undefined,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Field(String),
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    pub const ALL: [BinOp; 13] = [
        BinOp::Or,
        BinOp::And,
        BinOp::Eq,
        BinOp::Ne,
        BinOp::Lt,
        BinOp::Le,
        BinOp::Gt,
        BinOp::Ge,
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Div,
        BinOp::Mod,
    ];

    /// `=`, `!=`, `<`, `<=`, `>`, `>=`.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }

    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "OR",
            BinOp::And => "AND",
            BinOp::Eq => "=",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
        }
    }
}

impl std::fmt::Display for Expr {
    /// Prints the expression fully parenthesised; used by tests and `rules test` output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ExprKind::Lit(l) => write!(f, "{l}"),
            ExprKind::Array(items) => {
                f.write_str("[")?;
                for (i, l) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{l}")?;
                }
                f.write_str("]")
            }
            ExprKind::Sys(n) => write!(f, "${n}"),
            ExprKind::App(n) => f.write_str(n),
            ExprKind::Body(p) => write!(f, "$body{}", PathDisplay(p)),
            ExprKind::Twin(p) => write!(f, "$twin{}", PathDisplay(p)),
            ExprKind::Call(n, args) => {
                write!(f, "{n}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
            ExprKind::Not(e) => write!(f, "(NOT {e})"),
            ExprKind::Neg(e) => write!(f, "(-{e})"),
            ExprKind::Bin(op, a, b) => write!(f, "({a} {} {b})", op.symbol()),
            ExprKind::In(e, items, neg) => {
                let arr = Expr {
                    kind: ExprKind::Array(items.clone()),
                    span: 0..0,
                };
                write!(f, "({e} {}IN {arr})", if *neg { "NOT " } else { "" })
            }
        }
    }
}

impl std::fmt::Display for Lit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lit::Num(n) => write!(f, "{n}"),
            Lit::Str(s) => write!(f, "'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
            Lit::Bool(b) => write!(f, "{b}"),
            Lit::Null => f.write_str("null"),
            Lit::Undefined => f.write_str("undefined"),
        }
    }
}

struct PathDisplay<'a>(&'a [Seg]);

impl std::fmt::Display for PathDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in self.0 {
            match s {
                Seg::Field(n) if is_plain_name(n) => write!(f, ".{n}")?,
                Seg::Field(n) => write!(f, "['{}']", n.replace('\\', "\\\\").replace('\'', "\\'"))?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// True when `n` can be written after a `.` without quoting.
pub fn is_plain_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !crate::parse::is_keyword(n)
}
