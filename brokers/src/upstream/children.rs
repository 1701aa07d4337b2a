//! An edge keeps its children: their identities and credentials as the hub lists them (so
//! they authenticate at the edge while the hub is unreachable) and their desired
//! properties (passed on as the hub changes them, kept for a child that connects later).

use std::collections::HashSet;

use serde_json::Value;
use weir_core::device::normalize_thumbprint;
use weir_core::{DeviceAuth, DeviceDirectory, DeviceStatus};
use weir_hub::{Hub, HubError};
use weir_storage::{AuthType, DeviceUpsert};

/// The edge's local view of its children.
#[derive(Clone)]
pub struct Children {
    pub hub: Hub,
    pub edge: String,
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A child's Device document (as the hub sends it) as a registry update.
fn upsert(edge: &str, doc: &Value) -> Option<DeviceUpsert> {
    let device_id = text(doc, &["deviceId"])?;
    let auth_type = AuthType::parse(&text(doc, &["authentication", "type"])?)?;
    let status = match text(doc, &["status"]).as_deref() {
        Some("disabled") => DeviceStatus::Disabled,
        _ => DeviceStatus::Enabled,
    };
    Some(DeviceUpsert {
        device_id,
        status: Some(status),
        status_reason: text(doc, &["statusReason"]),
        auth_type: Some(auth_type),
        primary_key: text(doc, &["authentication", "symmetricKey", "primaryKey"]),
        secondary_key: text(doc, &["authentication", "symmetricKey", "secondaryKey"]),
        primary_thumbprint: text(
            doc,
            &["authentication", "x509Thumbprint", "primaryThumbprint"],
        ),
        secondary_thumbprint: text(
            doc,
            &["authentication", "x509Thumbprint", "secondaryThumbprint"],
        ),
        thumbprints_given: auth_type == AuthType::SelfSigned,
        tags: None,
        iot_edge: Some(false),
        parent: Some(Some(edge.to_owned())),
    })
}

/// The credential `req` sets, to compare with what the registry holds.
fn expected_auth(req: &DeviceUpsert) -> Option<DeviceAuth> {
    let thumb = |t: &Option<String>| t.as_deref().and_then(normalize_thumbprint);
    Some(match req.auth_type? {
        AuthType::Sas => DeviceAuth::Sas {
            primary_key: req.primary_key.clone()?,
            secondary_key: req.secondary_key.clone()?,
        },
        AuthType::SelfSigned => DeviceAuth::SelfSigned {
            primary_thumbprint: thumb(&req.primary_thumbprint)?,
            secondary_thumbprint: thumb(&req.secondary_thumbprint),
        },
        AuthType::CertificateAuthority => DeviceAuth::CertificateAuthority,
    })
}

fn without_version(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.remove("$version");
        m.remove("$metadata");
    }
    v
}

impl Children {
    /// The edge's own identity in its registry: the parent its children name. It is
    /// disabled: nothing connects to the edge as the edge.
    async fn ensure_self(&self) -> Result<(), HubError> {
        if self.hub.registry().get(&self.edge).is_some() {
            return Ok(());
        }
        let me = DeviceUpsert {
            device_id: self.edge.clone(),
            status: Some(DeviceStatus::Disabled),
            status_reason: Some("this edge's own identity on its hub".into()),
            iot_edge: Some(true),
            ..DeviceUpsert::default()
        };
        self.hub.put_device(me, None).await.map(|_| ())
    }

    /// Makes the local children what the hub listed: creates, updates and deletes
    /// identities, and sets desired properties that differ. Returns how many changed.
    pub async fn sync(&self, listed: &[Value]) -> Result<usize, HubError> {
        self.ensure_self().await?;
        let registry = self.hub.registry().clone();
        let mut changed = 0;
        let mut seen = HashSet::new();
        for doc in listed {
            let Some(req) = upsert(&self.edge, doc) else {
                tracing::warn!("the hub listed a child the edge cannot read; skipped");
                continue;
            };
            let id = req.device_id.clone();
            seen.insert(id.clone());
            let local = registry.get(&id);
            let differs = local.as_deref().is_none_or(|l| {
                l.parent.as_deref() != Some(self.edge.as_str())
                    || Some(l.status) != req.status
                    || Some(&l.auth) != expected_auth(&req).as_ref()
            });
            if differs {
                let condition = local.as_ref().map(|_| "*".to_owned());
                self.hub.put_device(req, condition).await?;
                changed += 1;
            }
            let desired = without_version(&doc["properties"]["desired"]);
            let have = registry
                .get(&id)
                .map(|r| without_version(&r.desired.for_device()));
            if desired.is_object() && have.as_ref() != Some(&desired) {
                self.hub
                    .update_twin(&id, None, Some(desired), true, None)
                    .await?;
                changed += 1;
            }
        }
        for gone in registry.children(&self.edge) {
            if !seen.contains(&gone.device_id) {
                self.hub.delete_device(&gone.device_id, None).await?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// The hub changed a child's desired properties: keep the patch and pass it on.
    pub async fn desired(&self, child: &str, patch: &[u8]) -> Result<(), HubError> {
        let patch: Value = serde_json::from_slice(patch)
            .map_err(|e| HubError::Invalid(format!("a desired patch that is not JSON: {e}")))?;
        let is_child = self
            .hub
            .registry()
            .get(child)
            .is_some_and(|r| r.parent.as_deref() == Some(self.edge.as_str()));
        if !is_child {
            return Err(HubError::Invalid(format!(
                "{child} is not a child of this edge"
            )));
        }
        self.hub
            .update_twin(child, None, Some(without_version(&patch)), false, None)
            .await
            .map(|_| ())
    }
}
