//! The body of an insight result, as routes and sinks see it: a JSON object with the
//! insight's name, the window (RFC 3339, UTC, milliseconds), each `group_by` key, each
//! aggregate by its name (`count()` as an integer, `null` where there was nothing to
//! aggregate) and the revision.

use serde_json::{Map, Value, json};
use weir_rules::insight::AggFn;
use weir_rules::view::rfc3339_ms;

use super::window::WindowResult;

/// Builds the body of `r` for the insight `name`, whose group keys are `keys` (in
/// `group_by` order) and aggregates `aggregates` (name and function, in order).
pub fn body(
    name: &str,
    keys: &[String],
    aggregates: &[(String, AggFn)],
    r: &WindowResult,
) -> Value {
    let mut o = Map::new();
    o.insert("insight".into(), json!(name));
    o.insert("window_start".into(), json!(rfc3339_ms(r.start)));
    o.insert("window_end".into(), json!(rfc3339_ms(r.end)));
    let group: Vec<Value> = serde_json::from_str(&r.group).unwrap_or_default();
    for (i, k) in keys.iter().enumerate() {
        o.insert(k.clone(), group.get(i).cloned().unwrap_or(Value::Null));
    }
    for ((agg, func), v) in aggregates.iter().zip(&r.values) {
        let v = match (func, v) {
            (_, None) => Value::Null,
            (AggFn::Count, Some(n)) => json!(*n as u64),
            (_, Some(x)) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        };
        o.insert(agg.clone(), v);
    }
    o.insert("revision".into(), json!(r.revision));
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_reads_like_the_issue_says() {
        let r = WindowResult {
            group: r#"["m1","north"]"#.into(),
            start: 1_796_000_520_000,
            end: 1_796_000_580_000,
            revision: 2,
            events: 3,
            values: vec![Some(3.0), Some(21.25), None],
        };
        let b = body(
            "temp_1m",
            &["device".into(), "site".into()],
            &[
                ("n".into(), AggFn::Count),
                ("avg_temp".into(), AggFn::Avg),
                ("sd".into(), AggFn::Stddev),
            ],
            &r,
        );
        assert_eq!(
            b,
            json!({"insight": "temp_1m", "window_start": "2026-11-30T01:02:00.000Z",
                   "window_end": "2026-11-30T01:03:00.000Z", "device": "m1", "site": "north",
                   "n": 3, "avg_temp": 21.25, "sd": null, "revision": 2})
        );
        assert!(b["n"].is_u64(), "a count is an integer");
    }
}
