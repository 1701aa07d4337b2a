//! CONNECT: who is this client, and may it connect?

use std::sync::Arc;

use rumqttd::protocol::{Connect, Login};
use weir_core::{AuthMethod, DeviceDirectory, DeviceId, DeviceRecord, DeviceStatus};

use crate::sas;

/// What a connection proved its identity with, so a change in the registry can tell
/// whether it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A SAS token signed with the key that has this digest.
    SasKey(u64),
}

/// A short digest of a key: connections remember which key signed their token without
/// keeping the key itself.
pub fn key_digest(key: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(key.as_bytes());
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// An authenticated device connection.
#[derive(Debug, Clone)]
pub struct Identity {
    pub device_id: DeviceId,
    pub generation_id: Arc<str>,
    pub auth: AuthMethod,
    pub credential: Credential,
    /// When the credential stops being valid, in seconds since the epoch (a SAS token's
    /// `se`): the connection is closed then.
    pub expires: Option<i64>,
}

/// Why a live connection was cut by the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The device was deleted (or deleted and created again).
    Deleted,
    Disabled,
    /// The key the connection authenticated with was replaced.
    Credential,
    /// The SAS token it authenticated with expired.
    Expired,
}

impl Revocation {
    pub const ALL: [Revocation; 4] = [
        Revocation::Deleted,
        Revocation::Disabled,
        Revocation::Credential,
        Revocation::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Revocation::Deleted => "deleted",
            Revocation::Disabled => "disabled",
            Revocation::Credential => "credential",
            Revocation::Expired => "expired",
        }
    }
}

impl Identity {
    /// Whether the device's registry record (`None`: deleted) still admits this
    /// connection.
    pub fn revoked_by(&self, current: Option<&DeviceRecord>) -> Option<Revocation> {
        let Some(rec) = current else {
            return Some(Revocation::Deleted);
        };
        if *rec.generation_id != *self.generation_id {
            return Some(Revocation::Deleted);
        }
        if rec.status != DeviceStatus::Enabled {
            return Some(Revocation::Disabled);
        }
        let Credential::SasKey(digest) = self.credential;
        let still_held = rec
            .sas_keys()
            .is_some_and(|(p, s)| key_digest(p) == digest || key_digest(s) == digest);
        (!still_held).then_some(Revocation::Credential)
    }
}

/// A refused CONNECT: the CONNACK return code and a reason for the log (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u8,
    pub reason: String,
}

