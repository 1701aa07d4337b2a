//! The `upstream` endpoint kind: an edge forwards what its routes send here to its hub,
//! over one MQTT connection as its own IoT Edge identity, publishing each device's
//! messages on that device's topic (decision 031).
//!
//! Exactly once at the hub, given the generic sink's at-least-once delivery: every message
//! carries a `$.mid` (the device's own, or `edge-{offset}` of the edge's log), so what a
//! reconnect sends again is recognised by the hub's duplicate window.

mod children;
mod config;
mod edge_work;
mod forward;
mod lanes;
mod link;
mod message;
mod queue;
mod quic;
mod ws;

pub use children::Children;
pub use config::{Credential, Transport, UpstreamConfig};
pub use link::{LinkState, Uplink};

use std::sync::Arc;

use serde_json::{Map, Value};
use weir_core::{Delivery, EndpointKind, OptionError};

use crate::Kind;
use crate::factory::BrokerSinkFactory;
use crate::link::Link;

/// The sink kind, as rules files name it and the commit store keys it.
pub const KIND: &str = "upstream";

/// Forwarding to the hub.
pub struct Upstream;

pub type UpstreamSinkFactory = BrokerSinkFactory<Upstream>;

impl Kind for Upstream {
    const NAME: &'static str = KIND;
    type Message = message::Queued;
    /// The edge's one connection to its hub; `None` on a hub without `[upstream]`, where
    /// an `upstream` endpoint fails with a message saying so.
    type Context = Option<Arc<Uplink>>;

    fn template(kind: &EndpointKind) -> Option<&str> {
        // The topic is the device's own: the generic sink needs a template, an empty one
        // renders nothing.
        matches!(kind, EndpointKind::Upstream).then_some("")
    }

    fn open(
        uplink: &Self::Context,
        rt: &tokio::runtime::Handle,
        kind: &EndpointKind,
        endpoint: &str,
        _worker: usize,
    ) -> Option<Link<Self::Message>> {
        if !matches!(kind, EndpointKind::Upstream) {
            return None;
        }
        Some(queue::open(rt, uplink.clone(), endpoint.to_owned()))
    }

    fn message(d: &Delivery, _key: &str) -> Self::Message {
        message::Queued {
            event: std::sync::Arc::clone(&d.event),
            priority: d.priority,
            route: std::sync::Arc::clone(&d.route),
        }
    }
}

/// Checks an `upstream` endpoint's options: it has none (the link is `[upstream]` in
/// weir.toml).
pub fn options(map: &Map<String, Value>) -> Result<EndpointKind, OptionError> {
    match map.keys().next() {
        None => Ok(EndpointKind::Upstream),
        Some(k) => Err(OptionError::new(
            Some(k),
            format!("unknown option `{k}` for an upstream endpoint"),
            Some("an upstream endpoint has no options: the hub and the edge's identity are [upstream] in weir.toml".into()),
        )),
    }
}
