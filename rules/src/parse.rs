//! Turns condition text into an [`Expr`] by precedence climbing over the lexer's tokens.
//!
//! Precedence, loosest first: `OR`, `AND`, `NOT`, comparisons and `IN`, `+ -`, `* / %`,
//! unary `-`. Keywords and function names are case-insensitive.

use crate::ast::{BinOp, Expr, ExprKind, Lit, Seg, Span};
use crate::lex::{Tok, Token, lex};

/// A syntax error with the byte range it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub span: Span,
    pub message: String,
    pub hint: Option<String>,
}

const KEYWORDS: [&str; 8] = [
    "AND",
    "OR",
    "NOT",
    "IN",
    "TRUE",
    "FALSE",
    "NULL",
    "UNDEFINED",
];

/// True when `s` is a reserved word (and so cannot name a property without quoting).
pub fn is_keyword(s: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(s))
}

/// Parses a whole condition.
pub fn parse(src: &str) -> Result<Expr, SyntaxError> {
    let tokens = lex(src).map_err(|e| SyntaxError {
        span: e.span,
        message: e.message,
        hint: e.hint,
    })?;
    if tokens.is_empty() {
        return Err(SyntaxError {
            span: 0..src.len(),
            message: "the condition is empty".into(),
            hint: Some("write `true` to route every message".into()),
        });
    }
    let mut p = Parser {
        tokens,
        pos: 0,
        end: src.len(),
    };
    let e = p.or()?;
    if let Some(t) = p.peek() {
        return Err(SyntaxError {
            span: t.span.clone(),
            message: format!(
                "unexpected {} after a complete expression",
                t.kind.describe()
            ),
            hint: Some("join conditions with AND or OR".into()),
        });
    }
    Ok(e)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn at_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Tok::Ident(s), .. }) if s.eq_ignore_ascii_case(kw))
    }

    fn at(&self, tok: &Tok) -> bool {
        self.peek().is_some_and(|t| &t.kind == tok)
    }

    fn eof_span(&self) -> Span {
        self.end..self.end
    }

    fn expected(&self, what: &str, after: &Span) -> SyntaxError {
        match self.peek() {
            Some(t) => SyntaxError {
                span: t.span.clone(),
                message: format!("expected {what}, found {}", t.kind.describe()),
                hint: None,
            },
            None => SyntaxError {
                span: if after.end >= self.end {
                    self.eof_span()
                } else {
                    after.clone()
                },
                message: format!("expected {what}, but the condition ends here"),
                hint: None,
            },
        }
    }

    fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        let span = a.span.start..b.span.end;
        Expr {
            kind: ExprKind::Bin(op, Box::new(a), Box::new(b)),
            span,
        }
    }

    fn or(&mut self) -> Result<Expr, SyntaxError> {
        let mut lhs = self.and()?;
        while self.at_keyword("OR") {
            let op = self.next().map(|t| t.span).unwrap_or_default();
            let rhs = self.operand_after(Self::and, &op, "OR")?;
            lhs = Self::bin(BinOp::Or, lhs, rhs);
        }
        Ok(lhs)
    }

    fn and(&mut self) -> Result<Expr, SyntaxError> {
        let mut lhs = self.not()?;
        while self.at_keyword("AND") {
            let op = self.next().map(|t| t.span).unwrap_or_default();
            let rhs = self.operand_after(Self::not, &op, "AND")?;
            lhs = Self::bin(BinOp::And, lhs, rhs);
        }
        Ok(lhs)
    }

    fn not(&mut self) -> Result<Expr, SyntaxError> {
        if self.at_keyword("NOT") {
            let op = self.next().map(|t| t.span).unwrap_or_default();
            let inner = self.operand_after(Self::not, &op, "NOT")?;
            let span = op.start..inner.span.end;
            return Ok(Expr {
                kind: ExprKind::Not(Box::new(inner)),
                span,
            });
        }
        self.cmp()
    }

    /// Parses the operand an operator needs, with an error that names the operator.
    fn operand_after(
        &mut self,
        f: fn(&mut Self) -> Result<Expr, SyntaxError>,
        op: &Span,
        name: &str,
    ) -> Result<Expr, SyntaxError> {
        if self.peek().is_none() {
            return Err(SyntaxError {
                span: op.clone(),
                message: format!("'{name}' needs an expression after it"),
                hint: None,
            });
        }
        f(self)
    }

    fn cmp(&mut self) -> Result<Expr, SyntaxError> {
        let mut lhs = self.add()?;
        loop {
            let op = match self.peek().map(|t| &t.kind) {
                Some(Tok::Eq) => BinOp::Eq,
                Some(Tok::Ne) => BinOp::Ne,
                Some(Tok::Lt) => BinOp::Lt,
                Some(Tok::Le) => BinOp::Le,
                Some(Tok::Gt) => BinOp::Gt,
                Some(Tok::Ge) => BinOp::Ge,
                Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("IN") => {
                    self.pos += 1;
                    lhs = self.in_list(lhs, false)?;
                    continue;
                }
                Some(Tok::Ident(s))
                    if s.eq_ignore_ascii_case("NOT")
                        && matches!(self.tokens.get(self.pos + 1), Some(Token { kind: Tok::Ident(k), .. }) if k.eq_ignore_ascii_case("IN")) =>
                {
                    self.pos += 2;
                    lhs = self.in_list(lhs, true)?;
                    continue;
                }
                _ => return Ok(lhs),
            };
            let tok = self.next().map(|t| t.span).unwrap_or_default();
            let rhs = self.operand_after(Self::add, &tok, op.symbol())?;
            lhs = Self::bin(op, lhs, rhs);
        }
    }

    fn in_list(&mut self, lhs: Expr, negated: bool) -> Result<Expr, SyntaxError> {
        let at = lhs.span.clone();
        let Some(open) = self
            .peek()
            .filter(|t| t.kind == Tok::LBracket)
            .map(|t| t.span.clone())
        else {
            return Err(self.expected("a list like ['a', 'b'] after IN", &at));
        };
        self.pos += 1;
        let (items, close) = self.literal_list(&open)?;
        let span = lhs.span.start..close.end;
        Ok(Expr {
            kind: ExprKind::In(Box::new(lhs), items, negated),
            span,
        })
    }

    fn add(&mut self) -> Result<Expr, SyntaxError> {
        let mut lhs = self.mul()?;
        loop {
            let op = match self.peek().map(|t| &t.kind) {
                Some(Tok::Plus) => BinOp::Add,
                Some(Tok::Minus) => BinOp::Sub,
                _ => return Ok(lhs),
            };
            let tok = self.next().map(|t| t.span).unwrap_or_default();
            let rhs = self.operand_after(Self::mul, &tok, op.symbol())?;
            lhs = Self::bin(op, lhs, rhs);
        }
    }

    fn mul(&mut self) -> Result<Expr, SyntaxError> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek().map(|t| &t.kind) {
                Some(Tok::Star) => BinOp::Mul,
                Some(Tok::Slash) => BinOp::Div,
                Some(Tok::Percent) => BinOp::Mod,
                _ => return Ok(lhs),
            };
            let tok = self.next().map(|t| t.span).unwrap_or_default();
            let rhs = self.operand_after(Self::unary, &tok, op.symbol())?;
            lhs = Self::bin(op, lhs, rhs);
        }
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        if self.at(&Tok::Minus) {
            let op = self.next().map(|t| t.span).unwrap_or_default();
            let inner = self.operand_after(Self::unary, &op, "-")?;
            let span = op.start..inner.span.end;
            return Ok(Expr {
                kind: ExprKind::Neg(Box::new(inner)),
                span,
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, SyntaxError> {
        let before = self
            .tokens
            .get(self.pos.saturating_sub(1))
            .map(|t| t.span.clone())
            .unwrap_or(0..0);
        let Some(tok) = self.next() else {
            return Err(SyntaxError {
                span: self.eof_span(),
                message: "expected an expression, but the condition ends here".into(),
                hint: None,
            });
        };
        let span = tok.span.clone();
        let kind = match tok.kind {
            Tok::Number(n) => ExprKind::Lit(Lit::Num(n)),
            Tok::Str(s) => ExprKind::Lit(Lit::Str(s)),
            Tok::LParen => {
                let inner = self.or()?;
                if !self.at(&Tok::RParen) {
                    let mut e = self.expected("')'", &inner.span);
                    e.hint = Some(format!("the '(' at offset {} is not closed", span.start));
                    return Err(e);
                }
                let close = self.next().map(|t| t.span).unwrap_or_default();
                return Ok(Expr {
                    kind: inner.kind,
                    span: span.start..close.end,
                });
            }
            Tok::LBracket => {
                let (items, close) = self.literal_list(&span)?;
                return Ok(Expr {
                    kind: ExprKind::Array(items),
                    span: span.start..close.end,
                });
            }
            Tok::Ident(name) => return self.ident(name, span),
            Tok::Dollar(name) => return self.dollar(name, span),
            other => {
                let _ = before;
                return Err(SyntaxError {
                    span,
                    message: format!("expected an expression, found {}", other.describe()),
                    hint: None,
                });
            }
        };
        Ok(Expr { kind, span })
    }

    fn ident(&mut self, name: String, span: Span) -> Result<Expr, SyntaxError> {
        let lit = match name.to_ascii_uppercase().as_str() {
            "TRUE" => Some(Lit::Bool(true)),
            "FALSE" => Some(Lit::Bool(false)),
            "NULL" => Some(Lit::Null),
            "UNDEFINED" => Some(Lit::Undefined),
            "AND" | "OR" | "NOT" | "IN" => {
                return Err(SyntaxError {
                    span,
                    message: format!(
                        "expected an expression, found the keyword {}",
                        name.to_ascii_uppercase()
                    ),
                    hint: Some("a property with this name cannot be referenced; rename it".into()),
                });
            }
            _ => None,
        };
        if let Some(l) = lit {
            return Ok(Expr {
                kind: ExprKind::Lit(l),
                span,
            });
        }
        if !self.at(&Tok::LParen) {
            return Ok(Expr {
                kind: ExprKind::App(name),
                span,
            });
        }
        let open = self.next().map(|t| t.span).unwrap_or_default();
        let mut args = Vec::new();
        if self.at(&Tok::RParen) {
            let close = self.next().map(|t| t.span).unwrap_or_default();
            return Ok(Expr {
                kind: ExprKind::Call(name, args),
                span: span.start..close.end,
            });
        }
        loop {
            args.push(self.or()?);
            match self.peek().map(|t| &t.kind) {
                Some(Tok::Comma) => {
                    self.pos += 1;
                }
                Some(Tok::RParen) => {
                    let close = self.next().map(|t| t.span).unwrap_or_default();
                    return Ok(Expr {
                        kind: ExprKind::Call(name, args),
                        span: span.start..close.end,
                    });
                }
                _ => {
                    let last = args.last().map(|a| a.span.clone()).unwrap_or(open.clone());
                    let mut e = self.expected("',' or ')' in the argument list", &last);
                    e.hint = Some(format!(
                        "the call to {name} starts at offset {}",
                        span.start
                    ));
                    return Err(e);
                }
            }
        }
    }

    fn dollar(&mut self, name: String, span: Span) -> Result<Expr, SyntaxError> {
        let lower = name.to_ascii_lowercase();
        if lower != "body" && lower != "twin" {
            if self.at(&Tok::Dot) || self.at(&Tok::LBracket) {
                let t = self.peek().map(|t| t.span.clone()).unwrap_or_default();
                return Err(SyntaxError {
                    span: t,
                    message: format!("${name} is a property, not a document; it has no fields"),
                    hint: Some("only $body and $twin take paths like $body.a.b".into()),
                });
            }
            return Ok(Expr {
                kind: ExprKind::Sys(name),
                span,
            });
        }
        let mut path = Vec::new();
        let mut end = span.end;
        loop {
            if self.at(&Tok::Dot) {
                let dot = self.next().map(|t| t.span).unwrap_or_default();
                match self.next() {
                    Some(Token {
                        kind: Tok::Ident(n),
                        span: s,
                    }) => {
                        path.push(Seg::Field(n));
                        end = s.end;
                    }
                    Some(Token {
                        kind: Tok::LBracket,
                        span: s,
                    }) => {
                        end = self.bracket_seg(&mut path, s)?;
                    }
                    other => {
                        return Err(SyntaxError {
                            span: other.map(|t| t.span).unwrap_or(dot),
                            message: "expected a field name after '.'".into(),
                            hint: Some("quote unusual names: $body['odd name']".into()),
                        });
                    }
                }
            } else if self.at(&Tok::LBracket) {
                let open = self.next().map(|t| t.span).unwrap_or_default();
                end = self.bracket_seg(&mut path, open)?;
            } else {
                break;
            }
        }
        let kind = if lower == "body" {
            ExprKind::Body(path)
        } else {
            ExprKind::Twin(path)
        };
        Ok(Expr {
            kind,
            span: span.start..end,
        })
    }

    /// After '[': an index or a quoted field name, then ']'. Returns the end offset.
    fn bracket_seg(&mut self, path: &mut Vec<Seg>, open: Span) -> Result<usize, SyntaxError> {
        let seg = match self.next() {
            Some(Token {
                kind: Tok::Number(n),
                span,
            }) => {
                if n < 0.0 || n.fract() != 0.0 || n > u32::MAX as f64 {
                    return Err(SyntaxError {
                        span,
                        message: "an index must be a whole number ≥ 0".into(),
                        hint: None,
                    });
                }
                Seg::Index(n as usize)
            }
            Some(Token {
                kind: Tok::Str(s), ..
            }) => Seg::Field(s),
            other => {
                return Err(SyntaxError {
                    span: other.map(|t| t.span).unwrap_or(open),
                    message: "expected an index or a quoted name inside [ ]".into(),
                    hint: None,
                });
            }
        };
        path.push(seg);
        match self.next() {
            Some(Token {
                kind: Tok::RBracket,
                span,
            }) => Ok(span.end),
            other => Err(SyntaxError {
                span: other.map(|t| t.span).unwrap_or(open),
                message: "expected ']'".into(),
                hint: None,
            }),
        }
    }

    /// After '[': literals separated by commas, then ']'. Returns the items and the ']' span.
    fn literal_list(&mut self, open: &Span) -> Result<(Vec<Lit>, Span), SyntaxError> {
        let mut items = Vec::new();
        if self.at(&Tok::RBracket) {
            let close = self.next().map(|t| t.span).unwrap_or_default();
            return Ok((items, close));
        }
        loop {
            let neg = self.at(&Tok::Minus);
            if neg {
                self.pos += 1;
            }
            let lit = match self.next() {
                Some(Token {
                    kind: Tok::Number(n),
                    ..
                }) => Lit::Num(if neg { -n } else { n }),
                Some(Token {
                    kind: Tok::Str(s), ..
                }) if !neg => Lit::Str(s),
                Some(Token {
                    kind: Tok::Ident(s),
                    span,
                }) if !neg => match s.to_ascii_uppercase().as_str() {
                    "TRUE" => Lit::Bool(true),
                    "FALSE" => Lit::Bool(false),
                    "NULL" => Lit::Null,
                    _ => {
                        return Err(SyntaxError {
                            span,
                            message: "list items must be constants".into(),
                            hint: Some("use numbers, quoted strings, true, false or null".into()),
                        });
                    }
                },
                other => {
                    return Err(SyntaxError {
                        span: other.map(|t| t.span).unwrap_or(open.clone()),
                        message: "list items must be constants".into(),
                        hint: Some("use numbers, quoted strings, true, false or null".into()),
                    });
                }
            };
            items.push(lit);
            match self.next() {
                Some(Token {
                    kind: Tok::Comma, ..
                }) => {}
                Some(Token {
                    kind: Tok::RBracket,
                    span,
                }) => return Ok((items, span)),
                other => {
                    return Err(SyntaxError {
                        span: other.map(|t| t.span).unwrap_or(open.clone()),
                        message: "expected ',' or ']' in the list".into(),
                        hint: None,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(s: &str) -> String {
        parse(s).expect("parses").to_string()
    }

    #[test]
    fn precedence_and_case_insensitive_keywords() {
        assert_eq!(
            show("a = 1 or b = 2 and not c"),
            "((a = 1) OR ((b = 2) AND (NOT c)))"
        );
        assert_eq!(show("1 + 2 * 3 - -4"), "((1 + (2 * 3)) - (-4))");
        assert_eq!(show("$body.a.b[0]['x y'] > 3"), "($body.a.b[0]['x y'] > 3)");
        assert_eq!(
            show("IS_DEFINED($twin.tags.site)"),
            "IS_DEFINED($twin.tags.site)"
        );
        assert_eq!(
            show("x not in ['a', -1, null]"),
            "(x NOT IN ['a', -1, null])"
        );
        assert_eq!(show("(a <> 'b')"), "(a != 'b')");
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = parse("$body.temp > ").expect_err("dangling");
        assert_eq!(e.span, 11..12);
        assert!(
            e.message.contains("'>' needs an expression"),
            "{}",
            e.message
        );

        let e = parse("(a = 1").expect_err("unclosed");
        assert!(e.message.contains("expected ')'"), "{}", e.message);

        let e = parse("a = 1 b = 2").expect_err("missing AND");
        assert_eq!(e.span, 6..7);
        assert_eq!(e.hint.as_deref(), Some("join conditions with AND or OR"));

        let e = parse("$contentType.x = 1").expect_err("field on sysprop");
        assert_eq!(e.span, 12..13);
    }
}
