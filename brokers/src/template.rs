//! Templates for routing keys and topics: literal text with `{placeholder}`s filled from
//! each delivery.
//!
//! | placeholder | value |
//! |---|---|
//! | `{deviceId}` | the device id |
//! | `{moduleId}` | the module id, empty for a device |
//! | `{route}` | the route that sent the message (`$fallback` for fallback endpoints) |
//! | `{endpoint}` | the endpoint's name |
//! | `{source}` | the event source (`DeviceMessages`, `TwinChangeEvents`, ...) |
//! | `{app.NAME}` | the application property NAME (case-insensitive), empty when absent |
//!
//! Application properties are namespaced (`app.`) so that a misspelt placeholder is an
//! error in `weir rules check`, not an empty word at run time.

use weir_core::Delivery;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    DeviceId,
    ModuleId,
    Route,
    Endpoint,
    Source,
    App(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

/// The placeholders a template may use, for error messages.
pub const PLACEHOLDERS: &str = "{deviceId}, {moduleId}, {route}, {endpoint}, {source}, {app.NAME}";

impl Template {
    pub fn parse(t: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            let text = &rest[..open];
            if text.contains('}') {
                return Err(format!("stray '}}' in template {t:?}"));
            }
            if !text.is_empty() {
                parts.push(Part::Text(text.to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in template {t:?}"))?;
            let name = &rest[open + 1..open + close];
            parts.push(match name {
                "deviceId" => Part::DeviceId,
                "moduleId" => Part::ModuleId,
                "route" => Part::Route,
                "endpoint" => Part::Endpoint,
                "source" => Part::Source,
                _ => match name.strip_prefix("app.") {
                    Some(prop) if !prop.is_empty() => Part::App(prop.to_owned()),
                    _ => return Err(format!("unknown placeholder {{{name}}}")),
                },
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray '}}' in template {t:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template(parts))
    }

    /// Fills the template for `d` sent to `endpoint`, into `out` (cleared first).
    pub fn render(&self, d: &Delivery, endpoint: &str, out: &mut String) {
        out.clear();
        let e = &d.event;
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::DeviceId => out.push_str(e.device_id.as_str()),
                Part::ModuleId => out.push_str(e.module_id.as_deref().unwrap_or_default()),
                Part::Route => out.push_str(&d.route),
                Part::Endpoint => out.push_str(endpoint),
                Part::Source => out.push_str(e.source.as_str()),
                Part::App(name) => out.push_str(e.property(name).unwrap_or_default()),
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use bytes::Bytes;
    use weir_core::{Delivery, DeviceId, Event};

    use super::*;

    #[test]
    fn fills_placeholders_and_refuses_unknown_ones() {
        let mut e = Event::telemetry(DeviceId::parse("dev1").expect("id"), 0, Bytes::new());
        e.properties.push(("Kind".into(), "alarm".into()));
        let d = Delivery::plain(e, "hot");
        let t = Template::parse("{route}.{deviceId}.{app.kind}.{app.none}!{endpoint}").expect("ok");
        let mut out = String::new();
        t.render(&d, "alerts", &mut out);
        assert_eq!(out, "hot.dev1.alarm.!alerts");
        assert!(Template::parse("{device}").is_err_and(|e| e.contains("unknown placeholder")));
        assert!(Template::parse("{app.}").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{route").is_err());
        assert_eq!(Template::parse("plain").expect("ok").0.len(), 1);
    }
}
