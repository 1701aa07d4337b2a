//! One registration: find the enrollment, pick the hub, create (or move) the device there
//! with the twin it should start with, and record where it went.

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};
use weir_core::{Identity, ProvisionReply};
use weir_storage::dps::{DpsStore, Kind, Registration};

use super::allocate::{self, Candidate};
use super::{Inner, Link, attest, failed, path};
use crate::client::Reply;

/// How long one call to a linked hub may take.
const HUB_CALL: Duration = Duration::from_secs(10);
/// What a device is told to wait before it retries when a hub cannot be reached.
const RETRY_AFTER: u32 = 5;

/// Why a registration did not go through. The device gets the category (and the
/// message of the first two); the details are in the service's log.
pub(super) enum Failure {
    /// Nothing enrolled admits it, or its device id belongs to someone else (401).
    Refused(String),
    /// The enrollment cannot place it (400).
    Invalid(String),
    /// A hub could not be reached or refused a call: retry later (503).
    Unavailable(anyhow::Error),
    /// The service's own storage failed (500).
    Internal(anyhow::Error),
}

impl Failure {
    pub(super) fn log_and_reply(self, registration: &str) -> ProvisionReply {
        match self {
            Failure::Refused(m) => {
                tracing::warn!(%registration, reason = %m, "registration refused");
                failed(401, m)
            }
            Failure::Invalid(m) => {
                tracing::warn!(%registration, reason = %m, "registration cannot be allocated");
                failed(400, m)
            }
            Failure::Unavailable(e) => {
                tracing::warn!(%registration, error = %format!("{e:#}"), "registration waits for its hub");
                let mut r = failed(503, "the assigned hub cannot be reached; retry later");
                r.retry_after = Some(RETRY_AFTER);
                r
            }
            Failure::Internal(e) => {
                tracing::error!(%registration, error = %format!("{e:#}"), "registration failed");
                failed(500, "the provisioning service failed; see its log")
            }
        }
    }
}

fn internal<E: Into<anyhow::Error>>(e: E) -> Failure {
    Failure::Internal(e.into())
}

impl Link {
    /// One REST call to the hub, bounded in time.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, Failure> {
        match tokio::time::timeout(HUB_CALL, self.client.call(method, path, body, if_match)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Failure::Unavailable(
                e.context(format!("hub {}", self.hostname)),
            )),
            Err(_) => Err(Failure::Unavailable(anyhow::anyhow!(
                "hub {} did not answer within {} s",
                self.hostname,
                HUB_CALL.as_secs()
            ))),
        }
    }

    /// A call that must succeed.
    async fn ok(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Value, Failure> {
        self.call(method, path, body, if_match)
            .await?
            .ok()
            .map_err(|e| Failure::Unavailable(e.context(format!("hub {}", self.hostname))))
    }
}

