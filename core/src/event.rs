//! The event envelope: what a gateway hands the engine and the engine hands a sink.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;

/// Which stream an event belongs to; routes select one (IoT Hub's "data source").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventSource {
    DeviceMessages,
    TwinChangeEvents,
    DeviceLifecycleEvents,
    DeviceConnectionStateEvents,
    /// Results of `[[insight]]`s, which Weir computes and writes to its own log.
    Insights,
    /// An edge's drop ledger: what it dropped from its store-and-forward budget, per route
    /// and device (a JSON body), written to its own log.
    EdgeDrops,
    /// The engine's clock: a tick it writes to its own log so that what insights decide
    /// by wall-clock time happens at a position in the log, the same again on a replay.
    /// No route can select it (it is not in [`EventSource::ALL`]).
    Clock,
    /// A device's whole registry record after a change, written by a process of a cluster
    /// so that every process applies it to its own registry (decision 039). No route can
    /// select it.
    Registry,
    /// A message from one process of a cluster to the others (a direct method for a device
    /// connected elsewhere, and its answer). No route can select it.
    Cluster,
}

impl EventSource {
    pub const ALL: [EventSource; 6] = [
        EventSource::DeviceMessages,
        EventSource::TwinChangeEvents,
        EventSource::DeviceLifecycleEvents,
        EventSource::DeviceConnectionStateEvents,
        EventSource::Insights,
        EventSource::EdgeDrops,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::DeviceMessages => "DeviceMessages",
            EventSource::TwinChangeEvents => "TwinChangeEvents",
            EventSource::DeviceLifecycleEvents => "DeviceLifecycleEvents",
            EventSource::DeviceConnectionStateEvents => "DeviceConnectionStateEvents",
            EventSource::Insights => "Insights",
            EventSource::EdgeDrops => "EdgeDrops",
            EventSource::Clock => "Clock",
            EventSource::Registry => "Registry",
            EventSource::Cluster => "Cluster",
        }
    }

    /// Weir's own bookkeeping, never routed, sampled or archived.
    pub fn is_internal(self) -> bool {
        matches!(
            self,
            EventSource::Clock | EventSource::Registry | EventSource::Cluster
        )
    }

    /// Parses a route's `source`, case-insensitively as IoT Hub does.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|src| src.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the connection that produced the event proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthMethod {
    Sas,
    X509Thumbprint,
    X509Ca,
    /// Events Weir itself produces (lifecycle, twin changes made by a service).
    Internal,
    /// A message taken from a broker queue whose validated AMQP `user_id` names the device
    /// (the AMQP gateway with `trust_user_id`).
    BrokerUserId,
    /// A plain MQTT client mapped onto the device by a `[[translate]]` entry, with a
    /// password (the entry's or the device's key).
    Password,
}

impl AuthMethod {
    /// The `type` IoT Hub reports in `$connectionAuthMethod`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Sas => "sas",
            AuthMethod::X509Thumbprint => "selfSigned",
            AuthMethod::X509Ca => "certificateAuthority",
            AuthMethod::Internal => "internal",
            AuthMethod::BrokerUserId => "brokerUserId",
            AuthMethod::Password => "password",
        }
    }
}

/// IoT Hub system properties a device may set in the property bag (`$.mid`, `$.cid`, ...).
/// Boxed strings, not `String`s: every event in flight carries ten of these, mostly unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemProperties {
    /// `$.mid`
    pub message_id: Option<Box<str>>,
    /// `$.cid`
    pub correlation_id: Option<Box<str>>,
    /// `$.ct`
    pub content_type: Option<Box<str>>,
    /// `$.ce`
    pub content_encoding: Option<Box<str>>,
    /// `$.uid`
    pub user_id: Option<Box<str>>,
    /// `$.on` (module output name)
    pub output_name: Option<Box<str>>,
    /// `iothub-creation-time-utc`, as the device wrote it
    pub creation_time_utc: Option<Box<str>>,
    /// `$.schema` (IoT Plug and Play `dt-dataschema`)
    pub dt_dataschema: Option<Box<str>>,
    /// `$.sub` (IoT Plug and Play `dt-subject`)
    pub dt_subject: Option<Box<str>>,
    /// The edge device that forwarded the message on behalf of the device (set by the hub
    /// from the edge's authenticated connection, never from the property bag).
    pub edge_id: Option<Box<str>>,
}

impl SystemProperties {
    /// The properties that are set and have no archive column of their own (message id,
    /// correlation id and content type do), under the names the `system` column uses:
    /// AMQP's names for the standard message properties, IoT Hub's for its own.
    pub fn others(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("content_encoding", &self.content_encoding),
            ("user_id", &self.user_id),
            ("output_name", &self.output_name),
            ("iothub-creation-time-utc", &self.creation_time_utc),
            ("dt-dataschema", &self.dt_dataschema),
            ("dt-subject", &self.dt_subject),
            ("weir-edge", &self.edge_id),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }
}

/// One event on its way through Weir.
///
/// `enqueued_ms` is the time Weir accepted the event and is the engine's notion of time:
/// sinks partition by it and the dataflow frontier is expressed in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub source: EventSource,
    pub device_id: DeviceId,
    pub module_id: Option<Arc<str>>,
    /// The registry generation id of the device at the time it connected.
    pub generation_id: Option<Arc<str>>,
    pub auth_method: AuthMethod,
    /// The gateway the event came through (`mqtt`, `mqtt-ws`, `mqtt-quic`, `amqp`); `None`
    /// for events Weir makes itself. Routes see it as `$weirGateway`.
    pub gateway: Option<Arc<str>>,
    /// Set on an event Weir wrote back to its log because an endpoint could not deliver it
    /// in time: the dead-letter endpoint it goes to, whatever the routes say.
    pub dead_letter: Option<Arc<str>>,
    pub enqueued_ms: i64,
    /// Position in the ingest log; ties an archived row back to what was acknowledged.
    pub offset: u64,
    /// The MQTT packet id the device used (QoS 1), for recognising retransmissions.
    pub packet_id: Option<u16>,
    /// The device marked this as a retransmission (MQTT DUP).
    pub redelivered: bool,
    pub system: SystemProperties,
    /// Application properties, in the order the device sent them; keys are unique.
    pub properties: Vec<(String, String)>,
    pub body: Bytes,
}

impl Event {
    /// A device-to-cloud message with no properties; gateways fill in the rest.
    pub fn telemetry(device_id: DeviceId, enqueued_ms: i64, body: Bytes) -> Self {
        Event {
            source: EventSource::DeviceMessages,
            device_id,
            module_id: None,
            generation_id: None,
            auth_method: AuthMethod::Sas,
            gateway: None,
            dead_letter: None,
            enqueued_ms,
            offset: 0,
            packet_id: None,
            redelivered: false,
            system: SystemProperties::default(),
            properties: Vec::new(),
            body,
        }
    }

    /// Looks up an application property, case-insensitively as IoT Hub does.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
