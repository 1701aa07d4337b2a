//! CONNECT: who is this client, and may it connect?

use std::sync::Arc;

use rumqttd::protocol::{Connect, Login};
use weir_core::{
    AuthMethod, Credential, DeviceAuth, DeviceDirectory, DeviceId, DeviceStatus, Identity, Role,
    key_digest,
};

use crate::{sas, x509};

/// A refused CONNECT: the CONNACK return code and a reason for the log (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u8,
    pub reason: String,
}

impl Refusal {
    pub(crate) fn new(code: u8, reason: impl Into<String>) -> Self {
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

/// Authenticates a CONNECT against the registry as IoT Hub does: with a SAS token in the
/// password, or, without a password, with the TLS client certificate chain `certs`.
pub fn authenticate(
    connect: &Connect,
    login: Option<&Login>,
    certs: Option<&[Vec<u8>]>,
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
        return match certs {
            Some(chain) => verify_certificate(device_id, chain, directory, now_secs),
            None => Err(Refusal::new(
                4,
                "no SAS token in the password and no client certificate",
            )),
        };
    }
    let token = sas::parse(&login.password).map_err(|e| Refusal::new(5, e.to_string()))?;
    verify_device(device_id, &token, hub, directory, now_secs)
}

/// The device's registry record, if it is registered and enabled.
fn enabled_record(
    directory: &dyn DeviceDirectory,
    device: &str,
) -> Result<Arc<weir_core::DeviceRecord>, Refusal> {
    let record = directory
        .get(device)
        .ok_or_else(|| Refusal::new(5, "device is not registered"))?;
    if record.status != DeviceStatus::Enabled {
        return Err(Refusal::new(5, "device is disabled"));
    }
    Ok(record)
}

/// Checks that `token` is a valid SAS token of the registered, enabled device `device_id`
/// on `hub` at `now_secs`; refusals carry CONNACK 5 and a reason without secrets.
pub fn verify_device(
    device_id: DeviceId,
    token: &sas::SasToken<'_>,
    hub: &str,
    directory: &dyn DeviceDirectory,
    now_secs: i64,
) -> Result<Identity, Refusal> {
    let device = device_id.as_str();
    let record = enabled_record(directory, device)?;
    let Some((primary, secondary)) = record.sas_keys() else {
        return Err(Refusal::new(5, "device does not use symmetric keys"));
    };
    let resource = format!("{hub}/devices/{device}");
    let keys = [primary, secondary];
    let used = sas::verify(token, &resource, &keys, now_secs)
        .map_err(|e| Refusal::new(5, e.to_string()))?;
    Ok(Identity {
        role: Role::Device,
        device_id,
        generation_id: Arc::from(record.generation_id.as_str()),
        auth: AuthMethod::Sas,
        credential: Credential::SasKey(key_digest(keys[used])),
        expires: Some(token.expiry),
    })
}

/// Checks that `chain` (the device's certificate first) authenticates the registered,
/// enabled device `device_id` at `now_secs`: by a registered thumbprint (`selfSigned`), or
/// by a chain to a verified CA with the device id as subject CN (`certificateAuthority`).
/// Every refusal is CONNACK 5 (not authorized): nothing in the username was malformed.
pub fn verify_certificate(
    device_id: DeviceId,
    chain: &[Vec<u8>],
    directory: &dyn DeviceDirectory,
    now_secs: i64,
) -> Result<Identity, Refusal> {
    let refuse = |e: x509::X509Error| Refusal::new(5, e.to_string());
    let device = device_id.as_str();
    let record = enabled_record(directory, device)?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| Refusal::new(5, "no client certificate"))?;
    let info = x509::inspect(leaf).map_err(refuse)?;
    // The session ends when the certificate, or one it chains through, expires.
    let mut expires = info.not_after;
    let (auth, credential) = match &record.auth {
        DeviceAuth::Sas { .. } => {
            return Err(Refusal::new(
                5,
                "device uses symmetric keys: send a SAS token as the password",
            ));
        }
        DeviceAuth::SelfSigned {
            primary_thumbprint,
            secondary_thumbprint,
        } => {
            let registered = std::iter::once(primary_thumbprint.as_str())
                .chain(secondary_thumbprint.as_deref())
                .find(|t| **t == info.sha1 || **t == info.sha256)
                .ok_or_else(|| {
                    Refusal::new(5, "certificate thumbprint is not registered for the device")
                })?;
            info.check_time(now_secs).map_err(refuse)?;
            (
                AuthMethod::X509Thumbprint,
                Credential::X509Thumbprint(key_digest(registered)),
            )
        }
        DeviceAuth::CertificateAuthority => {
            if info.common_name.as_deref() != Some(device) {
                return Err(Refusal::new(
                    5,
                    format!(
                        "certificate subject CN {:?} is not the device id",
                        info.common_name.unwrap_or_default()
                    ),
                ));
            }
            let chained =
                x509::verify_chain(leaf, intermediates, &directory.verified_cas(), now_secs)
                    .map_err(refuse)?;
            expires = expires.min(chained.not_after);
            (AuthMethod::X509Ca, Credential::X509Ca(chained.ca.digest))
        }
    };
    Ok(Identity {
        role: Role::Device,
        device_id,
        generation_id: Arc::from(record.generation_id.as_str()),
        auth,
        credential,
        expires: Some(expires),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticates_with_either_key_and_remembers_which() {
        let mut rec = weir_core::DeviceRecord::with_tags("d1", serde_json::json!({}));
        rec.generation_id = "g1".into();
        rec.auth = weir_core::DeviceAuth::Sas {
            primary_key: "cHJpbWFyeS1rZXktMTIzNA==".into(),
            secondary_key: "c2Vjb25kYXJ5LWtleS0xMjM=".into(),
        };
        let dir: std::collections::HashMap<String, Arc<weir_core::DeviceRecord>> =
            [("d1".to_string(), Arc::new(rec))].into();
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
        let id = authenticate(&connect, Some(&login), None, "hub", &dir, 1_000).expect("accepted");
        assert_eq!(id.expires, Some(2_000));
        assert_eq!(
            id.credential,
            Credential::SasKey(key_digest("c2Vjb25kYXJ5LWtleS0xMjM="))
        );
        let refused = authenticate(&connect, Some(&login), None, "hub", &dir, 2_001);
        assert_eq!(refused.map_err(|r| r.code).err(), Some(5), "expired");
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
