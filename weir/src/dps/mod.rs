//! The provisioning service (a role of `weir serve`, `[dps]`): IoT DPS's device protocol
//! on the hub's MQTT listeners (the gateways call [`Dps`] through
//! `weir_core::Provisioning`), its service API (`crate::api::dps`), enrollments in
//! `dps.redb`, and devices created on linked hubs through their REST APIs.
//!
//! A registration is answered at once (`200 assigned`, which the SDK accepts as DPS's
//! final answer); the device has been created on its hub before the answer leaves.

pub mod allocate;
pub mod attest;
mod register;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};
use weir_core::{Attestations, Identity, ProvisionReply, Provisioning, ServiceFuture};
use weir_storage::dps::{DpsStore, Enrollment, Kind, Registration};

use crate::cli::HubArgs;
use crate::client::HubClient;
use crate::config::{DpsConfig, LinkedHub};

/// A hub devices are created on.
struct Link {
    hostname: String,
    weight: u32,
    client: HubClient,
}

pub struct Inner {
    pub store: Arc<DpsStore>,
    links: Vec<Link>,
    /// Registrations hold it shared, a revocation exclusively: a revocation waits for the
    /// registrations in flight (which checked the enrollment before it changed) and sees
    /// what they stored.
    gate: tokio::sync::RwLock<()>,
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
            DpsStore::open(&data_dir.join("dps.redb"), config.id_scope.as_deref())
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
                gate: tokio::sync::RwLock::new(()),
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
        let _gate = self.inner.gate.write().await;
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
            let device_path = path("devices", device);
            let call = link
                .client
                .call(Method::PUT, &device_path, Some(&body), Some("*"));
            let result = match tokio::time::timeout(Duration::from_secs(10), call).await {
                Ok(r) => r.and_then(|r| r.ok()),
                Err(_) => Err(anyhow::anyhow!("the hub did not answer within 10 s")),
            };
            match result {
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
                Err(f) => f.log_and_reply(who.device_id.as_str()),
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
