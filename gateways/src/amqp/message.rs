//! What the AMQP gateway makes of one message taken from a queue: which device sent it
//! (a SAS token in the `authorization` header, or the broker-validated `user_id`), and
//! the event it becomes. No I/O: tested without a broker.

use std::sync::Arc;

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use weir_core::{AuthMethod, DeviceDirectory, DeviceId, DeviceStatus, Event, SystemProperties};

use crate::mqtt::connect::verify_device;
use crate::sas;

/// The header that carries a device's SAS token.
pub const AUTHORIZATION: &str = "authorization";
/// The header a refused message carries to the dead-letter exchange.
pub const REASON: &str = "weir-refused-reason";

const MAX_HEADERS: usize = 64;
const MAX_KEY: usize = 128;
const MAX_VALUE: usize = 4096;

/// How messages are told apart and what they may be.
pub struct Rules<'a> {
    pub hub: &'a str,
    pub directory: &'a dyn DeviceDirectory,
    pub trust_user_id: bool,
    pub max_message_bytes: usize,
}

fn scalar(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        _ => return None,
    })
}

/// The headers as application properties (the token excluded), checked against limits.
fn properties(headers: Option<&FieldTable>) -> Result<Vec<(String, String)>, String> {
    let Some(h) = headers else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (k, v) in h.inner() {
        let key = k.as_str();
        if key.eq_ignore_ascii_case(AUTHORIZATION) {
            continue;
        }
        let value = scalar(v).ok_or_else(|| {
            format!("header {key:?} is not a scalar (tables, arrays and byte arrays cannot be properties)")
        })?;
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(format!(
                "header {key:?} exceeds {MAX_KEY} bytes of name or {MAX_VALUE} bytes of value"
            ));
        }
        out.push((key.to_owned(), value));
    }
    if out.len() > MAX_HEADERS {
        return Err(format!(
            "{} headers; at most {MAX_HEADERS} become properties",
            out.len()
        ));
    }
    Ok(out)
}

fn token(headers: Option<&FieldTable>) -> Option<String> {
    let h = headers?;
    h.inner()
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(AUTHORIZATION))
        .and_then(|(_, v)| scalar(v))
}

/// The device a SAS token's resource (`{hub}/devices/{id}`) names.
fn token_device<'t>(resource: &'t str, hub: &str) -> Result<&'t str, String> {
    let (host, rest) = resource
        .split_once('/')
        .ok_or_else(|| format!("token resource {resource:?} is not {hub}/devices/{{deviceId}}"))?;
    if !host.eq_ignore_ascii_case(hub) {
        return Err(format!("token is for hub {host:?}, this hub is {hub:?}"));
    }
    rest.strip_prefix("devices/")
        .filter(|d| !d.is_empty() && !d.contains('/'))
        .ok_or_else(|| {
            format!(
                "token resource {resource:?} names no single device ({hub}/devices/{{deviceId}})"
            )
        })
}

