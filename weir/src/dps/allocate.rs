//! Which linked hub a registration goes to (I/O-free): IoT DPS's static, hashed (evenly
//! weighted) and weighted policies, custom rules in the routing query language over the
//! registration, and where a re-registration stays.

use std::sync::Arc;

use bytes::Bytes;
use weir_core::{DeviceId, DeviceRecord, Event};
use weir_rules::EventView;
use weir_rules::compile::compile_str;
use weir_rules::eval::matches;
use weir_storage::dps::Enrollment;

/// A linked hub as allocation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub hostname: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    #[error("the enrollment's static hub {0:?} is not a linked hub")]
    UnknownHub(String),
    #[error("the static policy needs iotHubHostName")]
    NoStaticHub,
    #[error("none of the enrollment's iotHubs is a linked hub")]
    NoHub,
    #[error("allocation policy {0:?} is not supported (static, hashed, weighted, custom)")]
    Policy(String),
    #[error("customAllocation[{index}].condition: {message}")]
    Condition { index: usize, message: String },
    #[error("no customAllocation rule matched the registration")]
    NoRuleMatched,
}

/// Checks an enrollment's custom rules before it is stored.
pub fn check_custom(enrollment: &Enrollment) -> Result<(), AllocationError> {
    for (index, rule) in enrollment.custom_allocation.iter().enumerate() {
        compile_str(&rule.condition).map_err(|e| AllocationError::Condition {
            index,
            message: e.message,
        })?;
    }
    Ok(())
}

/// The first custom rule that holds for the registration: `$connectionDeviceId` is the
/// registration id, `$body` the device's custom payload, `$twin.tags` the enrollment's
/// initial tags.
fn custom(
    enrollment: &Enrollment,
    registration_id: &str,
    payload: &[u8],
) -> Result<String, AllocationError> {
    let id = DeviceId::parse(registration_id).map_err(|e| AllocationError::Condition {
        index: 0,
        message: e.to_string(),
    })?;
    let mut event = Event::telemetry(id, 0, Bytes::copy_from_slice(payload));
    event.system.content_type = Some("application/json".into());
    event.system.content_encoding = Some("utf-8".into());
    let tags = enrollment
        .initial_twin
        .as_ref()
        .and_then(|t| t.get("tags").cloned())
        .unwrap_or_else(|| serde_json::json!({}));
    let directory: std::collections::HashMap<String, Arc<DeviceRecord>> = [(
        registration_id.to_owned(),
        Arc::new(DeviceRecord::with_tags(registration_id, tags)),
    )]
    .into();
    let view = EventView::new(&event, &directory);
    for (index, rule) in enrollment.custom_allocation.iter().enumerate() {
        let ir = compile_str(&rule.condition).map_err(|e| AllocationError::Condition {
            index,
            message: e.message,
        })?;
        if matches(&ir, &view) {
            return Ok(rule.iot_hub_host_name.clone());
        }
    }
    Err(AllocationError::NoRuleMatched)
}

