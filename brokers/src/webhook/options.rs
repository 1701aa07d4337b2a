//! A webhook endpoint's options in rules files, and their checks.
//!
//! ```toml
//! [[endpoint]]
//! name = "tickets"
//! type = "webhook"
//! url = "https://ops.example.com/weir"   # http:// or https:// (with ca)
//! secret = "a long random string"        # signs every request (X-Weir-Signature)
//! max_batch = 500                        # messages per request
//! max_batch_bytes = 1048576              # bytes per request
//! max_delay_ms = 200                     # how long a partial batch waits
//! ca = "/etc/weir/ops-ca.pem"            # https only
//! ```

use serde_json::{Map, Value};
use weir_core::{EndpointKind, OptionError, Secret, SecretUrl, WebhookOptions};

use crate::string_option as string;

const OPTIONS: [&str; 6] = [
    "url",
    "secret",
    "max_batch",
    "max_batch_bytes",
    "max_delay_ms",
    "ca",
];

/// The parts of a webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

/// Parses `http[s]://host[:port][/path][?query]` (no user info: the secret signs).
pub fn parse_url(url: &str) -> Result<Url, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("must start with http:// or https://".into());
    };
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    if authority.contains('@') {
        return Err("credentials do not go in a webhook URL; use `secret`".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a number"))?,
        ),
        _ => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() || target.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("no host, or spaces in the path".into());
    }
    Ok(Url {
        tls,
        host: host.to_owned(),
        port,
        target,
    })
}

fn number(key: &str, v: &Value, min: u64, max: u64) -> Result<u64, OptionError> {
    v.as_u64()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            OptionError::new(
                Some(key),
                format!("{key} must be a whole number from {min} to {max}"),
                None,
            )
        })
}

/// Reads and checks a webhook endpoint's options.
pub fn options(map: &Map<String, Value>) -> Result<EndpointKind, OptionError> {
    let mut o = WebhookOptions {
        url: SecretUrl::new(""),
        secret: Secret::new(""),
        max_batch: 500,
        max_batch_bytes: 1 << 20,
        max_delay_ms: 200,
        ca: None,
    };
    let mut tls = false;
    let mut have_url = false;
    for (key, value) in map {
        match key.as_str() {
            "url" => {
                let u = string(key, value)?;
                tls = parse_url(u)
                    .map_err(|m| {
                        OptionError::new(
                            Some(key),
                            format!("not a webhook URL: {m}"),
                            Some("for example https://ops.example.com/weir".into()),
                        )
                    })?
                    .tls;
                o.url = SecretUrl::new(u);
                have_url = true;
            }
            "secret" => {
                let s = string(key, value)?;
                if s.len() < 16 {
                    return Err(OptionError::new(
                        Some(key),
                        "secret must have at least 16 characters",
                        Some("use a long random string, e.g. `openssl rand -hex 32`".into()),
                    ));
                }
                o.secret = Secret::new(s);
            }
            "max_batch" => o.max_batch = number(key, value, 1, 100_000)? as u32,
            "max_batch_bytes" => o.max_batch_bytes = number(key, value, 1024, 64 << 20)? as u32,
            "max_delay_ms" => o.max_delay_ms = number(key, value, 0, 60_000)? as u32,
            "ca" => o.ca = Some(string(key, value)?.to_owned()),
            other => {
                return Err(OptionError::new(
                    Some(key),
                    format!("unknown option `{other}` for a webhook endpoint"),
                    Some(format!(
                        "webhook endpoints take `{}` (and `columns`, which they ignore)",
                        OPTIONS.join("`, `")
                    )),
                ));
            }
        }
    }
    if !have_url {
        return Err(OptionError::new(
            None,
            "a webhook endpoint needs `url`",
            None,
        ));
    }
    if o.secret.expose().is_empty() {
        return Err(OptionError::new(
            None,
            "a webhook endpoint needs `secret`: every request is signed with it",
            Some("add secret = \"...\" (at least 16 characters)".into()),
        ));
    }
    if tls && o.ca.is_none() {
        return Err(OptionError::new(
            Some("url"),
            "an https:// webhook needs `ca`, the PEM file of the receiver's CA",
            None,
        ));
    }
    Ok(EndpointKind::Webhook(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_checks_options() {
        assert_eq!(
            parse_url("http://127.0.0.1:9000/hook?x=1"),
            Ok(Url {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9000,
                target: "/hook?x=1".into(),
            })
        );
        assert_eq!(
            parse_url("https://h").map(|u| (u.port, u.target)),
            Ok((443, "/".into()))
        );
        assert!(parse_url("http://u:p@h/").is_err());
        assert!(parse_url("ftp://h").is_err());
        let parse = |j: &str| options(&serde_json::from_str(j).expect("json"));
        assert!(parse(r#"{"url": "http://h/x", "secret": "0123456789abcdef"}"#).is_ok());
        assert!(parse(r#"{"url": "http://h/x"}"#).is_err_and(|e| e.message.contains("secret")));
        assert!(parse(r#"{"url": "http://h/x", "secret": "short"}"#).is_err());
        assert!(parse(r#"{"url": "https://h/x", "secret": "0123456789abcdef"}"#).is_err());
        assert!(
            parse(r#"{"url": "http://h", "secret": "0123456789abcdef", "max_batch": 0}"#)
                .is_err_and(|e| e.key.as_deref() == Some("max_batch"))
        );
    }
}
