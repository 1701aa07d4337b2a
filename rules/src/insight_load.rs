//! Checking and compiling `[[insight]]` tables, with a diagnostic at the offending key.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use weir_core::EventSource;

use crate::file::RawInsight;
use crate::insight::{
    Aggregate, Insight, InsightKind, check_call, parse_duration, parse_window, split_call,
};
use crate::ir::{Const, Ir};
use crate::load::{Builder, valid_column};

const KINDS: &str = "window (the default), anomaly, silence";

impl Builder<'_> {
    pub(crate) fn insight(&mut self, i: usize, raw: RawInsight) {
        let name = raw.name.get_ref().clone();
        if !valid_column(&name) || name.len() > 64 {
            self.diag(
                i,
                raw.name.span(),
                format!("invalid insight name {name:?}"),
                Some("use letters, digits and '_', starting with a letter (at most 64)".into()),
            );
            return;
        }
        let prev = self.insight_names.get(&name).cloned();
        if self.defined_twice(i, raw.name.span(), "insight", &name, prev) {
            return;
        }
        self.insight_names
            .insert(name.clone(), (i, raw.name.span()));
        let before = self.diag_count();
        let source = self.insight_source(i, &raw);
        let condition = match &raw.condition {
            None => Some(Ir::Const(Const::Bool(true))),
            Some(c) => self.expr(i, c, 0, c.get_ref()),
        };
        let time = raw.time.as_ref().map(|t| self.expr(i, t, 0, t.get_ref()));
        let mut group_by = Vec::new();
        for (key, e) in &raw.group_by.0 {
            if !valid_column(key) {
                self.diag(
                    i,
                    e.span(),
                    format!("invalid group_by name {key:?}"),
                    Some("use letters, digits and '_', starting with a letter".into()),
                );
            } else if let Some(ir) = self.expr(i, e, 0, e.get_ref()) {
                group_by.push((key.clone(), ir));
            }
        }
        let kind = self.insight_kind(i, &raw);
        let late = raw.late.as_ref().and_then(|l| self.endpoint_ref(i, l));
        if self.diag_count() > before {
            return;
        }
        if let (Some(source), Some(condition), Some(kind)) = (source, condition, kind) {
            self.set.insights.push(Insight {
                name: name.into(),
                source,
                condition,
                time: time.flatten(),
                group_by,
                kind,
                late,
            });
        }
    }

    fn insight_source(&mut self, i: usize, raw: &RawInsight) -> Option<EventSource> {
        let Some(s) = &raw.source else {
            return Some(EventSource::DeviceMessages);
        };
        let parsed = EventSource::parse(s.get_ref());
        if parsed.is_none() {
            let all: Vec<&str> = EventSource::ALL.iter().map(|s| s.as_str()).collect();
            self.diag(
                i,
                s.span(),
                format!("unknown source {:?}", s.get_ref()),
                Some(format!("sources are {}", all.join(", "))),
            );
        }
        parsed
    }

    fn insight_kind(&mut self, i: usize, raw: &RawInsight) -> Option<InsightKind> {
        let kind = raw
            .kind
            .as_ref()
            .map_or("window".to_owned(), |k| k.get_ref().to_ascii_lowercase());
        let applies: &[(&str, Option<Range<usize>>)] = &[
            ("window", raw.window.as_ref().map(Spanned::span)),
            (
                "allowed_lateness",
                raw.allowed_lateness.as_ref().map(Spanned::span),
            ),
            (
                "aggregates",
                raw.aggregates.0.first().map(|(_, v)| v.span()),
            ),
            ("value", raw.value.as_ref().map(Spanned::span)),
            ("method", raw.method.as_ref().map(Spanned::span)),
            ("threshold", raw.threshold.as_ref().map(Spanned::span)),
            ("baseline", raw.baseline.as_ref().map(Spanned::span)),
            ("after", raw.after.as_ref().map(Spanned::span)),
        ];
        let own: &[&str] = match kind.as_str() {
            "window" => &["window", "allowed_lateness", "aggregates"],
            "anomaly" => &["value", "method", "threshold", "baseline"],
            "silence" => &["after"],
            other => {
                let span = raw.kind.as_ref().map_or(raw.name.span(), Spanned::span);
                self.diag(
                    i,
                    span,
                    format!("unknown insight kind {other:?}"),
                    Some(format!("kinds are {KINDS}")),
                );
                return None;
            }
        };
        for (key, span) in applies {
            if let Some(span) = span
                && !own.contains(key)
            {
                self.diag(
                    i,
                    span.clone(),
                    format!("`{key}` does not apply to a {kind} insight"),
                    Some(format!("a {kind} insight takes {}", own.join(", "))),
                );
            }
        }
        match kind.as_str() {
            "window" => self.window_kind(i, raw),
            "anomaly" => self.anomaly_kind(i, raw),
            _ => {
                let after = self.required_duration(i, raw, "after", raw.after.as_ref())?;
                Some(InsightKind::Silence { after })
            }
        }
    }

    fn window_kind(&mut self, i: usize, raw: &RawInsight) -> Option<InsightKind> {
        let Some(w) = &raw.window else {
            self.diag(
                i,
                raw.name.span(),
                "a window insight needs `window`",
                Some("for example window = \"tumbling 1m\"".into()),
            );
            return None;
        };
        let window = parse_window(w.get_ref())
            .map_err(|e| self.diag(i, w.span(), e, None))
            .ok();
        let lateness = match &raw.allowed_lateness {
            None => Some(Duration::ZERO),
            Some(l) => self.duration(i, l),
        };
        if raw.aggregates.0.is_empty() {
            self.diag(
                i,
                raw.name.span(),
                "a window insight needs `aggregates`",
                Some(
                    "for example aggregates = { n = \"count()\", avg_temp = \"avg($body.temp)\" }"
                        .into(),
                ),
            );
            return None;
        }
        let mut aggregates = Vec::new();
        for (name, call) in &raw.aggregates.0 {
            if let Some(a) = self.aggregate(i, name, call) {
                aggregates.push(a);
            }
        }
        if aggregates.len() < raw.aggregates.0.len() {
            return None;
        }
        Some(InsightKind::Window {
            window: window?,
            lateness: lateness?,
            aggregates,
        })
    }

    fn aggregate(&mut self, i: usize, name: &str, call: &Spanned<String>) -> Option<Aggregate> {
        if !valid_column(name) {
            self.diag(
                i,
                call.span(),
                format!("invalid aggregate name {name:?}"),
                Some("use letters, digits and '_', starting with a letter".into()),
            );
            return None;
        }
        let (func_name, args) = split_call(call.get_ref())
            .map_err(|e| self.diag(i, call.span(), e, None))
            .ok()?;
        let (func, fraction) = check_call(func_name, &args)
            .map_err(|e| self.diag(i, call.span(), e, None))
            .ok()?;
        let arg = match args.first() {
            None => None,
            Some((at, text)) => Some(self.expr(i, call, *at, text)?),
        };
        Some(Aggregate {
            name: name.to_owned(),
            func,
            arg,
            fraction,
        })
    }

    fn anomaly_kind(&mut self, i: usize, raw: &RawInsight) -> Option<InsightKind> {
        let Some(v) = &raw.value else {
            self.diag(
                i,
                raw.name.span(),
                "an anomaly insight needs `value`",
                Some("for example value = \"$body.temp\"".into()),
            );
            return None;
        };
        let value = self.expr(i, v, 0, v.get_ref());
        if let Some(m) = &raw.method
            && !m.get_ref().eq_ignore_ascii_case("zscore")
        {
            self.diag(
                i,
                m.span(),
                format!("unknown anomaly method {:?}", m.get_ref()),
                Some("the method is \"zscore\"".into()),
            );
            return None;
        }
        let threshold = raw.threshold.as_ref().map_or(3.0, |t| *t.get_ref());
        if !(threshold.is_finite() && threshold > 0.0) {
            let span = raw
                .threshold
                .as_ref()
                .map_or(raw.name.span(), Spanned::span);
            self.diag(
                i,
                span,
                "threshold must be a positive number of standard deviations",
                None,
            );
            return None;
        }
        let baseline = match &raw.baseline {
            None => Some(Duration::from_secs(3600)),
            Some(b) => self.duration(i, b),
        };
        Some(InsightKind::Anomaly {
            value: value?,
            threshold,
            baseline: baseline?,
        })
    }

    fn required_duration(
        &mut self,
        i: usize,
        raw: &RawInsight,
        key: &str,
        v: Option<&Spanned<String>>,
    ) -> Option<Duration> {
        let Some(v) = v else {
            self.diag(
                i,
                raw.name.span(),
                format!("a silence insight needs `{key}`"),
                Some(format!("for example {key} = \"5m\"")),
            );
            return None;
        };
        let d = self.duration(i, v)?;
        if d.is_zero() {
            self.diag(i, v.span(), format!("`{key}` must be longer than 0"), None);
            return None;
        }
        Some(d)
    }

    fn duration(&mut self, i: usize, v: &Spanned<String>) -> Option<Duration> {
        parse_duration(v.get_ref())
            .map_err(|e| self.diag(i, v.span(), e, None))
            .ok()
    }
}
