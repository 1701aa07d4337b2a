//! What a session asks of its driver ([`Action`]) and how it ended ([`End`]): the
//! vocabulary between the I/O-free session (`session.rs`) and the driver (`driver.rs`).

use std::sync::Arc;

use bytes::Bytes;
use weir_core::{DeviceId, Event, Features, Identity, IngestError, KickReason, Revocation};

use super::dialect::C2dLock;
use crate::throttle::Throttled;

/// Why a session ended; logged once.
#[derive(Debug)]
pub enum End {
    /// Refused before CONNACK 0 (the reason is for the log; no secrets).
    Refused(String),
    /// CONNACK 3: a connect rate limit was reached.
    Throttled(Throttled),
    PeerClosed,
    Disconnect,
    Replaced,
    Revoked(Revocation),
    ShuttingDown,
    /// Telemetry could not be made durable; nothing of it was acknowledged.
    NotStored(IngestError),
    KeepAlive,
    Io(std::io::Error),
    Violation(String),
}

impl From<KickReason> for End {
    fn from(k: KickReason) -> End {
        match k {
            KickReason::Replaced => End::Replaced,
            KickReason::Revoked(r) => End::Revoked(r),
            KickReason::ShuttingDown => End::ShuttingDown,
        }
    }
}

/// What the driver must do for the session.
#[derive(Debug)]
pub enum Action {
    /// The device authenticated: register the connection (replacing the device's other
    /// one, on any gateway) with these features, read its stored subscriptions unless
    /// `clean`, then call [`Session::registered`].
    Register {
        identity: Arc<Identity>,
        features: Arc<Features>,
        clean: bool,
    },
    /// The connection is up (CONNACK is written): tell the hub.
    Connected,
    /// Make these events durable, then call [`Session::ingested`]; read nothing more from
    /// the device meanwhile (that is the backpressure).
    Ingest {
        events: Vec<Event>,
        acks: bool,
    },
    /// Read the twin; answer with [`Session::twin_read`].
    TwinGet {
        rid: String,
    },
    /// Apply a reported-properties patch; answer with [`Session::twin_patched`].
    TwinPatch {
        rid: String,
        patch: Bytes,
    },
    MethodResponse {
        rid: String,
        status: i32,
        payload: Bytes,
    },
    /// An edge answered a direct method for its child.
    ChildMethodResponse {
        child: DeviceId,
        rid: String,
        status: i32,
        payload: Bytes,
    },
    /// An edge asked for its children; answer with [`Session::children_read`].
    ChildrenGet {
        rid: String,
    },
    /// Ask the provisioning service to register the device (`operation_id` `None`) or for
    /// the state of a registration; answer with [`Session::provisioned`].
    Provision {
        rid: String,
        operation_id: Option<String>,
        payload: Bytes,
    },
    C2dAcknowledged(C2dLock),
    /// A persistent session's subscriptions changed.
    StoreSubscriptions(Vec<String>),
    /// The device subscribed to cloud-to-device messages: waiting ones can go out.
    C2dReady,
    Close(End),
}
