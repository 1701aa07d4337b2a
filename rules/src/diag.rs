//! Diagnostics for rule files: a message, the place in the file, and a hint.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use ariadne::{Config, IndexType, Label, Report, ReportKind, Source};

/// One problem in one rules file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// The file as the user named it.
    pub file: String,
    /// The whole file text, so the diagnostic can quote it.
    pub src: Arc<str>,
    /// Byte range in `src`.
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    /// 1-based line and column (in characters) of the start of the span.
    pub fn line_col(&self) -> (usize, usize) {
        let start = self.span.start.min(self.src.len());
        let before = &self.src[..floor_char_boundary(&self.src, start)];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// The full report: `file:line:col`, the source line, a caret under the span, the hint.
    pub fn render(&self, color: bool) -> String {
        let id = self.file.clone();
        let span = self.clamped();
        let mut report = Report::build(ReportKind::Error, (id.clone(), span.clone()))
            .with_config(
                Config::default()
                    .with_color(color)
                    .with_index_type(IndexType::Byte),
            )
            .with_message(&self.message)
            .with_label(Label::new((id.clone(), span)).with_message(&self.message));
        if let Some(h) = &self.hint {
            report = report.with_help(h);
        }
        let mut out = Vec::new();
        let written = report
            .finish()
            .write((id, Source::from(self.src.as_ref())), &mut out);
        match written {
            Ok(()) => String::from_utf8_lossy(&out).into_owned(),
            Err(_) => self.to_string(),
        }
    }

    fn clamped(&self) -> Range<usize> {
        let len = self.src.len();
        let start = floor_char_boundary(&self.src, self.span.start.min(len));
        let end = floor_char_boundary(&self.src, self.span.end.min(len)).max(start);
        start..end
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Diagnostic {
    /// One line: `file:line:col: message (hint)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (line, col) = self.line_col();
        write!(f, "{}:{line}:{col}: error: {}", self.file, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Maps byte offsets inside a TOML string value to byte offsets in the file.
///
/// `raw` is the value's text in the file including its quotes; the result has one entry
/// per byte of the decoded string, plus one for its end.
pub fn string_offsets(raw: &str, raw_start: usize) -> Vec<usize> {
    let (open, escapes) = if raw.starts_with("\"\"\"") {
        (3, true)
    } else if raw.starts_with("'''") {
        (3, false)
    } else if raw.starts_with('"') {
        (1, true)
    } else {
        (1, false)
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut i = open;
    // A multi-line string drops a newline right after its opening delimiter.
    if open == 3 && raw[i..].starts_with('\n') {
        i += 1;
    } else if open == 3 && raw[i..].starts_with("\r\n") {
        i += 2;
    }
    let bytes = raw.as_bytes();
    let close = raw.len().saturating_sub(open).max(i);
    while i < close {
        let c = raw[i..].chars().next().unwrap_or(' ');
        if escapes && c == '\\' {
            let (decoded_len, raw_len) = match bytes.get(i + 1) {
                Some(b'u') => (decoded_len_of_hex(&raw[i..], 4), 6),
                Some(b'U') => (decoded_len_of_hex(&raw[i..], 8), 10),
                _ => (1, 2),
            };
            for _ in 0..decoded_len {
                out.push(raw_start + i);
            }
            i += raw_len.min(close - i);
        } else {
            for _ in 0..c.len_utf8() {
                out.push(raw_start + i);
            }
            i += c.len_utf8();
        }
    }
    out.push(raw_start + i);
    out
}

fn decoded_len_of_hex(esc: &str, digits: usize) -> usize {
    esc.get(2..2 + digits)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .and_then(char::from_u32)
        .map_or(1, char::len_utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_string_content_to_file_offsets() {
        let file = r#"x = "a\"b""#;
        let raw = &file[4..];
        let map = string_offsets(raw, 4);
        assert_eq!(map, vec![5, 6, 8, 9]);
        let map = string_offsets("'ab'", 10);
        assert_eq!(map, vec![11, 12, 13]);
    }

    #[test]
    fn renders_location_caret_and_hint() {
        let d = Diagnostic {
            file: "rules/x.toml".into(),
            src: Arc::from("a = 1\ncondition = \"b >\"\n"),
            span: 17..18,
            message: "boom".into(),
            hint: Some("try this".into()),
        };
        assert_eq!(d.line_col(), (2, 12));
        let r = d.render(false);
        assert!(r.contains("rules/x.toml:2:12"), "{r}");
        assert!(r.contains("^") || r.contains("┬") || r.contains("─"), "{r}");
        assert!(r.contains("try this"), "{r}");
        assert_eq!(
            d.to_string(),
            "rules/x.toml:2:12: error: boom (hint: try this)"
        );
    }
}