/// The event one AMQP message becomes, or why it is refused (for the dead-letter header
/// and the log: never the token).
pub fn to_event(
    props: &BasicProperties,
    body: &[u8],
    redelivered: bool,
    rules: &Rules<'_>,
    now_secs: i64,
) -> Result<Event, String> {
    if body.len() > rules.max_message_bytes {
        return Err(format!(
            "body of {} bytes exceeds the limit of {} (mqtt.max_message_bytes)",
            body.len(),
            rules.max_message_bytes
        ));
    }
    let headers = props.headers().as_ref();
    let (device_id, generation, auth) = match token(headers) {
        Some(t) => {
            let parsed = sas::parse(&t).map_err(|e| format!("bad SAS token: {e}"))?;
            let device = token_device(&parsed.resource, rules.hub)?;
            let id = DeviceId::parse(device).map_err(|e| format!("invalid device id: {e}"))?;
            let identity = verify_device(id, &parsed, rules.hub, rules.directory, now_secs)
                .map_err(|r| r.reason)?;
            (identity.device_id, identity.generation_id, AuthMethod::Sas)
        }
        None => {
            let user = props
                .user_id()
                .as_ref()
                .filter(|_| rules.trust_user_id)
                .ok_or_else(|| {
                    format!(
                        "no `{AUTHORIZATION}` header with the device's SAS token{}",
                        if rules.trust_user_id {
                            " and no user_id"
                        } else {
                            " (or set amqp.trust_user_id to accept the broker-validated user_id)"
                        }
                    )
                })?;
            let id = DeviceId::parse(user.as_str())
                .map_err(|e| format!("user_id is not a device id: {e}"))?;
            let record = rules
                .directory
                .get(id.as_str())
                .ok_or_else(|| "device is not registered".to_owned())?;
            if record.status != DeviceStatus::Enabled {
                return Err("device is disabled".into());
            }
            (
                id,
                Arc::from(record.generation_id.as_str()),
                AuthMethod::BrokerUserId,
            )
        }
    };
    let s = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|x| Box::from(x.as_str()));
    let mut event = Event::telemetry(device_id, 0, Bytes::copy_from_slice(body));
    event.generation_id = Some(generation);
    event.auth_method = auth;
    event.gateway = Some(Arc::from(super::PROTOCOL));
    event.redelivered = redelivered;
    event.system = SystemProperties {
        message_id: s(props.message_id()),
        correlation_id: s(props.correlation_id()),
        content_type: s(props.content_type()),
        content_encoding: s(props.content_encoding()),
        user_id: s(props.user_id()),
        ..SystemProperties::default()
    };
    event.properties = properties(headers)?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use lapin::types::{LongString, ShortString};
    use weir_core::{DeviceAuth, DeviceRecord};

    use super::*;

    const KEY: &str = "YW1xcC1nYXRld2F5LXRlc3Qta2V5LTAxMjM0NTY3OA==";

    fn directory() -> HashMap<String, Arc<DeviceRecord>> {
        let mut on = DeviceRecord::with_tags("dev1", serde_json::json!({}));
        on.generation_id = "g1".into();
        on.auth = DeviceAuth::Sas {
            primary_key: KEY.into(),
            secondary_key: KEY.into(),
        };
        let mut off = on.clone();
        off.device_id = "off".into();
        off.status = DeviceStatus::Disabled;
        [("dev1".into(), Arc::new(on)), ("off".into(), Arc::new(off))].into()
    }

    fn props(token: Option<&str>, user: Option<&str>) -> BasicProperties {
        let mut h = FieldTable::default();
        if let Some(t) = token {
            h.insert(
                ShortString::from("authorization".to_owned()),
                AMQPValue::LongString(LongString::from(t.as_bytes().to_vec())),
            );
        }
        h.insert(
            ShortString::from("kind".to_owned()),
            AMQPValue::LongString(LongString::from(b"alarm".to_vec())),
        );
        h.insert(ShortString::from("n".to_owned()), AMQPValue::LongInt(7));
        let mut p = BasicProperties::default()
            .with_headers(h)
            .with_message_id(ShortString::from("m1".to_owned()))
            .with_content_type(ShortString::from("application/json".to_owned()));
        if let Some(u) = user {
            p = p.with_user_id(ShortString::from(u.to_owned()));
        }
        p
    }

    #[test]
    fn a_sas_header_names_and_proves_the_device() {
        let dir = directory();
        let rules = Rules {
            hub: "hub",
            directory: &dir,
            trust_user_id: false,
            max_message_bytes: 1024,
        };
        let good = sas::build("hub/devices/dev1", KEY, 2_000, None).expect("token");
        let e = to_event(&props(Some(&good), None), b"{}", false, &rules, 1_000).expect("accepted");
        assert_eq!(e.device_id.as_str(), "dev1");
        assert_eq!(e.auth_method, AuthMethod::Sas);
        assert_eq!(e.gateway.as_deref(), Some("amqp"));
        assert_eq!(e.system.message_id.as_deref(), Some("m1"));
        assert_eq!(e.property("kind"), Some("alarm"));
        assert_eq!(e.property("n"), Some("7"));
        assert_eq!(
            e.property("authorization"),
            None,
            "the token is not a property"
        );
        let refuse = |p: BasicProperties, body: &[u8], now| {
            to_event(&p, body, false, &rules, now).expect_err("refused")
        };
        assert!(refuse(props(Some(&good), None), b"{}", 2_001).contains("expired"));
        let other = sas::build("hub/devices/off", KEY, 2_000, None).expect("token");
        assert!(refuse(props(Some(&other), None), b"{}", 1_000).contains("disabled"));
        let wrong_hub = sas::build("elsewhere/devices/dev1", KEY, 2_000, None).expect("token");
        assert!(refuse(props(Some(&wrong_hub), None), b"{}", 1_000).contains("hub"));
        assert!(refuse(props(Some("nonsense"), None), b"{}", 1_000).contains("bad SAS token"));
        assert!(refuse(props(None, Some("dev1")), b"{}", 1_000).contains("trust_user_id"));
        assert!(refuse(props(Some(&good), None), &[0; 2048], 1_000).contains("exceeds"));
    }

    #[test]
    fn a_trusted_user_id_names_the_device() {
        let dir = directory();
        let rules = Rules {
            hub: "hub",
            directory: &dir,
            trust_user_id: true,
            max_message_bytes: 1024,
        };
        let e = to_event(&props(None, Some("dev1")), b"x", true, &rules, 1_000).expect("ok");
        assert_eq!(e.auth_method, AuthMethod::BrokerUserId);
        assert!(e.redelivered);
        assert_eq!(e.system.user_id.as_deref(), Some("dev1"));
        assert!(to_event(&props(None, Some("off")), b"x", false, &rules, 1_000).is_err());
        assert!(to_event(&props(None, Some("ghost")), b"x", false, &rules, 1_000).is_err());
    }
}
