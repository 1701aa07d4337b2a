//! An MQTT endpoint's options in rules files, and their checks.
//!
//! ```toml
//! [[endpoint]]
//! name = "line"
//! type = "mqtt"
//! url = "mqtt://user:password@127.0.0.1:1883"   # or mqtts://, with ca
//! topic = "weir/{route}/{deviceId}"             # optional; see crate::template
//! client_id = "weir-line"                       # optional; -w<worker> is appended
//! ca = "/etc/weir/broker-ca.pem"                # mqtts only
//! ```

use serde_json::{Map, Value};
use weir_core::{EndpointKind, MqttOptions, OptionError, SecretUrl};

use crate::string_option as string;
use crate::template::{PLACEHOLDERS, Template};

const OPTIONS: [&str; 4] = ["url", "topic", "client_id", "ca"];

/// The topic when an endpoint names none.
pub const DEFAULT_TOPIC: &str = "weir/{route}/{deviceId}";

/// The parts of an MQTT URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub login: Option<(String, String)>,
}

/// Parses `mqtt://[user[:password]@]host[:port][/]` (or `mqtts://`).
pub fn parse_url(url: &str) -> Result<Url, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err("must start with mqtt:// or mqtts://".into());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') {
        return Err("an MQTT URL has no path or query".into());
    }
    let (login, hostport) = match rest.rsplit_once('@') {
        Some((userinfo, hp)) => {
            let (u, p) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| "invalid percent-encoding in the credentials".to_owned())
            };
            (Some((decode(u)?, decode(p)?)), hp)
        }
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a number"))?,
        ),
        _ => (hostport, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok(Url {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        login,
    })
}

/// Reads and checks an MQTT endpoint's options.
pub fn options(map: &Map<String, Value>) -> Result<EndpointKind, OptionError> {
    let mut url = None;
    let mut tls = false;
    let mut topic = DEFAULT_TOPIC.to_owned();
    let mut client_id = None;
    let mut ca = None;
    for (key, value) in map {
        match key.as_str() {
            "url" => {
                let u = string(key, value)?;
                let parsed = parse_url(u).map_err(|m| {
                    OptionError::new(
                        Some(key),
                        format!("not an MQTT URL: {m}"),
                        Some("for example mqtt://user:password@127.0.0.1:1883".into()),
                    )
                })?;
                tls = parsed.tls;
                url = Some(SecretUrl::new(u));
            }
            "topic" => {
                let t = string(key, value)?;
                Template::parse(t).map_err(|m| {
                    OptionError::new(
                        Some(key),
                        m,
                        Some(format!("placeholders are {PLACEHOLDERS}")),
                    )
                })?;
                if t.contains(['+', '#']) {
                    return Err(OptionError::new(
                        Some(key),
                        "a topic to publish to cannot contain the wildcards + or #",
                        None,
                    ));
                }
                t.clone_into(&mut topic);
            }
            "client_id" => {
                let c = string(key, value)?;
                if c.is_empty() || c.len() > 64 {
                    return Err(OptionError::new(
                        Some(key),
                        "client_id must have 1 to 64 bytes",
                        None,
                    ));
                }
                client_id = Some(c.to_owned());
            }
            "ca" => ca = Some(string(key, value)?.to_owned()),
            other => {
                return Err(OptionError::new(
                    Some(key),
                    format!("unknown option `{other}` for an mqtt endpoint"),
                    Some(format!(
                        "mqtt endpoints take `{}` (and `columns`, which they ignore)",
                        OPTIONS.join("`, `")
                    )),
                ));
            }
        }
    }
    let url = url.ok_or_else(|| {
        OptionError::new(
            None,
            "an mqtt endpoint needs `url`",
            Some("add url = \"mqtt://127.0.0.1:1883\"".into()),
        )
    })?;
    if tls && ca.is_none() {
        return Err(OptionError::new(
            Some("url"),
            "an mqtts:// endpoint needs `ca`, the PEM file of the broker's CA",
            None,
        ));
    }
    Ok(EndpointKind::Mqtt(MqttOptions {
        url,
        topic,
        client_id,
        ca,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("mqtt://u:p%40ss@127.0.0.1:1884"),
            Ok(Url {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1884,
                login: Some(("u".into(), "p@ss".into())),
            })
        );
        assert_eq!(
            parse_url("mqtts://broker/").map(|u| (u.port, u.tls)),
            Ok((8883, true))
        );
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://h:notaport").is_err());
        assert!(parse_url("mqtt://h/path").is_err());
        assert!(parse_url("mqtt://").is_err());
    }

    #[test]
    fn checks_options() {
        let parse = |j: &str| options(&serde_json::from_str(j).expect("json"));
        let k = parse(r#"{"url": "mqtt://127.0.0.1:1883"}"#).expect("valid");
        assert_eq!(k.mqtt().map(|o| o.topic.as_str()), Some(DEFAULT_TOPIC));
        assert!(parse(r#"{"url": "mqtts://h"}"#).is_err_and(|e| e.message.contains("ca")));
        assert!(parse(r#"{"url": "mqtt://h", "topic": "a/+/b"}"#).is_err());
        assert!(
            parse(r#"{"url": "mqtt://h", "topic": "{nope}"}"#)
                .is_err_and(|e| e.key.as_deref() == Some("topic"))
        );
        assert!(parse(r#"{"url": "amqp://h"}"#).is_err_and(|e| e.key.as_deref() == Some("url")));
        assert!(parse(r#"{"topic": "x"}"#).is_err());
    }
}
