//! What a rule set tells a sink about an endpoint, and what it hands the sink per event.

use std::sync::Arc;

use crate::event::Event;

/// The type of a typed column declared on an endpoint (`"double:$body.temp"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Double,
    Int64,
    String,
    Bool,
    /// Milliseconds since the epoch, UTC; from a number or an RFC 3339 string.
    Timestamp,
}

impl ColumnType {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "double" | "float64" | "float" => Some(ColumnType::Double),
            "int64" | "long" | "bigint" | "int" => Some(ColumnType::Int64),
            "string" | "utf8" | "varchar" => Some(ColumnType::String),
            "bool" | "boolean" => Some(ColumnType::Bool),
            "timestamp" => Some(ColumnType::Timestamp),
            _ => None,
        }
    }

    pub const NAMES: &'static str = "double, int64, string, bool, timestamp";
}

/// One typed column of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnSpec {
    pub name: String,
    pub ty: ColumnType,
}

/// The value of a typed column for one delivery. `Null` when the expression was undefined
/// or of the wrong type.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValue {
    Null,
    Double(f64),
    Int64(i64),
    String(String),
    Bool(bool),
    Timestamp(i64),
}

/// Where an endpoint writes: one variant per sink kind, with that kind's options as its
/// own module validated them (see [`EndpointCatalog`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    Parquet(ParquetOptions),
    Amqp(AmqpOptions),
    Mqtt(MqttOptions),
    Webhook(WebhookOptions),
    /// Forwarding from an edge to its hub over the `[upstream]` link of weir.toml
    /// (`weir_brokers::upstream`); it has no options of its own.
    Upstream,
    /// Invokes a direct method on a device for each message (`weir_brokers::actions`).
    Method(ActionOptions),
    /// Queues a cloud-to-device message for a device for each message.
    C2d(ActionOptions),
}

/// The options of an endpoint that acts on a device (`method` and `c2d` endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActionOptions {
    /// The device to act on: a template, `{deviceId}` (the sender) by default.
    pub target: String,
    /// The method name template (`method` endpoints only).
    pub method: String,
    /// The payload as JSON text, whose strings are templates (`{body.temp}` alone in a
    /// string puts the body's value there); `None`: the message body as it is.
    pub payload: Option<String>,
    /// How long a method waits for the device's answer; how long a C2D message waits for
    /// its device.
    pub timeout_secs: u32,
}

/// A Parquet endpoint's options (checked by `weir_storage::parquet`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ParquetOptions {
    /// Partition directory template, e.g. `date={date}/hour={hour}`; `None` means the
    /// archive's default.
    pub path: Option<String>,
}

/// An AMQP 0-9-1 endpoint's options (checked by `weir_brokers::amqp`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AmqpOptions {
    pub url: SecretUrl,
    /// A durable topic exchange, declared when missing.
    pub exchange: String,
    /// Routing key template (`{route}.{deviceId}`, see `weir_brokers::template`).
    pub routing_key: String,
    /// Publish as mandatory: a message no queue is bound for is a failure of the endpoint
    /// (retried, kept in the log), not silently dropped by the broker.
    pub mandatory: bool,
}

/// An MQTT endpoint's options (checked by `weir_brokers::mqtt`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MqttOptions {
    /// `mqtt://[user:password@]host[:port]` or `mqtts://...`.
    pub url: SecretUrl,
    /// Topic template (`weir/{route}/{deviceId}`, see `weir_brokers::template`).
    pub topic: String,
    /// The MQTT client id, to which `-w<worker>` is appended; default `weir-<endpoint>`.
    pub client_id: Option<String>,
    /// PEM file of the CA that signs the broker's certificate (`mqtts` only).
    pub ca: Option<String>,
}

/// A webhook endpoint's options (checked by `weir_brokers::webhook`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WebhookOptions {
    pub url: SecretUrl,
    /// Signs every request: `X-Weir-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    pub secret: Secret,
    pub max_batch: u32,
    pub max_batch_bytes: u32,
    pub max_delay_ms: u32,
    /// PEM file of the CA that signs the receiver's certificate (`https` only).
    pub ca: Option<String>,
}

