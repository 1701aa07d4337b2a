//! An AMQP endpoint's options in rules files, and their checks.
//!
//! ```toml
//! [[endpoint]]
//! name = "alerts"
//! type = "amqp"
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"
//! exchange = "weir.alerts"            # a durable topic exchange, declared if missing
//! routing_key = "{route}.{deviceId}"  # optional; see crate::template
//! mandatory = true                    # optional; see AmqpOptions::mandatory
//! ```

use std::str::FromStr;

use serde_json::{Map, Value};
use weir_core::{AmqpOptions, EndpointKind, OptionError, SecretUrl};

use crate::string_option as string;
use crate::template::{PLACEHOLDERS, Template};

const OPTIONS: [&str; 4] = ["url", "exchange", "routing_key", "mandatory"];

/// The routing key when an endpoint names none.
pub const DEFAULT_ROUTING_KEY: &str = "{route}.{deviceId}";

/// Reads and checks an AMQP endpoint's options.
pub fn options(map: &Map<String, Value>) -> Result<EndpointKind, OptionError> {
    let mut url = None;
    let mut exchange = None;
    let mut routing_key = DEFAULT_ROUTING_KEY.to_owned();
    let mut mandatory = true;
    for (key, value) in map {
        match key.as_str() {
            "url" => {
                let u = string(key, value)?;
                amq_protocol_uri::AMQPUri::from_str(u).map_err(|e| {
                    OptionError::new(
                        Some(key),
                        format!("not an AMQP URL: {e}"),
                        Some("for example amqp://user:password@127.0.0.1:5672/%2f".into()),
                    )
                })?;
                url = Some(SecretUrl::new(u));
            }
            "exchange" => {
                let x = string(key, value)?;
                if x.is_empty() || x.len() > 255 || x.starts_with("amq.") {
                    return Err(OptionError::new(
                        Some(key),
                        format!("exchange {x:?} cannot be declared"),
                        Some(
                            "name a topic exchange of 1 to 255 bytes not starting with amq.".into(),
                        ),
                    ));
                }
                exchange = Some(x.to_owned());
            }
            "routing_key" => {
                let t = string(key, value)?;
                Template::parse(t).map_err(|m| {
                    OptionError::new(
                        Some(key),
                        m,
                        Some(format!("placeholders are {PLACEHOLDERS}")),
                    )
                })?;
                t.clone_into(&mut routing_key);
            }
            "mandatory" => {
                mandatory = value.as_bool().ok_or_else(|| {
                    OptionError::new(Some(key), "mandatory must be true or false", None)
                })?;
            }
            other => {
                return Err(OptionError::new(
                    Some(key),
                    format!("unknown option `{other}` for an amqp endpoint"),
                    Some(format!(
                        "amqp endpoints take `{}` (and `columns`, which they ignore)",
                        OPTIONS.join("`, `")
                    )),
                ));
            }
        }
    }
    let missing = |k: &str| {
        OptionError::new(
            None,
            format!("an amqp endpoint needs `{k}`"),
            Some(format!("add {k} = \"...\"")),
        )
    };
    Ok(EndpointKind::Amqp(AmqpOptions {
        url: url.ok_or_else(|| missing("url"))?,
        exchange: exchange.ok_or_else(|| missing("exchange"))?,
        routing_key,
        mandatory,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<EndpointKind, OptionError> {
        options(&serde_json::from_str(json).expect("json"))
    }

    #[test]
    fn reads_and_checks_options() {
        let k = parse(r#"{"url": "amqp://u:p@127.0.0.1:5672/%2f", "exchange": "weir.x"}"#)
            .expect("valid");
        let o = k.amqp().expect("amqp");
        assert_eq!(o.routing_key, DEFAULT_ROUTING_KEY);
        assert!(o.mandatory);
        assert_eq!(o.url.to_string(), "amqp://u:***@127.0.0.1:5672/%2f");
        let bad_url = parse(r#"{"url": "http://x", "exchange": "e"}"#).expect_err("bad url");
        assert_eq!(bad_url.key.as_deref(), Some("url"));
        let bad_key = parse(r#"{"url": "amqp://h", "exchange": "e", "routing_key": "{dev}"}"#)
            .expect_err("placeholder");
        assert_eq!(bad_key.key.as_deref(), Some("routing_key"));
        assert!(bad_key.message.contains("unknown placeholder {dev}"));
        assert!(parse(r#"{"url": "amqp://h"}"#).is_err_and(|e| e.message.contains("exchange")));
        assert!(parse(r#"{"url": "amqp://h", "exchange": "amq.topic"}"#).is_err());
        assert!(
            parse(r#"{"url": "amqp://h", "exchange": "e", "path": "x"}"#)
                .is_err_and(|e| e.message.contains("unknown option `path`"))
        );
    }
}
