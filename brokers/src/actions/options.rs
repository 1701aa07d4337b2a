//! The options of `method` and `c2d` endpoints in rules files, and their checks.
//!
//! ```toml
//! [[endpoint]]
//! name = "stop"
//! type = "method"
//! method = "shutdown"                  # a template
//! target = "{deviceId}"                # optional: the device that sent the message
//! payload = { reason = "overheat", temp = "{body.temp}" }   # optional: the body
//! timeout_secs = 10                    # optional: how long the device has to answer
//!
//! [[endpoint]]
//! name = "notify"
//! type = "c2d"
//! target = "{app.controller}"
//! payload = { alarm = "{body.temp}" }
//! timeout_secs = 3600                  # optional: how long the message waits for its device
//! ```

use serde_json::{Map, Value};
use weir_core::{ActionOptions, EndpointKind, OptionError};

use super::payload::Payload;
use crate::string_option as string;
use crate::template::{PLACEHOLDERS, Template};

fn template(key: &str, v: &Value) -> Result<String, OptionError> {
    let t = string(key, v)?;
    Template::parse(t).map_err(|m| {
        OptionError::new(
            Some(key),
            m,
            Some(format!("placeholders are {PLACEHOLDERS}")),
        )
    })?;
    Ok(t.to_owned())
}

fn read(
    kind: &str,
    map: &Map<String, Value>,
    allowed: &[&str],
    timeout: (u32, u32),
) -> Result<ActionOptions, OptionError> {
    let mut o = ActionOptions {
        target: "{deviceId}".into(),
        method: String::new(),
        payload: None,
        timeout_secs: timeout.0,
    };
    for (key, value) in map {
        match key.as_str() {
            k if !allowed.contains(&k) => {
                return Err(OptionError::new(
                    Some(key),
                    format!("unknown option `{key}` for a {kind} endpoint"),
                    Some(format!("{kind} endpoints take `{}`", allowed.join("`, `"))),
                ));
            }
            "target" => o.target = template(key, value)?,
            "method" => {
                o.method = template(key, value)?;
                if o.method.is_empty() || o.method.contains(['/', '#', '+', '?']) {
                    return Err(OptionError::new(
                        Some(key),
                        "method must be a name without / # + ?",
                        None,
                    ));
                }
            }
            "payload" => {
                Payload::parse(value).map_err(|m| {
                    OptionError::new(
                        Some(key),
                        m,
                        Some(format!(
                            "strings may use {PLACEHOLDERS}, or be exactly {{body}} or {{body.PATH}}"
                        )),
                    )
                })?;
                o.payload = Some(value.to_string());
            }
            "timeout_secs" => {
                o.timeout_secs = value
                    .as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .filter(|t| (1..=timeout.1).contains(t))
                    .ok_or_else(|| {
                        OptionError::new(
                            Some(key),
                            format!("timeout_secs must be 1 to {}", timeout.1),
                            None,
                        )
                    })?;
            }
            _ => {}
        }
    }
    Ok(o)
}

/// Reads and checks a `method` endpoint's options.
pub fn method_options(map: &Map<String, Value>) -> Result<EndpointKind, OptionError> {
    let o = read(
        super::METHOD,
        map,
        &["method", "target", "payload", "timeout_secs"],
        (10, 300),
    )?;
    if o.method.is_empty() {
        return Err(OptionError::new(
            None,
            "a method endpoint needs `method`, the direct method to invoke",
            Some("add method = \"shutdown\"".into()),
        ));
    }
    Ok(EndpointKind::Method(o))
}

/// Reads and checks a `c2d` endpoint's options.
pub fn c2d_options(map: &Map<String, Value>) -> Result<EndpointKind, OptionError> {
    let o = read(
        super::C2D,
        map,
        &["target", "payload", "timeout_secs"],
        (3600, 48 * 3600),
    )?;
    Ok(EndpointKind::C2d(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        f: fn(&Map<String, Value>) -> Result<EndpointKind, OptionError>,
        j: &str,
    ) -> Result<EndpointKind, OptionError> {
        f(&serde_json::from_str(j).expect("json"))
    }

    #[test]
    fn checks_options_naming_the_key() {
        let k = parse(
            method_options,
            r#"{"method": "stop", "payload": {"t": "{body.temp}"}}"#,
        )
        .expect("valid");
        let o = k.action().expect("action");
        assert_eq!((o.target.as_str(), o.timeout_secs), ("{deviceId}", 10));
        assert!(parse(method_options, "{}").is_err_and(|e| e.message.contains("method")));
        assert!(
            parse(method_options, r#"{"method": "a/b"}"#)
                .is_err_and(|e| e.key.as_deref() == Some("method"))
        );
        assert!(parse(method_options, r#"{"method": "m", "timeout_secs": 0}"#).is_err());
        assert!(
            parse(method_options, r#"{"method": "m", "payload": "{nope}"}"#)
                .is_err_and(|e| e.key.as_deref() == Some("payload"))
        );
        assert!(
            parse(c2d_options, r#"{"method": "m"}"#)
                .is_err_and(|e| e.key.as_deref() == Some("method"))
        );
        assert!(parse(c2d_options, r#"{"target": "{app.to}", "timeout_secs": 60}"#).is_ok());
    }
}