/// A secret that `Debug` and `Display` never show.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A URL that may carry credentials: its `Debug` and `Display` hide the password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The URL with its password, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}{path}")
            }
            None => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl EndpointKind {
    /// The sink kind that writes this endpoint (its `type` in rules files).
    pub fn sink(&self) -> &'static str {
        match self {
            EndpointKind::Parquet(_) => "parquet",
            EndpointKind::Amqp(_) => "amqp",
            EndpointKind::Mqtt(_) => "mqtt",
            EndpointKind::Webhook(_) => "webhook",
            EndpointKind::Upstream => "upstream",
            EndpointKind::Method(_) => "method",
            EndpointKind::C2d(_) => "c2d",
        }
    }

    /// The options when this is a Parquet endpoint.
    pub fn parquet(&self) -> Option<&ParquetOptions> {
        match self {
            EndpointKind::Parquet(o) => Some(o),
            _ => None,
        }
    }

    /// The options when this is an MQTT endpoint.
    pub fn mqtt(&self) -> Option<&MqttOptions> {
        match self {
            EndpointKind::Mqtt(o) => Some(o),
            _ => None,
        }
    }

    /// The options when this is a webhook endpoint.
    pub fn webhook(&self) -> Option<&WebhookOptions> {
        match self {
            EndpointKind::Webhook(o) => Some(o),
            _ => None,
        }
    }

    /// The options when this endpoint acts on devices (`method`, `c2d`).
    pub fn action(&self) -> Option<&ActionOptions> {
        match self {
            EndpointKind::Method(o) | EndpointKind::C2d(o) => Some(o),
            _ => None,
        }
    }

    /// The options when this is an AMQP endpoint.
    pub fn amqp(&self) -> Option<&AmqpOptions> {
        match self {
            EndpointKind::Amqp(o) => Some(o),
            _ => None,
        }
    }
}

/// Why an endpoint's options were refused; `key` names the option when one is to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    pub key: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl OptionError {
    pub fn new(key: Option<&str>, message: impl Into<String>, hint: Option<String>) -> Self {
        OptionError {
            key: key.map(str::to_owned),
            message: message.into(),
            hint,
        }
    }
}

/// The endpoint kinds a hub can write to. Rules files are checked against it: each sink
/// kind reads and validates its own options, so nothing outside a sink's module knows them.
pub trait EndpointCatalog: Send + Sync {
    /// The `type`s it knows, lower case.
    fn kinds(&self) -> Vec<&'static str>;

    /// Builds an endpoint of `kind` from `options`: the keys of its table other than
    /// `name`, `type` and `columns`.
    fn endpoint(
        &self,
        kind: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<EndpointKind, OptionError>;
}

/// An endpoint as declared in the rules files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub name: Arc<str>,
    pub kind: EndpointKind,
    pub columns: Vec<ColumnSpec>,
    /// Where deliveries go that this endpoint could not take in time; `None` keeps them in
    /// the log until it can.
    pub dead_letter: Option<DeadLetterPolicy>,
}

/// `dead_letter = "<endpoint>"` and `max_retry_secs` of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeadLetterPolicy {
    pub endpoint: Arc<str>,
    /// A delivery whose event was enqueued longer ago than this while the endpoint keeps
    /// failing goes to `endpoint`.
    pub max_retry: std::time::Duration,
}

/// One event on its way into one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The priority of the routes that sent it here (0..=9; what an edge drops first).
    pub priority: u8,
    pub event: Arc<Event>,
    /// Enrichments for this endpoint, appended to the application properties on write.
    pub enrichments: Vec<(String, String)>,
    /// One value per column of the endpoint, in declaration order.
    pub columns: Vec<ColumnValue>,
    /// The version of the rule set that routed the event (see `weir rules check`).
    pub rules_version: Arc<str>,
    /// The first route (in file order) that sent the event here; `$fallback` when no
    /// route matched and the fallback endpoints took it.
    pub route: Arc<str>,
}

impl Delivery {
    /// `event` sent by `route`, without enrichments or columns, at the default priority
    /// (tools and tests).
    pub fn plain(event: Event, route: &str) -> Delivery {
        Delivery {
            priority: crate::DEFAULT_PRIORITY,
            event: Arc::new(event),
            enrichments: Vec::new(),
            columns: Vec::new(),
            rules_version: Arc::from("v"),
            route: Arc::from(route),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SecretUrl;

    #[test]
    fn urls_hide_their_password() {
        let u = SecretUrl::new("amqp://weir:s3cret@broker:5672/%2f");
        assert_eq!(u.to_string(), "amqp://weir:***@broker:5672/%2f");
        assert_eq!(format!("{u:?}"), "amqp://weir:***@broker:5672/%2f");
        assert_eq!(u.expose(), "amqp://weir:s3cret@broker:5672/%2f");
        assert_eq!(
            SecretUrl::new("amqp://127.0.0.1").to_string(),
            "amqp://127.0.0.1"
        );
    }
}
