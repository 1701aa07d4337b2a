//! The body of an insight result, as routes and sinks see it: a JSON object with the
//! insight's name and each `group_by` key, then, for a window, the window (RFC 3339, UTC,
//! milliseconds), each aggregate by its name (`count()` as an integer, `null` where there
//! was nothing to aggregate) and the revision; for an anomaly, the value and its baseline;
//! for silence, the state and when the group was last heard of.

use serde_json::{Map, Value, json};
use weir_rules::insight::AggFn;
use weir_rules::view::rfc3339_ms;

use super::anomaly::Anomaly;
use super::silence::{Change, SilenceReport};
use super::window::WindowResult;

/// The insight's name and the group's keys (`keys` in `group_by` order; `group` as the
/// window core keeps it, a JSON array).
fn head(name: &str, keys: &[String], group: &str) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("insight".into(), json!(name));
    let group: Vec<Value> = serde_json::from_str(group).unwrap_or_default();
    for (i, k) in keys.iter().enumerate() {
        o.insert(k.clone(), group.get(i).cloned().unwrap_or(Value::Null));
    }
    o
}

fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// An anomaly: the event's time, value, offset, and the baseline it was judged against.
pub fn anomaly(name: &str, keys: &[String], a: &Anomaly) -> Value {
    let mut o = head(name, keys, &a.group);
    o.insert("time".into(), json!(rfc3339_ms(a.time)));
    o.insert("value".into(), number(a.value));
    o.insert("mean".into(), number(a.mean));
    o.insert("stddev".into(), number(a.stddev));
    o.insert("zscore".into(), number(a.zscore));
    o.insert("offset".into(), json!(a.offset));
    Value::Object(o)
}

/// A group gone silent (`state` = `silent`) or back (`back`), with when it was last heard.
pub fn silence(name: &str, keys: &[String], s: &SilenceReport) -> Value {
    let mut o = head(name, keys, &s.group);
    let state = match s.change {
        Change::Silent => "silent",
        Change::Back => "back",
    };
    o.insert("state".into(), json!(state));
    o.insert("last_seen".into(), json!(rfc3339_ms(s.last_arrival)));
    o.insert("last_event_time".into(), json!(rfc3339_ms(s.last_time)));
    Value::Object(o)
}

/// Builds the body of `r` for the insight `name`, whose group keys are `keys` (in
/// `group_by` order) and aggregates `aggregates` (name and function, in order). Written
/// as text directly, in that order: a result is made for every window of every group, and
/// building a `Value` first cost a third of the operator's time.
pub fn body(
    name: &str,
    keys: &[String],
    aggregates: &[(String, AggFn)],
    r: &WindowResult,
) -> String {
    let group: Vec<Value> = serde_json::from_str(&r.group).unwrap_or_default();
    let mut out = Vec::with_capacity(128 + 24 * (keys.len() + aggregates.len()));
    out.extend_from_slice(b"{\"insight\":");
    put(&mut out, name);
    for (i, k) in keys.iter().enumerate() {
        out.push(b',');
        put(&mut out, k);
        out.push(b':');
        put(&mut out, group.get(i).unwrap_or(&Value::Null));
    }
    out.extend_from_slice(b",\"window_start\":");
    put(&mut out, &rfc3339_ms(r.start));
    out.extend_from_slice(b",\"window_end\":");
    put(&mut out, &rfc3339_ms(r.end));
    for ((agg, func), v) in aggregates.iter().zip(&r.values) {
        out.push(b',');
        put(&mut out, agg);
        out.push(b':');
        match (func, v) {
            (_, None) => out.extend_from_slice(b"null"),
            (AggFn::Count, Some(n)) => put(&mut out, &(*n as u64)),
            (_, Some(x)) => put(&mut out, &number(*x)),
        }
    }
    out.extend_from_slice(b",\"revision\":");
    put(&mut out, &r.revision);
    out.push(b'}');
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `v` as JSON (strings escaped).
fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing to a Vec cannot fail, and these values always serialize.
    let _ = serde_json::to_writer(out, v);
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
        let text = body(
            "temp_1m",
            &["device".into(), "site".into()],
            &[
                ("n".into(), AggFn::Count),
                ("avg_temp".into(), AggFn::Avg),
                ("sd".into(), AggFn::Stddev),
            ],
            &r,
        );
        let b: Value = serde_json::from_str(&text).expect("json");
        assert!(text.starts_with(r#"{"insight":"temp_1m","device":"m1","site":"north","#));
        assert_eq!(
            b,
            json!({"insight": "temp_1m", "window_start": "2026-11-30T01:02:00.000Z",
                   "window_end": "2026-11-30T01:03:00.000Z", "device": "m1", "site": "north",
                   "n": 3, "avg_temp": 21.25, "sd": null, "revision": 2})
        );
        assert!(b["n"].is_u64(), "a count is an integer");
    }
}