fn stable_hash(s: &str) -> u64 {
    // FNV-1a: the same registration goes to the same hub on every service instance.
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The hub for `registration_id` under `enrollment`, given the linked hubs and where it
/// is now (`current`).
pub fn choose(
    enrollment: &Enrollment,
    registration_id: &str,
    payload: &[u8],
    hubs: &[Candidate],
    current: Option<&str>,
) -> Result<String, AllocationError> {
    if let Some(now) = current
        && !enrollment.reprovision_policy.update_hub_assignment
    {
        return Ok(now.to_owned());
    }
    let allowed: Vec<&Candidate> = hubs
        .iter()
        .filter(|h| {
            enrollment.iot_hubs.is_empty()
                || enrollment
                    .iot_hubs
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(&h.hostname))
        })
        .collect();
    let policy = enrollment.allocation_policy.to_ascii_lowercase();
    match policy.as_str() {
        "static" => {
            let name = enrollment
                .iot_hub_host_name
                .as_deref()
                .ok_or(AllocationError::NoStaticHub)?;
            hubs.iter()
                .find(|h| h.hostname.eq_ignore_ascii_case(name))
                .map(|h| h.hostname.clone())
                .ok_or_else(|| AllocationError::UnknownHub(name.to_owned()))
        }
        "hashed" | "weighted" => {
            if allowed.is_empty() {
                return Err(AllocationError::NoHub);
            }
            // A registration already on an allowed hub stays there.
            if let Some(now) = current
                && allowed.iter().any(|h| h.hostname.eq_ignore_ascii_case(now))
            {
                return Ok(now.to_owned());
            }
            let weight = |h: &Candidate| {
                if policy == "hashed" {
                    1
                } else {
                    u64::from(h.weight)
                }
            };
            let total: u64 = allowed.iter().map(|h| weight(h)).sum();
            let mut point = stable_hash(registration_id) % total.max(1);
            for h in &allowed {
                if point < weight(h) {
                    return Ok(h.hostname.clone());
                }
                point -= weight(h);
            }
            Ok(allowed[0].hostname.clone())
        }
        "custom" => {
            let name = custom(enrollment, registration_id, payload)?;
            allowed
                .iter()
                .find(|h| h.hostname.eq_ignore_ascii_case(&name))
                .map(|h| h.hostname.clone())
                .ok_or(AllocationError::UnknownHub(name))
        }
        other => Err(AllocationError::Policy(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrollment(v: serde_json::Value) -> Enrollment {
        let mut v = v;
        v["attestation"] = serde_json::json!({"type": "symmetricKey"});
        serde_json::from_value(v).expect("enrollment")
    }

    fn hubs() -> Vec<Candidate> {
        vec![
            Candidate {
                hostname: "a".into(),
                weight: 1,
            },
            Candidate {
                hostname: "b".into(),
                weight: 3,
            },
        ]
    }

    #[test]
    fn policies_pick_hubs_as_dps_does() {
        let e =
            enrollment(serde_json::json!({"allocationPolicy": "static", "iotHubHostName": "b"}));
        assert_eq!(choose(&e, "x", b"", &hubs(), None), Ok("b".into()));
        let e =
            enrollment(serde_json::json!({"allocationPolicy": "static", "iotHubHostName": "z"}));
        assert!(matches!(
            choose(&e, "x", b"", &hubs(), None),
            Err(AllocationError::UnknownHub(_))
        ));
        let hashed = enrollment(serde_json::json!({}));
        let picks: Vec<String> = (0..400)
            .map(|i| choose(&hashed, &format!("dev-{i}"), b"", &hubs(), None).expect("hub"))
            .collect();
        let on_b = picks.iter().filter(|h| *h == "b").count();
        assert!((150..250).contains(&on_b), "evenly: {on_b} of 400 on b");
        assert_eq!(
            picks[7],
            choose(&hashed, "dev-7", b"", &hubs(), None).expect("hub"),
            "stable"
        );
        let weighted = enrollment(serde_json::json!({"allocationPolicy": "weighted"}));
        let on_b = (0..400)
            .filter(|i| {
                choose(&weighted, &format!("dev-{i}"), b"", &hubs(), None).expect("hub") == "b"
            })
            .count();
        assert!(
            (250..350).contains(&on_b),
            "3:1 weights: {on_b} of 400 on b"
        );
        let only_a = enrollment(serde_json::json!({"iotHubs": ["a"]}));
        assert_eq!(choose(&only_a, "dev-1", b"", &hubs(), None), Ok("a".into()));
    }

    #[test]
    fn re_registrations_follow_the_reprovision_policy() {
        let moved =
            enrollment(serde_json::json!({"allocationPolicy": "static", "iotHubHostName": "b"}));
        assert_eq!(
            choose(&moved, "x", b"", &hubs(), Some("a")),
            Ok("b".into()),
            "follows the enrollment"
        );
        let pinned = enrollment(serde_json::json!({
            "allocationPolicy": "static", "iotHubHostName": "b",
            "reprovisionPolicy": {"updateHubAssignment": false, "migrateDeviceData": false}}));
        assert_eq!(
            choose(&pinned, "x", b"", &hubs(), Some("a")),
            Ok("a".into()),
            "never moves"
        );
        let hashed = enrollment(serde_json::json!({}));
        assert_eq!(
            choose(&hashed, "x", b"", &hubs(), Some("a")),
            Ok("a".into()),
            "stays where allowed"
        );
        let odd = enrollment(serde_json::json!({"allocationPolicy": "geoLatency"}));
        assert!(matches!(
            choose(&odd, "x", b"", &hubs(), None),
            Err(AllocationError::Policy(_))
        ));
    }

    #[test]
    fn custom_rules_read_the_payload_the_id_and_the_initial_tags() {
        let e = enrollment(serde_json::json!({
        "allocationPolicy": "custom",
        "initialTwin": {"tags": {"fleet": "trial"}},
        "customAllocation": [
            {"condition": "$body.region = 'eu'", "iotHubHostName": "a"},
            {"condition": "STARTS_WITH($connectionDeviceId, 'b-')", "iotHubHostName": "b"},
            {"condition": "$twin.tags.fleet = 'trial'", "iotHubHostName": "a"},
        ]}));
        assert!(check_custom(&e).is_ok());
        assert_eq!(
            choose(&e, "b-1", br#"{"region": "eu"}"#, &hubs(), None),
            Ok("a".into())
        );
        assert_eq!(choose(&e, "b-1", b"null", &hubs(), None), Ok("b".into()));
        assert_eq!(
            choose(&e, "c-1", b"", &hubs(), None),
            Ok("a".into()),
            "by the tags"
        );
        let mut none = e.clone();
        none.custom_allocation.truncate(1);
        assert_eq!(
            choose(&none, "c-1", b"{}", &hubs(), None),
            Err(AllocationError::NoRuleMatched)
        );
        let mut broken = e.clone();
        broken.custom_allocation[0].condition = "$body.region = ".into();
        assert!(matches!(
            check_custom(&broken),
            Err(AllocationError::Condition { index: 0, .. })
        ));
    }
}
