//! Tokens of the routing query language.
//!
//! winnow does the character-level work (numbers, escapes, names); the lexer loop only
//! decides which token starts at the current character so that each failure gets a
//! message of its own.

use std::ops::Range;

use winnow::Parser;
use winnow::ascii::{digit1, float, hex_uint};
use winnow::combinator::{alt, opt, preceded};
use winnow::token::{one_of, take_while};

/// A token and the byte range it covers in the expression text.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub kind: Tok,
    pub span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Number(f64),
    Str(String),
    /// A bare name: a keyword, function or application property.
    Ident(String),
    /// `$name`: a system property, `$body` or `$twin`.
    Dollar(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Tok {
    pub fn describe(&self) -> String {
        match self {
            Tok::Number(n) => format!("number {n}"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Dollar(s) => format!("'${s}'"),
            other => format!("'{}'", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Dot => ".",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Eq => "=",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            _ => "",
        }
    }
}

/// A lexing failure: where and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LexError {
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Splits `src` into tokens.
pub fn lex(src: &str) -> Result<Vec<Token>, LexError> {
    let mut rest = src;
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start();
        let start = src.len() - rest.len();
        let Some(c) = rest.chars().next() else {
            return Ok(out);
        };
        let kind = match c {
            '0'..='9' => number(&mut rest).map_err(|_| LexError {
                span: start..start + 1,
                message: "malformed number".into(),
                hint: Some("numbers look like 42, 2.5, 1e3 or 0x1F".into()),
            })?,
            '\'' | '"' => string(&mut rest, start)?,
            '$' => {
                rest = &rest[1..];
                let name: winnow::Result<&str> = name.parse_next(&mut rest);
                match name {
                    Ok(n) => Tok::Dollar(n.to_owned()),
                    Err(_) => {
                        return Err(LexError {
                            span: start..start + 1,
                            message: "'$' must be followed by a name".into(),
                            hint: Some("system properties look like $contentType, the body like $body.temp".into()),
                        });
                    }
                }
            }
            c if is_name_start(c) => {
                let n: winnow::Result<&str> = name.parse_next(&mut rest);
                Tok::Ident(n.unwrap_or_default().to_owned())
            }
            _ => {
                let (tok, len) = punct(rest).ok_or_else(|| LexError {
                    span: start..start + c.len_utf8(),
                    message: format!("unexpected character {c:?}"),
                    hint: Some(
                        "operators are + - * / % = != <> < <= > >=, AND, OR, NOT; strings are quoted with ' or \""
                            .into(),
                    ),
                })?;
                rest = &rest[len..];
                tok
            }
        };
        let end = src.len() - rest.len();
        out.push(Token {
            kind,
            span: start..end,
        });
    }
}

fn name<'i>(input: &mut &'i str) -> winnow::Result<&'i str> {
    (one_of(is_name_start), take_while(0.., is_name_char))
        .take()
        .parse_next(input)
}

fn number(input: &mut &str) -> winnow::Result<Tok> {
    let n = alt((
        preceded(alt(("0x", "0X")), hex_uint::<_, u64, _>).map(|v| v as f64),
        float::<_, f64, _>,
        digit1.parse_to::<f64>(),
    ))
    .parse_next(input)?;
    // A name glued to a number ("12abc") is a typo, not two tokens.
    let tail: winnow::Result<Option<char>> = opt(one_of(is_name_char)).parse_next(input);
    match tail {
        Ok(None) => Ok(Tok::Number(n)),
        _ => Err(winnow::error::ContextError::new()),
    }
}

