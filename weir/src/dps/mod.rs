//! The provisioning service (a role of `weir serve`, `[dps]`): IoT DPS's device protocol
//! on the hub's MQTT listeners (the gateways call [`Dps`] through
//! `weir_core::Provisioning`), its service API (`crate::api::dps`), enrollments in
//! `dps.redb`, and devices created on linked hubs through their REST APIs.
//!
//! A registration is answered at once (`200 assigned`, which the SDK accepts as DPS's
//! final answer); the device has been created on its hub before the answer leaves.

pub mod allocate;
pub mod attest;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};
use weir_core::{Attestations, Identity, ProvisionReply, Provisioning, ServiceFuture};
use weir_storage::dps::{DpsStore, Enrollment, Kind, Registration};

use crate::cli::HubArgs;
use crate::client::HubClient;
use crate::config::{DpsConfig, LinkedHub};
use allocate::Candidate;

/// A hub devices are created on.
struct Link {
    hostname: String,
    weight: u32,
    client: HubClient,
}

pub struct Inner {
    pub store: Arc<DpsStore>,
    links: Vec<Link>,
    /// Revoking an enrollment disables its devices on their hubs (`dps.revoke`).
    cascade: bool,
}

/// The service; cheap to clone.
#[derive(Clone)]
pub struct Dps {
    pub inner: Arc<Inner>,
}

impl Dps {
    /// Opens the store and links the hubs (`hubs`, or this hub when there are none).
    pub fn open(data_dir: &Path, config: &DpsConfig, this_hub: LinkedHub) -> anyhow::Result<Dps> {
        let hubs = &config.hubs;
        let store = Arc::new(
            DpsStore::open(&data_dir.join("dps.redb"))
                .context("opening the provisioning service's store")?,
        );
        let hubs: Vec<LinkedHub> = if hubs.is_empty() {
            vec![this_hub]
        } else {
            hubs.to_vec()
        };
        let mut links = Vec::new();
        for h in hubs {
            let client = HubClient::new(&HubArgs {
                api: h.api.clone(),
                connection_string: Some(h.connection_string.clone()),
                data_dir: data_dir.to_path_buf(),
                ca: h.ca.clone(),
            })
            .with_context(|| format!("linking hub {}", h.hostname))?;
            links.push(Link {
                hostname: h.hostname,
                weight: h.weight,
                client,
            });
        }
        Ok(Dps {
            inner: Arc::new(Inner {
                store,
                links,
                cascade: config.cascade,
            }),
        })
    }
}

impl Dps {
    /// The linked hubs' host names.
    pub fn hubs(&self) -> Vec<String> {
        self.inner
            .links
            .iter()
            .map(|l| l.hostname.clone())
            .collect()
    }

    /// An enrollment was disabled or deleted: the devices provisioned through it are
    /// disabled on their hubs, which cuts their live sessions (IoT Hub's DPS leaves them
    /// working; decision 030).
    pub async fn revoke(&self, kind: Kind, id: &str) {
        if !self.inner.cascade {
            return;
        }
        let registrations = match self.inner.store.registrations() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read registrations to revoke");
                return;
            }
        };
        let through = |r: &Registration| match kind {
            Kind::Individual => r.enrollment_group_id.is_none() && r.registration_id == id,
            Kind::Group => r.enrollment_group_id.as_deref() == Some(id),
        };
        for r in registrations.iter().filter(|r| through(r)) {
            let (Some(hub), Some(device)) = (&r.assigned_hub, &r.device_id) else {
                continue;
            };
            let Some(link) = self.inner.link(hub) else {
                continue;
            };
            let body = json!({"deviceId": device, "status": "disabled", "statusReason": "provisioning enrollment revoked"});
            match link
                .client
                .call(
                    Method::PUT,
                    &path("devices", device),
                    Some(&body),
                    Some("*"),
                )
                .await
                .and_then(|r| r.ok())
            {
                Ok(_) => {
                    tracing::info!(registration = %r.registration_id, %device, %hub, "enrollment revoked: device disabled on its hub")
                }
                Err(e) => {
                    tracing::warn!(registration = %r.registration_id, %device, %hub, error = %format!("{e:#}"), "enrollment revoked but the device could not be disabled on its hub")
                }
            }
        }
    }
}

fn failed(status: u16, message: impl Into<String>) -> ProvisionReply {
    let body = json!({"errorCode": u32::from(status) * 1000, "message": message.into()});
    ProvisionReply {
        status,
        body: Bytes::from(body.to_string()),
        retry_after: None,
    }
}

/// IoT DPS's RegistrationOperationStatus for a stored registration.
pub fn operation(r: &Registration) -> Value {
    json!({
        "operationId": r.operation_id,
        "status": r.status,
        "registrationState": {
            "registrationId": r.registration_id,
            "createdDateTimeUtc": r.created_date_time_utc,
            "assignedHub": r.assigned_hub,
            "deviceId": r.device_id,
            "status": r.status,
            "substatus": r.substatus,
            "lastUpdatedDateTimeUtc": r.last_updated_date_time_utc,
            "etag": r.etag,
            "errorMessage": r.error_message,
        }
    })
}

