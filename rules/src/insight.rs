//! `[[insight]]` tables: windowed aggregates, anomalies and silence per group of events,
//! declared in rules files next to routes and checked like them.
//!
//! This module turns the text into an [`Insight`]: durations, the window, aggregate calls
//! and expressions compiled to the routing language's IR. The engine evaluates them; the
//! semantics (event time, lateness, revisions) are in `docs/decisions/027-insights.md`.

use std::sync::Arc;
use std::time::Duration;

use weir_core::{ColumnType, ColumnValue, EventSource};

use crate::eval::eval;
use crate::ir::Ir;
use crate::ruleset::column_value;
use crate::value::Val;
use crate::view::MessageView;

/// One declared insight.
#[derive(Debug, Clone)]
pub struct Insight {
    pub name: Arc<str>,
    pub source: EventSource,
    pub condition: Ir,
    /// The event time: an ISO 8601 string or epoch milliseconds; `None` is `$enqueuedTime`.
    pub time: Option<Ir>,
    /// Output name and expression, in file order.
    pub group_by: Vec<(String, Ir)>,
    pub kind: InsightKind,
    /// Where events go that arrive after their window was closed and could not be
    /// included (index into the rule set's endpoints); `None` corrects the window instead.
    pub late: Option<usize>,
}

impl Insight {
    /// True when any of its expressions reads the twin's tags.
    pub fn reads_tags(&self) -> bool {
        let kind: Vec<&Ir> = match &self.kind {
            InsightKind::Window { aggregates, .. } => {
                aggregates.iter().filter_map(|a| a.arg.as_ref()).collect()
            }
            InsightKind::Anomaly { value, .. } => vec![value],
            InsightKind::Silence { .. } => Vec::new(),
        };
        std::iter::once(&self.condition)
            .chain(self.time.as_ref())
            .chain(self.group_by.iter().map(|(_, e)| e))
            .chain(kind)
            .any(Ir::reads_tags)
    }

    /// Every expression of the insight, to rewrite.
    pub(crate) fn exprs_mut(&mut self) -> impl Iterator<Item = &mut Ir> {
        let kind: Vec<&mut Ir> = match &mut self.kind {
            InsightKind::Window { aggregates, .. } => aggregates
                .iter_mut()
                .filter_map(|a| a.arg.as_mut())
                .collect(),
            InsightKind::Anomaly { value, .. } => vec![value],
            InsightKind::Silence { .. } => Vec::new(),
        };
        std::iter::once(&mut self.condition)
            .chain(self.time.as_mut())
            .chain(self.group_by.iter_mut().map(|(_, e)| e))
            .chain(kind)
    }
}

