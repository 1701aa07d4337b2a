//! Sinks that deliver to message brokers and HTTP receivers: RabbitMQ over AMQP 0-9-1
//! (`amqp` endpoints), MQTT brokers (`mqtt`) and webhooks (`webhook`), one generic sink
//! over a [`Kind`] per protocol.
//!
//! Unlike the Parquet archive these deliver at least once: a broker cannot take part in
//! Weir's commit, so what was sent but not confirmed before a failure is sent again, with
//! its ingest offset in a header for consumers to recognise.

pub mod actions;
pub mod amqp;
pub mod factory;
pub mod link;
pub mod mqtt;
pub mod sink;
pub mod template;
pub mod tls;
pub mod upstream;
pub mod webhook;

use serde_json::{Map, Value};
use weir_core::{Delivery, EndpointKind, OptionError};

/// One broker kind: what the generic [`sink::BrokerSink`] needs to publish its endpoints.
pub trait Kind: Send + Sync + 'static {
    /// The endpoint `type` in rules files, and the commit store's key for the sink.
    const NAME: &'static str;
    type Message: Send + 'static;
    /// What every link of the kind shares (the upstream kind's one hub connection).
    type Context: Send + Sync + 'static;

    /// The routing key or topic template of an endpoint of this kind; `None` for others.
    fn template(kind: &EndpointKind) -> Option<&str>;

    /// Starts publishing for `endpoint` (`worker` tells apart the clients of several
    /// workers where a broker needs that); `None` when `kind` is not of this kind.
    fn open(
        ctx: &Self::Context,
        rt: &tokio::runtime::Handle,
        kind: &EndpointKind,
        endpoint: &str,
        worker: usize,
    ) -> Option<link::Link<Self::Message>>;

    /// The message for `d`, with its rendered key or topic.
    fn message(d: &Delivery, key: &str) -> Self::Message;
}

/// The endpoint kinds this crate writes, for checking rules files.
#[derive(Debug, Default, Clone, Copy)]
pub struct Catalog;

impl weir_core::EndpointCatalog for Catalog {
    fn kinds(&self) -> Vec<&'static str> {
        vec![
            amqp::KIND,
            mqtt::KIND,
            webhook::KIND,
            upstream::KIND,
            actions::METHOD,
            actions::C2D,
        ]
    }

    fn endpoint(
        &self,
        kind: &str,
        options: &Map<String, Value>,
    ) -> Result<EndpointKind, OptionError> {
        match kind {
            amqp::KIND => amqp::options::options(options),
            mqtt::KIND => mqtt::options::options(options),
            webhook::KIND => webhook::options::options(options),
            upstream::KIND => upstream::options(options),
            actions::METHOD => actions::method_options(options),
            actions::C2D => actions::c2d_options(options),
            other => Err(OptionError::new(
                None,
                format!("unknown endpoint type {other:?}"),
                None,
            )),
        }
    }
}

/// A string option of an endpoint, or an error naming it.
pub(crate) fn string_option<'a>(key: &str, v: &'a Value) -> Result<&'a str, OptionError> {
    v.as_str()
        .ok_or_else(|| OptionError::new(Some(key), format!("{key} must be a string"), None))
}