fn path(kind: &str, id: &str) -> String {
    format!(
        "/{kind}/{}",
        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
    )
}

impl Inner {
    fn link(&self, hostname: &str) -> Option<&Link> {
        self.links
            .iter()
            .find(|l| l.hostname.eq_ignore_ascii_case(hostname))
    }

    fn groups(&self) -> Vec<Enrollment> {
        self.store.enrollments(Kind::Group).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read enrollment groups");
            Vec::new()
        })
    }

    /// Registers `who`: finds its enrollment, picks its hub, creates (or moves) the device
    /// there with the enrollment's initial twin or its migrated twin, and records it.
    async fn register(&self, who: &Identity, payload: Bytes) -> anyhow::Result<Registration> {
        let reg_id = who.device_id.as_str();
        let individual = self.store.enrollment(Kind::Individual, reg_id)?;
        let groups = self.groups();
        let (enrollment, group) = match individual {
            Some(e) => (e, None),
            None => {
                let g = attest::group_of(reg_id, who.credential, &groups)
                    .context("no enabled enrollment for this registration")?
                    .clone();
                let id = g.enrollment_group_id.clone();
                (g, id)
            }
        };
        anyhow::ensure!(enrollment.is_enabled(), "the enrollment is disabled");
        let previous = self.store.registration(reg_id)?;
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
        )?;
        let link = self.link(&hub).context("the chosen hub is not linked")?;
        let device_id = enrollment
            .device_id
            .clone()
            .unwrap_or_else(|| reg_id.to_owned());
        let moved = current
            .as_deref()
            .is_some_and(|c| !c.eq_ignore_ascii_case(&hub));
        let migrate = moved && enrollment.reprovision_policy.migrate_device_data;
        // The twin the device starts with on its hub: its old hub's when it migrates,
        // the enrollment's initial twin when it is new or reset, else what it has.
        let twin = if migrate {
            match current.as_deref().and_then(|c| self.link(c)) {
                Some(old) => old
                    .client
                    .call(Method::GET, &path("twins", &device_id), None, None)
                    .await
                    .ok()
                    .and_then(|r| r.ok().ok())
                    .map(|t| json!({"tags": t["tags"], "properties": {"desired": strip_meta(&t["properties"]["desired"])}})),
                None => None,
            }
        } else if previous.is_none() || moved {
            enrollment.initial_twin.clone()
        } else {
            None
        };
        let body = json!({
            "deviceId": device_id,
            "status": "enabled",
            "authentication": attest::hub_authentication(reg_id, &enrollment, group.is_some()),
        });
        link.client
            .call(
                Method::PUT,
                &path("devices", &device_id),
                Some(&body),
                Some("*"),
            )
            .await?
            .ok()
            .with_context(|| format!("creating device {device_id} on {hub}"))?;
        if let Some(t) = twin.filter(|t| t.is_object()) {
            let patch = json!({
                "tags": t.get("tags").cloned().unwrap_or(json!({})),
                "properties": {"desired": t["properties"]["desired"].clone()},
            });
            link.client
                .call(
                    Method::PATCH,
                    &path("twins", &device_id),
                    Some(&patch),
                    None,
                )
                .await?
                .ok()
                .with_context(|| format!("setting the twin of {device_id} on {hub}"))?;
        }
        let substatus = match (previous.is_some(), moved, migrate) {
            (_, true, true) => "deviceDataMigrated",
            (_, true, false) => "deviceDataReset",
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
            operation_id: weir_storage::secret::random_hex(16)?,
        };
        let r = self.store.put_registration(r)?;
        tracing::info!(registration = %reg_id, device = %device_id, %hub, substatus, "device provisioned");
        Ok(r)
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

impl Provisioning for Dps {
    fn id_scope(&self) -> &str {
        self.inner.store.id_scope()
    }

    fn attestations(&self, registration_id: &str) -> Attestations {
        let individual = self
            .inner
            .store
            .enrollment(Kind::Individual, registration_id)
            .ok()
            .flatten();
        attest::attestations(registration_id, individual.as_ref(), &self.inner.groups())
    }

    fn register(&self, who: Arc<Identity>, payload: Bytes) -> ServiceFuture<ProvisionReply> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            match inner.register(&who, payload).await {
                Ok(r) => ProvisionReply {
                    status: 200,
                    body: Bytes::from(operation(&r).to_string()),
                    retry_after: None,
                },
                Err(e) => {
                    tracing::warn!(registration = %who.device_id, error = %format!("{e:#}"), "registration failed");
                    failed(400, format!("{e:#}"))
                }
            }
        })
    }

    fn status(&self, who: Arc<Identity>, operation_id: String) -> ServiceFuture<ProvisionReply> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            match inner.store.registration(who.device_id.as_str()) {
                Ok(Some(r)) if r.operation_id == operation_id => ProvisionReply {
                    status: 200,
                    body: Bytes::from(operation(&r).to_string()),
                    retry_after: None,
                },
                _ => failed(404, "no such operation"),
            }
        })
    }
}
