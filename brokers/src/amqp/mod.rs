//! The `amqp` endpoint kind: publishes to a RabbitMQ (AMQP 0-9-1) topic exchange with
//! persistent delivery and publisher confirms, at least once (see `sink.rs`).

mod factory;
mod message;
pub mod options;
mod publisher;
mod sink;

pub use factory::AmqpSinkFactory;
pub use message::{message_source, properties};

/// The sink kind, as rules files name it and the commit store keys it.
pub const KIND: &str = "amqp";
