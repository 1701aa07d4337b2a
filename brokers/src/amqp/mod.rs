//! The `amqp` endpoint kind: publishes to a RabbitMQ (AMQP 0-9-1) topic exchange with
//! persistent delivery and publisher confirms, at least once (see `crate::sink`).

mod message;
pub mod options;
mod publisher;

use weir_core::{Delivery, EndpointKind};

pub use message::{message_source, properties};

use crate::Kind;
use crate::factory::BrokerSinkFactory;
use crate::link::Link;

/// The sink kind, as rules files name it and the commit store keys it.
pub const KIND: &str = "amqp";

/// RabbitMQ endpoints.
pub struct Amqp;

pub type AmqpSinkFactory = BrokerSinkFactory<Amqp>;

impl Kind for Amqp {
    const NAME: &'static str = KIND;
    type Message = publisher::Message;
    type Context = ();

    fn template(kind: &EndpointKind) -> Option<&str> {
        kind.amqp().map(|o| o.routing_key.as_str())
    }

    fn open(
        _: &(),
        rt: &tokio::runtime::Handle,
        kind: &EndpointKind,
        endpoint: &str,
        _worker: usize,
    ) -> Option<Link<Self::Message>> {
        let o = kind.amqp()?;
        Some(publisher::open(rt, o.clone(), endpoint.to_owned()))
    }

    fn message(d: &Delivery, key: &str) -> Self::Message {
        // A routing key is a short string: at most 255 bytes.
        let mut end = key.len().min(255);
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        publisher::Message {
            routing_key: key[..end].to_owned(),
            body: d.event.body.to_vec(),
            properties: properties(d),
        }
    }
}