/// Desired properties without the `$metadata`/`$version` the twin document carries.
fn strip_meta(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl Inner {
    /// Registers `who` (authenticated against the enrollments).
    pub(super) async fn register(
        &self,
        who: &Identity,
        payload: Bytes,
    ) -> Result<Registration, Failure> {
        // Revocation waits for registrations in flight, so none slips past it.
        let _gate = self.gate.read().await;
        let reg_id = who.device_id.as_str();
        let individual = self
            .store
            .enrollment(Kind::Individual, reg_id)
            .map_err(internal)?;
        let groups = self.groups();
        let (enrollment, group) = match individual {
            Some(e) => (e, None),
            None => {
                let g = attest::group_of(reg_id, who.credential, &groups)
                    .ok_or_else(|| {
                        Failure::Refused("no enabled enrollment for this registration".into())
                    })?
                    .clone();
                let id = g.enrollment_group_id.clone();
                (g, id)
            }
        };
        if !enrollment.is_enabled() {
            return Err(Failure::Refused("the enrollment is disabled".into()));
        }
        let previous = self.store.registration(reg_id).map_err(internal)?;
        // Only a registration through the same enrollment may update a device that exists.
        let ours = previous
            .as_ref()
            .is_some_and(|p| p.enrollment_group_id == group);
        let current = previous
            .as_ref()
            .filter(|p| p.status == "assigned")
            .and_then(|p| p.assigned_hub.clone());
        let candidates: Vec<Candidate> = self
            .links
            .iter()
            .map(|l| Candidate {
                hostname: l.hostname.clone(),
                weight: l.weight,
            })
            .collect();
        // The register body is `{"payload": <the device's>, "registrationId": …}`.
        let custom = serde_json::from_slice::<Value>(&payload)
            .ok()
            .and_then(|b| b.get("payload").cloned())
            .unwrap_or(Value::Null)
            .to_string();
        let hub = allocate::choose(
            &enrollment,
            reg_id,
            custom.as_bytes(),
            &candidates,
            current.as_deref(),
        )
        .map_err(|e| Failure::Invalid(e.to_string()))?;
        let link = self
            .link(&hub)
            .ok_or_else(|| Failure::Invalid(format!("hub {hub} is not linked")))?;
        let device_id = enrollment
            .device_id
            .clone()
            .unwrap_or_else(|| reg_id.to_owned());
        let authentication = attest::hub_authentication(reg_id, &enrollment, group.is_some());
        let existing = match link
            .call(Method::GET, &path("devices", &device_id), None, None)
            .await?
        {
            r if r.status.is_success() => Some(r.body),
            r if r.status == hyper::StatusCode::NOT_FOUND => None,
            r => {
                return Err(Failure::Unavailable(anyhow::anyhow!(
                    "hub {hub} answered {}",
                    r.status
                )));
            }
        };
        let exists = existing.is_some();
        // A device that exists may be updated only by a registration through the
        // enrollment that provisioned it, or one that attests with what it already uses:
        // no enrollment can take over someone else's device id.
        if let Some(dev) = &existing
            && !ours
            && !attest::same_authentication(&dev["authentication"], &authentication)
        {
            return Err(Failure::Refused(format!(
                "device {device_id} exists on its hub with other credentials and was not provisioned through this enrollment"
            )));
        }
        let moved = current
            .as_deref()
            .is_some_and(|c| !c.eq_ignore_ascii_case(&hub));
        let migrate = moved && enrollment.reprovision_policy.migrate_device_data;
        // The twin the device starts with on its hub: its old hub's when it migrates (a
        // hub that cannot be read makes the device retry, not lose its twin), the
        // enrollment's initial twin when it is new or reset, else what it has.
        let twin = match current.as_deref().and_then(|c| self.link(c)) {
            Some(old) if migrate => {
                let t = old
                    .ok(Method::GET, &path("twins", &device_id), None, None)
                    .await?;
                Some(
                    json!({"tags": t["tags"], "properties": {"desired": strip_meta(&t["properties"]["desired"])}}),
                )
            }
            _ if !migrate && (previous.is_none() || moved || !exists) => {
                enrollment.initial_twin.clone()
            }
            _ => None,
        };
        let body = json!({
            "deviceId": device_id,
            "status": "enabled",
            "authentication": authentication,
        });
        // A new device is created without If-Match: if one appeared meanwhile, the hub
        // refuses (409) rather than letting this registration take it over.
        let condition = exists.then_some("*");
        link.ok(
            Method::PUT,
            &path("devices", &device_id),
            Some(&body),
            condition,
        )
        .await?;
        if let Some(t) = twin.filter(Value::is_object) {
            let patch = json!({
                "tags": t.get("tags").cloned().unwrap_or(json!({})),
                "properties": {"desired": t["properties"]["desired"].clone()},
            });
            link.ok(
                Method::PATCH,
                &path("twins", &device_id),
                Some(&patch),
                None,
            )
            .await?;
        }
        let substatus = match (moved, migrate) {
            (true, true) => "deviceDataMigrated",
            (true, false) => "deviceDataReset",
            _ => "initialAssignment",
        };
        let now = DpsStore::timestamp();
        let r = Registration {
            registration_id: reg_id.to_owned(),
            created_date_time_utc: previous
                .as_ref()
                .map_or_else(|| now.clone(), |p| p.created_date_time_utc.clone()),
            last_updated_date_time_utc: now,
            assigned_hub: Some(hub.clone()),
            device_id: Some(device_id.clone()),
            status: "assigned".into(),
            substatus: substatus.into(),
            error_message: None,
            etag: String::new(),
            enrollment_group_id: group,
            operation_id: weir_storage::secret::random_hex(16).map_err(internal)?,
        };
        let r = self.store.put_registration(r).map_err(internal)?;
        tracing::info!(registration = %reg_id, device = %device_id, %hub, substatus, "device provisioned");
        Ok(r)
    }
}
