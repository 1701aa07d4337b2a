//! Weir's shared vocabulary.
//!
//! Every other crate depends on this one and on nothing else of Weir's, so it stays small:
//! the event envelope that flows from a gateway through the engine to a sink, device ids,
//! the device directory the gateways authenticate against and the engine enriches from,
//! and the [`Sink`] seam that storage implements.

pub mod checkpoint;
pub mod codec;
pub mod connections;
pub mod device;
pub mod endpoint;
pub mod event;
pub mod feed;
pub mod health;
pub mod identity;
pub mod ids;
pub mod ingest;
pub mod provisioning;
pub mod record;
pub mod recovery;
pub mod replica;
pub mod services;
pub mod sink;
pub mod text;
pub mod time;
pub mod twin;

pub use checkpoint::{Checkpoint, CheckpointError, Checkpoints};
pub use connections::{
    C2dDelivery, Connection, ConnectionRegistry, Feature, Features, KickReason, Outbox,
    Registration, ToDevice,
};
pub use device::{
    CaCertificate, DeviceAuth, DeviceDirectory, DeviceRecord, DeviceStatus, NoDevices,
    normalize_thumbprint,
};
pub use endpoint::{
    ActionOptions, AmqpOptions, ColumnSpec, ColumnType, ColumnValue, DeadLetterPolicy, Delivery,
    EndpointCatalog, EndpointKind, EndpointSpec, MqttOptions, OptionError, ParquetOptions, Secret,
    SecretUrl, WebhookOptions,
};
/// A route's priority when it names none.
pub const DEFAULT_PRIORITY: u8 = 5;

pub use event::{AuthMethod, Event, EventSource, SystemProperties};
pub use feed::{EventFeed, FeedError, FeedReader};
pub use health::{EndpointHealth, EndpointState, HealthBoard, WorkerHealth};
pub use identity::{Credential, Identity, Peer, Revocation, Role, key_digest};
pub use ids::{DeviceId, InvalidId};
pub use ingest::{AckFuture, Ingest, IngestError, IngestFuture};
pub use provisioning::{Attestations, ProvisionReply, Provisioning};
pub use replica::{Replica, ReplicaError};
pub use services::{DeviceServices, NoServices, ServiceError, ServiceFuture};
pub use sink::{DeadLetterPass, ReplayRequest, Sink, SinkError, SinkFactory};
