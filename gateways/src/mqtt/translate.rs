//! Protocol translation: plain MQTT clients that cannot speak the IoT Hub dialect (no SAS
//! token, their own topics) mapped onto registered device identities by `[[translate]]`
//! entries of weir.toml, so a legacy fleet appears on the hub as ordinary devices.
//!
//! A client logs in with the device id as its username and, as password, the entry's
//! password or one of the device's symmetric keys. It may then publish only on the
//! entry's topic pattern with its own id in the `{deviceId}` level: the same rule as for
//! every device (only its own topics), with another spelling.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use weir_core::{
    AuthMethod, Credential, DeviceDirectory, DeviceId, DeviceStatus, Identity, Role, Secret,
    key_digest,
};

use super::connect::Refusal;

/// One level of a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Text(String),
    DeviceId,
    /// `+`: any one level.
    Any,
}

/// How clients of an entry prove who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranslateAuth {
    /// The device's primary or secondary symmetric key, as the password.
    DeviceKey,
    /// This password, shared by the devices of the entry.
    Password(Secret),
}

/// A `[[translate]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    pub name: String,
    pattern: Vec<Level>,
    pub auth: TranslateAuth,
}

impl Translation {
    /// Parses a topic pattern such as `plant/{deviceId}/telemetry`: levels of text, `+`,
    /// and exactly one `{deviceId}`.
    pub fn new(name: &str, topic: &str, auth: TranslateAuth) -> Result<Translation, String> {
        let mut pattern = Vec::new();
        for level in topic.split('/') {
            pattern.push(match level {
                "{deviceId}" => Level::DeviceId,
                "+" => Level::Any,
                l if l.contains(['{', '}', '+', '#', '\0']) => {
                    return Err(format!(
                        "level {l:?}: a pattern's levels are text, + or {{deviceId}}"
                    ));
                }
                l => Level::Text(l.to_owned()),
            });
        }
        if pattern.iter().filter(|l| **l == Level::DeviceId).count() != 1 {
            return Err("the pattern needs exactly one {deviceId} level".into());
        }
        if matches!(pattern.first(), Some(Level::Text(t)) if t.starts_with('$')) {
            return Err("a pattern cannot start with $ (the hub's own topics)".into());
        }
        Ok(Translation {
            name: name.to_owned(),
            pattern,
            auth,
        })
    }

    /// The device a topic names, when it matches the pattern.
    pub fn device_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let mut levels = topic.split('/');
        let mut device = None;
        for p in &self.pattern {
            let l = levels.next()?;
            match p {
                Level::Text(t) if t != l => return None,
                Level::DeviceId if l.is_empty() => return None,
                Level::DeviceId => device = Some(l),
                _ => {}
            }
        }
        levels.next().is_none().then_some(device).flatten()
    }
}

/// Equal without telling by its timing where two secrets differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// Authenticates a plain MQTT login (username = device id) against the entries in order;
/// the first whose credential the password is wins.
pub fn authenticate(
    entries: &[Translation],
    username: &str,
    password: &str,
    directory: &dyn DeviceDirectory,
) -> Result<Identity, Refusal> {
    let device_id = DeviceId::parse(username)
        .map_err(|_| Refusal::new(4, "the username must be a device id"))?;
    let record = directory
        .get(username)
        .ok_or_else(|| Refusal::new(5, "device is not registered"))?;
    if record.status != DeviceStatus::Enabled {
        return Err(Refusal::new(5, "device is disabled"));
    }
    for (i, e) in entries.iter().enumerate() {
        let credential = match &e.auth {
            TranslateAuth::Password(p) => {
                same_secret(password, p.expose()).then_some(Credential::Password)
            }
            TranslateAuth::DeviceKey => record.sas_keys().and_then(|(p, s)| {
                // Both compared, whichever matches.
                let (a, b) = (same_secret(password, p), same_secret(password, s));
                (a || b).then(|| Credential::SasKey(key_digest(password)))
            }),
        };
        if let Some(credential) = credential {
            return Ok(Identity {
                role: Role::Translated(u16::try_from(i).unwrap_or(u16::MAX)),
                device_id,
                generation_id: Arc::from(record.generation_id.as_str()),
                auth: AuthMethod::Password,
                credential,
                expires: None,
            });
        }
    }
    Err(Refusal::new(
        5,
        "wrong password for every [[translate]] entry",
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn patterns_capture_the_device_level() {
        let t = Translation::new(
            "p",
            "plant/{deviceId}/+/telemetry",
            TranslateAuth::DeviceKey,
        )
        .expect("valid");
        assert_eq!(t.device_of("plant/dev7/line1/telemetry"), Some("dev7"));
        assert_eq!(t.device_of("plant/dev7/line1/telemetry/x"), None);
        assert_eq!(t.device_of("plant/dev7/telemetry"), None);
        assert_eq!(t.device_of("plant//line1/telemetry"), None);
        assert_eq!(t.device_of("other/dev7/line1/telemetry"), None);
        for bad in [
            "plant/telemetry",
            "{deviceId}/{deviceId}",
            "a/#/{deviceId}",
            "$iothub/{deviceId}",
            "a/x{deviceId}",
        ] {
            assert!(
                Translation::new("p", bad, TranslateAuth::DeviceKey).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn logins_need_an_entrys_password_or_the_devices_key() {
        let mut rec = weir_core::DeviceRecord::with_tags("dev7", serde_json::json!({}));
        rec.auth = weir_core::DeviceAuth::Sas {
            primary_key: "cHJpbWFyeQ==".into(),
            secondary_key: "c2Vjb25kYXJ5".into(),
        };
        let mut dir: HashMap<String, Arc<weir_core::DeviceRecord>> = HashMap::new();
        dir.insert("dev7".into(), Arc::new(rec.clone()));
        let entries = [
            Translation::new(
                "shared",
                "plant/{deviceId}/telemetry",
                TranslateAuth::Password(Secret::new("s3cret")),
            )
            .expect("ok"),
            Translation::new("keys", "legacy/{deviceId}", TranslateAuth::DeviceKey).expect("ok"),
        ];
        let id = authenticate(&entries, "dev7", "s3cret", &dir).expect("shared password");
        assert_eq!(
            (id.role, id.auth),
            (Role::Translated(0), AuthMethod::Password)
        );
        let id = authenticate(&entries, "dev7", "c2Vjb25kYXJ5", &dir).expect("secondary key");
        assert_eq!(id.role, Role::Translated(1));
        assert!(id.revoked_by(Some(&rec)).is_none());
        assert_eq!(
            authenticate(&entries, "dev7", "nope", &dir)
                .map(|_| ())
                .map_err(|r| r.code),
            Err(5)
        );
        assert_eq!(
            authenticate(&entries, "dev8", "s3cret", &dir)
                .map(|_| ())
                .map_err(|r| r.code),
            Err(5)
        );
        assert_eq!(
            authenticate(&entries, "a/b", "s3cret", &dir)
                .map(|_| ())
                .map_err(|r| r.code),
            Err(4)
        );
    }
}
