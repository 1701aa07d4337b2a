//! IoT Hub topics and the property bag (spec §2.4).

use std::collections::HashSet;

use percent_encoding::percent_decode_str;
use weir_core::SystemProperties;

/// Why a property bag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BagError {
    #[error("property {0:?} is not valid percent-encoded UTF-8")]
    BadEncoding(String),
    #[error("property key is empty")]
    EmptyKey,
    #[error("property {0:?} appears twice")]
    Duplicate(String),
}

/// What a device may publish to, once the topic is checked against its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceTopic<'a> {
    /// `devices/{device}/messages/events/{bag}`
    Telemetry { device: &'a str, bag: &'a str },
}

/// Parses a telemetry topic, for whichever device it names.
pub fn telemetry(topic: &str) -> Option<DeviceTopic<'_>> {
    let rest = topic.strip_prefix("devices/")?;
    let (device, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("messages/events")?;
    let bag = match rest {
        "" => "",
        r => r.strip_prefix('/')?,
    };
    // Some clients put '?' before the bag.
    let bag = bag.strip_prefix('?').unwrap_or(bag);
    Some(DeviceTopic::Telemetry { device, bag })
}

/// Classifies `topic` for the connected `device_id`; `None` means the device may not
/// publish there.
pub fn classify<'a>(topic: &'a str, device_id: &str) -> Option<DeviceTopic<'a>> {
    telemetry(topic).filter(|DeviceTopic::Telemetry { device, .. }| *device == device_id)
}

/// Encodes a property bag: every key and value percent-encoded but for unreserved
/// characters, as the device SDK writes it and [`decode_bag`] reads it.
pub fn encode_bag<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const BAG: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let mut bag = String::new();
    for (k, v) in pairs {
        if !bag.is_empty() {
            bag.push('&');
        }
        bag.extend(utf8_percent_encode(k, BAG));
        bag.push('=');
        bag.extend(utf8_percent_encode(v, BAG));
    }
    bag
}

/// Decodes a property bag: `&`-separated `key=value` pairs, percent-encoded (not form
/// encoded: `+` stays `+`). Returns system properties and application properties.
pub fn decode_bag(bag: &str) -> Result<(SystemProperties, Vec<(String, String)>), BagError> {
    let mut sys = SystemProperties::default();
    let mut app: Vec<(String, String)> = Vec::new();
    // Keys compared case-insensitively, as IoT Hub does: a scan for the usual handful, a
    // set once there are many (a bag may carry thousands, and this runs on the I/O task).
    let mut seen: HashSet<String> = HashSet::new();
    if bag.is_empty() {
        return Ok((sys, app));
    }
    for pair in bag.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        let value = decode(v)?;
        if key.is_empty() {
            return Err(BagError::EmptyKey);
        }
        let slot = match key.as_str() {
            "$.mid" => Some(&mut sys.message_id),
            "$.cid" => Some(&mut sys.correlation_id),
            "$.ct" => Some(&mut sys.content_type),
            "$.ce" => Some(&mut sys.content_encoding),
            "$.uid" => Some(&mut sys.user_id),
            "$.on" => Some(&mut sys.output_name),
            "$.schema" => Some(&mut sys.dt_dataschema),
            "$.sub" => Some(&mut sys.dt_subject),
            "iothub-creation-time-utc" => Some(&mut sys.creation_time_utc),
            _ => None,
        };
        match slot {
            Some(s) if s.is_some() => return Err(BagError::Duplicate(key)),
            Some(s) => *s = Some(value.into_boxed_str()),
            None if repeated(&app, &mut seen, &key) => return Err(BagError::Duplicate(key)),
            None => app.push((key, value)),
        }
    }
    Ok((sys, app))
}

/// True when `key` is already among `app`'s keys, ignoring case.
fn repeated(app: &[(String, String)], seen: &mut HashSet<String>, key: &str) -> bool {
    const SCAN: usize = 8;
    if app.len() < SCAN {
        return app.iter().any(|(k, _)| k.eq_ignore_ascii_case(key));
    }
    if seen.is_empty() {
        seen.extend(app.iter().map(|(k, _)| k.to_ascii_lowercase()));
    }
    !seen.insert(key.to_ascii_lowercase())
}

fn decode(s: &str) -> Result<String, BagError> {
    if s.contains('%') && !well_formed_escapes(s) {
        return Err(BagError::BadEncoding(s.to_owned()));
    }
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| BagError::BadEncoding(s.to_owned()))
}

/// `percent_decode` passes malformed escapes through; IoT Hub rejects them.
fn well_formed_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_sdk_wire_example() {
        let topic = "devices/dev1/messages/events/%24.mid=062c&%24.cid=probe-0&%24.ct=application%2Fjson&%24.ce=utf-8&iothub-creation-time-utc=2026-11-26T17%3A34%3A09.223328Z&probeName=sdk%20probe%2F1&seq=0&temperatureAlert=false";
        let Some(DeviceTopic::Telemetry { bag, .. }) = classify(topic, "dev1") else {
            panic!("telemetry topic");
        };
        let (sys, app) = decode_bag(bag).expect("decodes");
        assert_eq!(sys.message_id.as_deref(), Some("062c"));
        assert_eq!(sys.correlation_id.as_deref(), Some("probe-0"));
        assert_eq!(sys.content_type.as_deref(), Some("application/json"));
        assert_eq!(sys.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(
            sys.creation_time_utc.as_deref(),
            Some("2026-11-26T17:34:09.223328Z")
        );
        assert_eq!(
            app,
            vec![
                ("probeName".to_string(), "sdk probe/1".to_string()),
                ("seq".to_string(), "0".to_string()),
                ("temperatureAlert".to_string(), "false".to_string()),
            ]
        );
    }

    #[test]
    fn enforces_the_device_own_topic() {
        assert!(classify("devices/dev1/messages/events/", "dev1").is_some());
        assert!(classify("devices/dev1/messages/events", "dev1").is_some());
        assert!(classify("devices/dev1/messages/events/?a=b", "dev1").is_some());
        assert!(classify("devices/dev2/messages/events/", "dev1").is_none());
        assert!(classify("devices/dev10/messages/events/", "dev1").is_none());
        assert!(classify("devices/dev1/messages/eventsX", "dev1").is_none());
        assert!(classify("$iothub/twin/GET/?$rid=1", "dev1").is_none());
    }

    #[test]
    fn plus_is_not_space_and_bad_escapes_fail() {
        let (_, app) = decode_bag("a=1+1&b").expect("ok");
        assert_eq!(
            app,
            vec![("a".into(), "1+1".into()), ("b".into(), "".into())]
        );
        assert!(decode_bag("a=%zz").is_err());
        assert!(decode_bag("a=%4").is_err());
        assert!(decode_bag("a=%ff").is_err());
        assert!(decode_bag("a=1&A=2").is_err());
    }

    #[test]
    fn many_properties_decode_and_a_late_duplicate_is_found() {
        let mut bag: Vec<String> = (0..20_000).map(|i| format!("key{i}=v")).collect();
        let (_, app) = decode_bag(&bag.join("&")).expect("distinct keys");
        assert_eq!(app.len(), 20_000);
        bag.push("KEY7=again".into());
        assert_eq!(
            decode_bag(&bag.join("&")),
            Err(BagError::Duplicate("KEY7".into()))
        );
    }
}
