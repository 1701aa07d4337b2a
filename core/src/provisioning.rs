//! What gateways ask of the provisioning service (IoT DPS's device protocol): who may
//! register under a registration id, and the registration itself. The service decides
//! which hub a device goes to and creates it there; gateways only carry the exchange.

use std::sync::Arc;

use bytes::Bytes;

use crate::device::CaCertificate;
use crate::identity::Identity;
use crate::services::ServiceFuture;

/// How a registration id may prove itself: symmetric keys (an individual enrollment's,
/// or derived from a group's), certificate thumbprints, or CA certificates its chain must
/// lead to (with its subject CN as the registration id).
#[derive(Debug, Clone, Default)]
pub struct Attestations {
    pub keys: Vec<String>,
    pub thumbprints: Vec<String>,
    pub cas: Vec<Arc<CaCertificate>>,
}

/// The answer to a registration request or a status poll: the status code and body of
/// IoT DPS's RegistrationOperationStatus, and how long the device should wait before it
/// asks again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionReply {
    pub status: u16,
    pub body: Bytes,
    pub retry_after: Option<u32>,
}

pub trait Provisioning: Send + Sync + 'static {
    /// The service's ID scope: the first segment of a registration's username.
    fn id_scope(&self) -> &str;
    /// Everything `registration_id` may attest with; empty when nothing is enrolled for
    /// it (or its enrollment is disabled).
    fn attestations(&self, registration_id: &str) -> Attestations;
    /// Registers the device `who` (authenticated) with the device's custom `payload` (JSON,
    /// or empty).
    fn register(&self, who: Arc<Identity>, payload: Bytes) -> ServiceFuture<ProvisionReply>;
    /// The state of an earlier registration.
    fn status(&self, who: Arc<Identity>, operation_id: String) -> ServiceFuture<ProvisionReply>;
}