fn string(input: &mut &str, start: usize) -> Result<Tok, LexError> {
    let mut chars = input.char_indices();
    let Some((_, quote)) = chars.next() else {
        return Err(LexError {
            span: start..start,
            message: "expected a string".into(),
            hint: None,
        });
    };
    let mut value = String::new();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            *input = &input[i + c.len_utf8()..];
            return Ok(Tok::Str(value));
        }
        if c != '\\' {
            value.push(c);
            continue;
        }
        let esc_at = start + i;
        let bad = |len: usize| LexError {
            span: esc_at..esc_at + len,
            message: "unknown escape sequence".into(),
            hint: Some("escapes are \\' \\\" \\\\ \\/ \\b \\f \\n \\r \\t and \\uXXXX".into()),
        };
        match chars.next() {
            Some((_, '\'')) => value.push('\''),
            Some((_, '"')) => value.push('"'),
            Some((_, '\\')) => value.push('\\'),
            Some((_, '/')) => value.push('/'),
            Some((_, 'b')) => value.push('\u{8}'),
            Some((_, 'f')) => value.push('\u{c}'),
            Some((_, 'n')) => value.push('\n'),
            Some((_, 'r')) => value.push('\r'),
            Some((_, 't')) => value.push('\t'),
            Some((j, 'u')) => {
                let hex = input.get(j + 1..j + 5).ok_or_else(|| bad(2))?;
                let code = u32::from_str_radix(hex, 16).map_err(|_| bad(6))?;
                value.push(char::from_u32(code).ok_or_else(|| bad(6))?);
                for _ in 0..4 {
                    chars.next();
                }
            }
            Some((_, c)) => return Err(bad(1 + c.len_utf8())),
            None => break,
        }
    }
    Err(LexError {
        span: start..start + input.len(),
        message: "unterminated string".into(),
        hint: Some(format!("close the string with {quote}")),
    })
}

fn punct(rest: &str) -> Option<(Tok, usize)> {
    let two = rest.get(..2).unwrap_or("");
    let tok2 = match two {
        "!=" | "<>" => Some(Tok::Ne),
        "<=" => Some(Tok::Le),
        ">=" => Some(Tok::Ge),
        "==" => Some(Tok::Eq),
        _ => None,
    };
    if let Some(t) = tok2 {
        return Some((t, 2));
    }
    let t = match rest.as_bytes().first()? {
        b'(' => Tok::LParen,
        b')' => Tok::RParen,
        b'[' => Tok::LBracket,
        b']' => Tok::RBracket,
        b',' => Tok::Comma,
        b'.' => Tok::Dot,
        b'+' => Tok::Plus,
        b'-' => Tok::Minus,
        b'*' => Tok::Star,
        b'/' => Tok::Slash,
        b'%' => Tok::Percent,
        b'=' => Tok::Eq,
        b'<' => Tok::Lt,
        b'>' => Tok::Gt,
        _ => return None,
    };
    Some((t, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<Tok> {
        lex(s).expect("lexes").into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn lexes_operators_names_and_literals() {
        assert_eq!(
            kinds("$body.temp >= 0x1F AND level <> 'a\\'b'"),
            vec![
                Tok::Dollar("body".into()),
                Tok::Dot,
                Tok::Ident("temp".into()),
                Tok::Ge,
                Tok::Number(31.0),
                Tok::Ident("AND".into()),
                Tok::Ident("level".into()),
                Tok::Ne,
                Tok::Str("a'b".into()),
            ]
        );
        assert_eq!(kinds("2.5e1"), vec![Tok::Number(25.0)]);
        assert_eq!(kinds("\"\\u0041\""), vec![Tok::Str("A".into())]);
        assert_eq!(
            kinds("iothub-creation-time-utc"),
            vec![Tok::Ident("iothub-creation-time-utc".into())]
        );
    }

    #[test]
    fn reports_where_lexing_fails() {
        let e = lex("a = 'open").expect_err("unterminated");
        assert_eq!(e.span, 4..9);
        assert!(e.message.contains("unterminated"));
        let e = lex("a # b").expect_err("bad char");
        assert_eq!(e.span, 2..3);
        let e = lex("12abc").expect_err("glued");
        assert_eq!(e.span, 0..1);
    }
}