impl Refusal {
    fn new(code: u8, reason: impl Into<String>) -> Self {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// Splits `{host}/{deviceId}/?{query}` (the query is optional and ignored) into host and
/// device id. Module identities (`{host}/{device}/{module}/?...`) are not supported yet.
pub fn parse_username(username: &str) -> Option<(&str, &str)> {
    let (host, rest) = username.split_once('/')?;
    let (device, tail) = match rest.split_once('/') {
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    if host.is_empty() || device.is_empty() || !(tail.is_empty() || tail.starts_with('?')) {
        return None;
    }
    Some((host, device))
}

/// Authenticates a CONNECT against the registry with the IoT Hub SAS scheme.
pub fn authenticate(
    connect: &Connect,
    login: Option<&Login>,
    hub: &str,
    directory: &dyn DeviceDirectory,
    now_secs: i64,
) -> Result<Identity, Refusal> {
    let client_id = connect.client_id.as_str();
    let login = login.ok_or_else(|| Refusal::new(4, "no username or password"))?;
    let (host, device) = parse_username(&login.username).ok_or_else(|| {
        Refusal::new(4, "username must be {hub}/{deviceId}/?api-version=... (module identities are not supported)")
    })?;
    if !host.eq_ignore_ascii_case(hub) {
        return Err(Refusal::new(
            4,
            format!("username names hub {host:?}, this hub is {hub:?}"),
        ));
    }
    if device != client_id {
        return Err(Refusal::new(
            2,
            format!("client id {client_id:?} differs from the username's device id {device:?}"),
        ));
    }
    let device_id =
        DeviceId::parse(device).map_err(|e| Refusal::new(2, format!("invalid device id: {e}")))?;
    if login.password.is_empty() {
        return Err(Refusal::new(4, "no SAS token in the password"));
    }
    let token = sas::parse(&login.password).map_err(|e| Refusal::new(5, e.to_string()))?;
    let record = directory
        .get(device)
        .ok_or_else(|| Refusal::new(5, "device is not registered"))?;
    if record.status != DeviceStatus::Enabled {
        return Err(Refusal::new(5, "device is disabled"));
    }
    let Some((primary, secondary)) = record.sas_keys() else {
        return Err(Refusal::new(5, "device does not use symmetric keys"));
    };
    let resource = format!("{hub}/devices/{device}");
    let keys = [primary, secondary];
    let used = sas::verify(&token, &resource, &keys, now_secs)
        .map_err(|e| Refusal::new(5, e.to_string()))?;
    Ok(Identity {
        device_id,
        generation_id: Arc::from(record.generation_id.as_str()),
        auth: AuthMethod::Sas,
        credential: Credential::SasKey(key_digest(keys[used])),
        expires: Some(token.expiry),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_holds_only_while_its_device_and_key_do() {
        let mut rec = DeviceRecord::with_tags("d1", serde_json::json!({}));
        rec.generation_id = "g1".into();
        rec.auth = weir_core::DeviceAuth::Sas {
            primary_key: "cHJpbWFyeS1rZXktMTIzNA==".into(),
            secondary_key: "c2Vjb25kYXJ5LWtleS0xMjM=".into(),
        };
        let dir: std::collections::HashMap<String, Arc<DeviceRecord>> =
            [("d1".to_string(), Arc::new(rec.clone()))].into();
        let token =
            sas::build("hub/devices/d1", "c2Vjb25kYXJ5LWtleS0xMjM=", 2_000, None).expect("token");
        let connect = Connect {
            keep_alive: 60,
            client_id: "d1".into(),
            clean_session: true,
        };
        let login = Login {
            username: "hub/d1/?api-version=1".into(),
            password: token,
        };
        let id = authenticate(&connect, Some(&login), "hub", &dir, 1_000).expect("accepted");
        assert_eq!(id.expires, Some(2_000));
        assert_eq!(id.revoked_by(Some(&rec)), None);
        let mut swapped = rec.clone();
        swapped.auth = weir_core::DeviceAuth::Sas {
            primary_key: "c2Vjb25kYXJ5LWtleS0xMjM=".into(),
            secondary_key: "bmV3LWtleS0xMjM0NTY3OA==".into(),
        };
        assert_eq!(
            id.revoked_by(Some(&swapped)),
            None,
            "its key is still there"
        );
        let mut rotated = rec.clone();
        rotated.auth = weir_core::DeviceAuth::Sas {
            primary_key: "cHJpbWFyeS1rZXktMTIzNA==".into(),
            secondary_key: "bmV3LWtleS0xMjM0NTY3OA==".into(),
        };
        assert_eq!(id.revoked_by(Some(&rotated)), Some(Revocation::Credential));
        let mut disabled = rec.clone();
        disabled.status = DeviceStatus::Disabled;
        assert_eq!(id.revoked_by(Some(&disabled)), Some(Revocation::Disabled));
        let mut recreated = rec.clone();
        recreated.generation_id = "g2".into();
        assert_eq!(id.revoked_by(Some(&recreated)), Some(Revocation::Deleted));
        assert_eq!(id.revoked_by(None), Some(Revocation::Deleted));
    }

    #[test]
    fn parses_sdk_usernames() {
        assert_eq!(
            parse_username("localhost/dev1/?api-version=2019-10-01&DeviceClientType=x%2F1"),
            Some(("localhost", "dev1"))
        );
        assert_eq!(parse_username("hub/dev1"), Some(("hub", "dev1")));
        assert_eq!(parse_username("hub/dev1/"), Some(("hub", "dev1")));
        assert_eq!(parse_username("hub/dev1/mod1/?api-version=1"), None);
        assert_eq!(parse_username("dev1"), None);
    }
}