#[derive(Debug, Clone)]
pub enum InsightKind {
    Window {
        window: Window,
        lateness: Duration,
        aggregates: Vec<Aggregate>,
    },
    /// An event whose `value` is more than `threshold` standard deviations from the mean
    /// of its group over the `baseline` before it.
    Anomaly {
        value: Ir,
        threshold: f64,
        baseline: Duration,
    },
    /// A group that sent nothing for `after`, and again when it comes back.
    Silence { after: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Tumbling { size: Duration },
    Hopping { size: Duration, hop: Duration },
    Session { gap: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFn {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Stddev,
    First,
    Last,
    Percentile,
}

impl AggFn {
    pub const NAMES: &'static str =
        "count(), sum(x), avg(x), min(x), max(x), stddev(x), first(x), last(x), percentile(x, p)";

    fn parse(s: &str) -> Option<AggFn> {
        Some(match s.to_ascii_lowercase().as_str() {
            "count" => AggFn::Count,
            "sum" => AggFn::Sum,
            "avg" => AggFn::Avg,
            "min" => AggFn::Min,
            "max" => AggFn::Max,
            "stddev" => AggFn::Stddev,
            "first" => AggFn::First,
            "last" => AggFn::Last,
            "percentile" => AggFn::Percentile,
            _ => return None,
        })
    }
}

/// `name = "fn(expr[, p])"`.
#[derive(Debug, Clone)]
pub struct Aggregate {
    pub name: String,
    pub func: AggFn,
    /// What is aggregated; `None` for `count()`, which counts events.
    pub arg: Option<Ir>,
    /// The fraction of `percentile`, in 0..=1.
    pub fraction: f64,
}

/// What one event gives an insight.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// The event is not for this insight (its condition is not true).
    Skip,
    /// Its time expression is not an ISO 8601 string or epoch milliseconds.
    NoTime,
    Take {
        /// The `group_by` values as a JSON array (undefined as null): one string per
        /// group, the same wherever it is computed.
        group: String,
        time_ms: i64,
        /// One per aggregate (window insights) or the value (anomaly insights); `None`
        /// when not a number.
        values: Vec<Option<f64>>,
    },
}

impl Insight {
    /// Evaluates this insight's condition, time, group and values on one event (of its
    /// source, enqueued at `enqueued_ms`).
    pub fn sample(&self, view: &dyn MessageView, enqueued_ms: i64) -> Sample {
        if !eval(&self.condition, view).is_true() {
            return Sample::Skip;
        }
        let time_ms = match &self.time {
            None => enqueued_ms,
            // As a `timestamp` column reads it: epoch ms, or RFC 3339 with an offset.
            Some(t) => match column_value(ColumnType::Timestamp, eval(t, view)) {
                ColumnValue::Timestamp(ms) => ms,
                _ => return Sample::NoTime,
            },
        };
        // The group as a JSON array's text, written directly: this runs for every event of
        // every insight, and a `Value` array cost three allocations more.
        let mut group = Vec::with_capacity(32);
        group.push(b'[');
        for (i, (_, e)) in self.group_by.iter().enumerate() {
            if i > 0 {
                group.push(b',');
            }
            // Writing to a Vec cannot fail, and these values always serialize.
            let _ = match eval(e, view) {
                Val::Str(s) => serde_json::to_writer(&mut group, s.as_ref()),
                other => serde_json::to_writer(
                    &mut group,
                    &other.to_json().unwrap_or(serde_json::Value::Null),
                ),
            };
        }
        group.push(b']');
        let number = |ir: &Ir| match eval(ir, view) {
            Val::Num(n) if n.is_finite() => Some(n),
            _ => None,
        };
        let values = match &self.kind {
            InsightKind::Window { aggregates, .. } => aggregates
                .iter()
                .map(|a| a.arg.as_ref().and_then(number))
                .collect(),
            InsightKind::Anomaly { value, .. } => vec![number(value)],
            InsightKind::Silence { .. } => Vec::new(),
        };
        Sample::Take {
            group: String::from_utf8(group).unwrap_or_default(),
            time_ms,
            values,
        }
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `1d` (one number, one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit; write e.g. 30s, 5m or 1h"))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        other => return Err(format!("unknown unit {other:?}; use ms, s, m, h or d")),
    };
    if !(secs.is_finite() && (0.0..=366.0 * 86_400.0).contains(&secs)) {
        return Err(format!("{s:?} is out of range (0 to 366 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `tumbling 1m`, `hopping 5m every 1m` or `session 2m`.
pub fn parse_window(s: &str) -> Result<Window, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let positive = |w: &str| {
        parse_duration(w).and_then(|d| {
            if d.as_millis() >= 1 {
                Ok(d)
            } else {
                Err(format!("{w:?} must be at least 1 ms"))
            }
        })
    };
    match words.as_slice() {
        [kind, size] if kind.eq_ignore_ascii_case("tumbling") => Ok(Window::Tumbling {
            size: positive(size)?,
        }),
        [kind, size, every, hop]
            if kind.eq_ignore_ascii_case("hopping") && every.eq_ignore_ascii_case("every") =>
        {
            let (size, hop) = (positive(size)?, positive(hop)?);
            if hop > size || size.as_millis() % hop.as_millis() != 0 {
                return Err("a hopping window's size must be a multiple of its hop".into());
            }
            Ok(Window::Hopping { size, hop })
        }
        [kind, gap] if kind.eq_ignore_ascii_case("session") => Ok(Window::Session {
            gap: positive(gap)?,
        }),
        _ => Err(format!(
            "unknown window {s:?}; write \"tumbling 1m\", \"hopping 5m every 1m\" or \"session 2m\""
        )),
    }
}

/// The arguments of a call: each one's offset in the call's text, and its text.
pub type Args<'a> = Vec<(usize, &'a str)>;

/// Splits `fn(a, b)` into the function name and its argument texts (with the offset of
/// each in `s`), at top-level commas.
pub fn split_call(s: &str) -> Result<(&str, Args<'_>), String> {
    let open = s
        .find('(')
        .ok_or_else(|| format!("an aggregate is a call, e.g. avg($body.temp); got {s:?}"))?;
    let close = s
        .rfind(')')
        .filter(|c| *c > open && s[c + 1..].trim().is_empty())
        .ok_or_else(|| format!("{s:?} lacks its closing parenthesis"))?;
    let name = s[..open].trim();
    let inner = &s[open + 1..close];
    let mut args = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    for (i, c) in inner.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[') => depth += 1,
            (None, ')' | ']') => depth -= 1,
            (None, ',') if depth == 0 => {
                args.push((open + 1 + start, &inner[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inner[start..].trim().is_empty() || !args.is_empty() {
        args.push((open + 1 + start, &inner[start..]));
    }
    Ok((name, args))
}

/// The function of an aggregate call and the fraction for `percentile`; the caller
/// compiles the argument expression.
pub fn check_call(name: &str, args: &[(usize, &str)]) -> Result<(AggFn, f64), String> {
    let func = AggFn::parse(name).ok_or_else(|| {
        format!(
            "unknown aggregate {name:?}; aggregates are {}",
            AggFn::NAMES
        )
    })?;
    let want = match func {
        AggFn::Count => 0,
        AggFn::Percentile => 2,
        _ => 1,
    };
    if args.len() != want {
        return Err(format!(
            "{name}() takes {want} argument{}",
            if want == 1 { "" } else { "s" }
        ));
    }
    let fraction = match func {
        AggFn::Percentile => {
            let p: f64 = args[1].1.trim().parse().map_err(|_| {
                format!(
                    "the fraction of percentile must be a number in 0..1, not {:?}",
                    args[1].1.trim()
                )
            })?;
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "the fraction of percentile must be in 0..1, not {p}"
                ));
            }
            p
        }
        _ => 0.0,
    };
    Ok((func, fraction))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_windows_and_calls_parse_or_say_why_not() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").is_err_and(|e| e.contains("no unit")));
        assert!(parse_duration("5y").is_err_and(|e| e.contains("unknown unit")));
        assert_eq!(
            parse_window("hopping 5m every 1m"),
            Ok(Window::Hopping {
                size: Duration::from_secs(300),
                hop: Duration::from_secs(60)
            })
        );
        assert!(parse_window("hopping 5m every 2m").is_err());
        assert!(parse_window("sliding 5m").is_err_and(|e| e.contains("tumbling 1m")));
        assert_eq!(
            split_call("percentile($body.a[0], 0.95)"),
            Ok(("percentile", vec![(11, "$body.a[0]"), (22, " 0.95")]))
        );
        assert_eq!(split_call("count()"), Ok(("count", vec![])));
        assert_eq!(
            split_call("max(CONCAT('a,b', $x))").map(|(_, a)| a.len()),
            Ok(1)
        );
        assert!(check_call("avg", &[]).is_err_and(|e| e.contains("1 argument")));
        assert!(check_call("median", &[(0, "x")]).is_err_and(|e| e.contains("unknown")));
        assert!(
            check_call("percentile", &[(0, "x"), (3, "1.5")]).is_err_and(|e| e.contains("0..1"))
        );
        assert_eq!(
            check_call("percentile", &[(0, "x"), (3, "0.5")]),
            Ok((AggFn::Percentile, 0.5))
        );
    }
}
