//! The provisioning service's dialect of MQTT (IoT DPS, spec §4), spoken on the hub's own
//! listeners: a CONNECT whose username is `{idScope}/registrations/{registrationId}/…`
//! is a registration, not a device of this hub. I/O-free: topics, authentication against
//! the enrollments' attestations, and the answers' topics.

use std::sync::Arc;

use rumqttd::protocol::{Connect, Login};
use weir_core::{AuthMethod, Credential, DeviceId, Identity, Provisioning, Role, key_digest};

use super::connect::Refusal;
use crate::{sas, x509};

/// The filter a registering device subscribes to for the service's answers.
pub const RESPONSES: &str = "$dps/registrations/res/#";

/// Splits `{idScope}/registrations/{registrationId}/api-version=…` (no `?`, as the SDK
/// sends it) into ID scope and registration id.
pub fn parse_username(username: &str) -> Option<(&str, &str)> {
    let (scope, rest) = username.split_once('/')?;
    let rest = rest.strip_prefix("registrations/")?;
    // The SDK always ends it with `/api-version=…`; a hub username for a device named
    // `registrations` (`{hub}/registrations/?api-version=…`) must not match.
    let (registration, tail) = rest.split_once('/')?;
    let ok = !scope.is_empty()
        && !registration.is_empty()
        && !registration.contains('?')
        && tail.starts_with("api-version=");
    ok.then_some((scope, registration))
}

/// What a registering device publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'t> {
    /// `$dps/registrations/PUT/iotdps-register/?$rid={rid}`
    Register { rid: &'t str },
    /// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}`
    Status { rid: &'t str, operation_id: &'t str },
}

fn query<'t>(q: &'t str, key: &str) -> Option<&'t str> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

pub fn parse_request(topic: &str) -> Option<Request<'_>> {
    if let Some(q) = topic.strip_prefix("$dps/registrations/PUT/iotdps-register/?") {
        return Some(Request::Register {
            rid: query(q, "$rid")?,
        });
    }
    let q = topic.strip_prefix("$dps/registrations/GET/iotdps-get-operationstatus/?")?;
    Some(Request::Status {
        rid: query(q, "$rid")?,
        operation_id: query(q, "operationId")?,
    })
}

/// `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={n}]`: exactly one `$`, and
/// every item `k=v`, as the SDK's parser requires.
pub fn response_topic(status: u16, rid: &str, retry_after: Option<u32>) -> String {
    match retry_after {
        Some(n) => format!("$dps/registrations/res/{status}/?$rid={rid}&retry-after={n}"),
        None => format!("$dps/registrations/res/{status}/?$rid={rid}"),
    }
}

/// Authenticates a registration: the ID scope is the service's, the client id is the
/// registration id, and it proves itself with a SAS token signed by an enrolled (or
/// group-derived) key over `{idScope}/registrations/{registrationId}`, or, without a
/// password, with a certificate enrolled by thumbprint or chained to an enrolled CA
/// whose subject CN is the registration id.
pub fn authenticate(
    connect: &Connect,
    login: &Login,
    certs: Option<&[Vec<u8>]>,
    service: &Arc<dyn Provisioning>,
    now_secs: i64,
) -> Result<Identity, Refusal> {
    let (scope, registration) = parse_username(&login.username)
        .ok_or_else(|| Refusal::new(4, "not a registration username"))?;
    if scope != service.id_scope() {
        return Err(Refusal::new(
            5,
            format!("ID scope {scope:?} is not this provisioning service's"),
        ));
    }
    if registration != connect.client_id {
        return Err(Refusal::new(
            2,
            "the client id must be the registration id".to_string(),
        ));
    }
    let id = DeviceId::parse(registration)
        .map_err(|e| Refusal::new(2, format!("invalid registration id: {e}")))?;
    let enrolled = service.attestations(registration);
    let (auth, credential, expires) = if login.password.is_empty() {
        let chain = certs.ok_or_else(|| {
            Refusal::new(4, "no SAS token in the password and no client certificate")
        })?;
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| Refusal::new(5, "no client certificate"))?;
        let info = x509::inspect(leaf).map_err(|e| Refusal::new(5, e.to_string()))?;
        if info.common_name.as_deref() != Some(registration) {
            return Err(Refusal::new(
                5,
                "the certificate's subject CN is not the registration id",
            ));
        }
        if let Some(t) = enrolled
            .thumbprints
            .iter()
            .find(|t| **t == info.sha1 || **t == info.sha256)
        {
            info.check_time(now_secs)
                .map_err(|e| Refusal::new(5, e.to_string()))?;
            (
                AuthMethod::X509Thumbprint,
                Credential::X509Thumbprint(key_digest(t)),
                info.not_after,
            )
        } else {
            let chained = x509::verify_chain(leaf, intermediates, &enrolled.cas, now_secs)
                .map_err(|e| Refusal::new(5, e.to_string()))?;
            (
                AuthMethod::X509Ca,
                Credential::X509Ca(chained.ca.digest),
                info.not_after.min(chained.not_after),
            )
        }
    } else {
        if enrolled.keys.is_empty() {
            return Err(Refusal::new(5, "no enrollment with symmetric keys for it"));
        }
        let token = sas::parse(&login.password).map_err(|e| Refusal::new(5, e.to_string()))?;
        let resource = format!("{scope}/registrations/{registration}");
        let keys: Vec<&str> = enrolled.keys.iter().map(String::as_str).collect();
        let used = sas::verify(&token, &resource, &keys, now_secs)
            .map_err(|e| Refusal::new(5, e.to_string()))?;
        (
            AuthMethod::Sas,
            Credential::SasKey(key_digest(keys[used])),
            token.expiry,
        )
    };
    Ok(Identity {
        role: Role::Registration,
        device_id: id,
        generation_id: Arc::from(""),
        auth,
        credential,
        expires: Some(expires),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_topics_as_the_sdk_sends_them() {
        assert_eq!(
            parse_username("0ne00ABC/registrations/dev-7/api-version=2019-03-31&ClientVersion=x"),
            Some(("0ne00ABC", "dev-7"))
        );
        assert_eq!(parse_username("hub/dev-7/?api-version=2019-10-01"), None);
        assert_eq!(
            parse_username("hub/registrations/?api-version=2019-10-01"),
            None,
            "a hub device named registrations"
        );
        assert_eq!(
            parse_request("$dps/registrations/PUT/iotdps-register/?$rid=abc"),
            Some(Request::Register { rid: "abc" })
        );
        assert_eq!(
            parse_request(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=r2&operationId=op-1"
            ),
            Some(Request::Status {
                rid: "r2",
                operation_id: "op-1"
            })
        );
        assert_eq!(
            parse_request("$dps/registrations/PUT/iotdps-register/?x=1"),
            None
        );
        assert_eq!(parse_request("devices/d/messages/events/"), None);
        let t = response_topic(202, "abc", Some(3));
        assert_eq!(t, "$dps/registrations/res/202/?$rid=abc&retry-after=3");
        assert_eq!(
            t.matches('$').count(),
            2,
            "one in the prefix, one before rid"
        );
    }
}
