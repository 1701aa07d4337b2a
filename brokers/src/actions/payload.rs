//! Payloads of actions: JSON whose strings are templates, so that a rules file can say
//! `payload = { reason = "overheat", temp = "{body.temp}", by = "{deviceId}" }`.
//!
//! A string that is exactly `{body}` or `{body.PATH}` becomes the message body's value
//! there (a number stays a number; `null` when absent or when the body is not JSON). Any
//! other string is a [`Template`] rendered as text.

use serde_json::{Map, Value};
use weir_core::Delivery;

use crate::template::Template;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Literal(Value),
    Text(Template),
    Body(Vec<String>),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

/// A parsed payload template.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload(Node);

impl Payload {
    pub fn parse(v: &Value) -> Result<Payload, String> {
        node(v).map(Payload)
    }

    /// The payload for `d` sent to `endpoint`.
    pub fn render(&self, d: &Delivery, endpoint: &str) -> Value {
        let mut body = None;
        render(&self.0, d, endpoint, &mut body)
    }
}

fn node(v: &Value) -> Result<Node, String> {
    Ok(match v {
        Value::String(s) => {
            let inner = s.strip_prefix('{').and_then(|r| r.strip_suffix('}'));
            match inner {
                Some("body") => Node::Body(Vec::new()),
                Some(p) if p.starts_with("body.") => {
                    let path: Vec<String> =
                        p["body.".len()..].split('.').map(str::to_owned).collect();
                    if path.iter().any(String::is_empty) {
                        return Err(format!("{s:?} is not a body path like {{body.temp}}"));
                    }
                    Node::Body(path)
                }
                _ if s.contains(['{', '}']) => Node::Text(Template::parse(s)?),
                _ => Node::Literal(v.clone()),
            }
        }
        Value::Array(a) => Node::Array(a.iter().map(node).collect::<Result<_, _>>()?),
        Value::Object(o) => Node::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), node(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => Node::Literal(other.clone()),
    })
}

fn render(n: &Node, d: &Delivery, endpoint: &str, body: &mut Option<Value>) -> Value {
    match n {
        Node::Literal(v) => v.clone(),
        Node::Text(t) => {
            let mut out = String::new();
            t.render(d, endpoint, &mut out);
            Value::String(out)
        }
        Node::Body(path) => {
            let b = body.get_or_insert_with(|| {
                serde_json::from_slice(&d.event.body).unwrap_or(Value::Null)
            });
            path.iter()
                .try_fold(&*b, |v, k| match v {
                    Value::Object(o) => o.get(k),
                    Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                })
                .cloned()
                .unwrap_or(Value::Null)
        }
        Node::Array(a) => Value::Array(a.iter().map(|x| render(x, d, endpoint, body)).collect()),
        Node::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), render(v, d, endpoint, body)))
                .collect::<Map<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {

    use bytes::Bytes;
    use serde_json::json;
    use weir_core::{DeviceId, Event};

    use super::*;

    fn delivery(body: &'static [u8]) -> Delivery {
        let e = Event::telemetry(
            DeviceId::parse("m7").expect("id"),
            0,
            Bytes::from_static(body),
        );
        Delivery::plain(e, "hot")
    }

    #[test]
    fn fills_body_values_with_their_types_and_texts_from_templates() {
        let p = Payload::parse(&json!({
            "reason": "overheat", "temp": "{body.temp}", "by": "{deviceId} via {route}",
            "first": "{body.readings.0}", "missing": "{body.nope}", "all": ["{body}"]
        }))
        .expect("valid");
        let d = delivery(br#"{"temp": 81.5, "readings": [3, 4]}"#);
        assert_eq!(
            p.render(&d, "stop"),
            json!({"reason": "overheat", "temp": 81.5, "by": "m7 via hot", "first": 3,
                   "missing": null, "all": [{"temp": 81.5, "readings": [3, 4]}]})
        );
        assert_eq!(
            p.render(&delivery(b"not json"), "stop")["temp"],
            Value::Null
        );
    }

    #[test]
    fn refuses_bad_paths_and_placeholders() {
        assert!(Payload::parse(&json!("{body.}")).is_err());
        assert!(Payload::parse(&json!({"a": "{nope}"})).is_err());
        assert_eq!(
            Payload::parse(&json!(7))
                .expect("ok")
                .render(&delivery(b""), "e"),
            json!(7)
        );
    }
}
