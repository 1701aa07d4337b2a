//! Which linked hub a registration goes to (I/O-free): IoT DPS's static, hashed (evenly
//! weighted) and weighted policies, and where a re-registration stays.

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
    #[error("allocation policy {0:?} is not supported (static, hashed, weighted)")]
    Policy(String),
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
        assert_eq!(choose(&e, "x", &hubs(), None), Ok("b".into()));
        let e =
            enrollment(serde_json::json!({"allocationPolicy": "static", "iotHubHostName": "z"}));
        assert!(matches!(
            choose(&e, "x", &hubs(), None),
            Err(AllocationError::UnknownHub(_))
        ));
        let hashed = enrollment(serde_json::json!({}));
        let picks: Vec<String> = (0..400)
            .map(|i| choose(&hashed, &format!("dev-{i}"), &hubs(), None).expect("hub"))
            .collect();
        let on_b = picks.iter().filter(|h| *h == "b").count();
        assert!((150..250).contains(&on_b), "evenly: {on_b} of 400 on b");
        assert_eq!(
            picks[7],
            choose(&hashed, "dev-7", &hubs(), None).expect("hub"),
            "stable"
        );
        let weighted = enrollment(serde_json::json!({"allocationPolicy": "weighted"}));
        let on_b = (0..400)
            .filter(|i| choose(&weighted, &format!("dev-{i}"), &hubs(), None).expect("hub") == "b")
            .count();
        assert!(
            (250..350).contains(&on_b),
            "3:1 weights: {on_b} of 400 on b"
        );
        let only_a = enrollment(serde_json::json!({"iotHubs": ["a"]}));
        assert_eq!(choose(&only_a, "dev-1", &hubs(), None), Ok("a".into()));
    }

    #[test]
    fn re_registrations_follow_the_reprovision_policy() {
        let moved =
            enrollment(serde_json::json!({"allocationPolicy": "static", "iotHubHostName": "b"}));
        assert_eq!(
            choose(&moved, "x", &hubs(), Some("a")),
            Ok("b".into()),
            "follows the enrollment"
        );
        let pinned = enrollment(serde_json::json!({
            "allocationPolicy": "static", "iotHubHostName": "b",
            "reprovisionPolicy": {"updateHubAssignment": false, "migrateDeviceData": false}}));
        assert_eq!(
            choose(&pinned, "x", &hubs(), Some("a")),
            Ok("a".into()),
            "never moves"
        );
        let hashed = enrollment(serde_json::json!({}));
        assert_eq!(
            choose(&hashed, "x", &hubs(), Some("a")),
            Ok("a".into()),
            "stays where allowed"
        );
        let custom = enrollment(serde_json::json!({"allocationPolicy": "custom"}));
        assert!(matches!(
            choose(&custom, "x", &hubs(), None),
            Err(AllocationError::Policy(_))
        ));
    }
}
