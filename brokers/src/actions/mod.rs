//! Endpoints that act on devices instead of delivering somewhere: `method` invokes a
//! direct method, `c2d` queues a cloud-to-device message, for each message a route sends
//! them. A rule such as `$body.temp > 80` can so stop a machine from the hub, or from an
//! edge while its uplink is down, without any application code (decision 032).
//!
//! An action is attempted once per message: a device that is offline, unknown or does not
//! answer in time is logged and counted, and the endpoint goes on (retrying a shutdown
//! minutes later would be worse than not at all). Only a failure of the hub itself (its
//! cloud-to-device store) fails the endpoint, which then retries from its commit point.

mod options;
mod payload;
mod run;

pub use options::{c2d_options, method_options};
pub use payload::Payload;

use weir_core::{Delivery, EndpointKind};
use weir_hub::Hub;

use crate::Kind;
use crate::link::Link;

pub const METHOD: &str = "method";
pub const C2D: &str = "c2d";

/// One action: the device it is for (the rendered `target`) and the message.
pub struct Action {
    pub target: String,
    pub delivery: Delivery,
}

/// `type = "method"` endpoints.
pub struct Method;

/// `type = "c2d"` endpoints.
pub struct C2d;

impl Kind for Method {
    const NAME: &'static str = METHOD;
    type Message = Action;
    type Context = Hub;

    fn template(kind: &EndpointKind) -> Option<&str> {
        match kind {
            EndpointKind::Method(o) => Some(&o.target),
            _ => None,
        }
    }

    fn open(
        hub: &Hub,
        rt: &tokio::runtime::Handle,
        kind: &EndpointKind,
        endpoint: &str,
        _worker: usize,
    ) -> Option<Link<Action>> {
        let EndpointKind::Method(o) = kind else {
            return None;
        };
        Some(run::methods(
            rt,
            hub.clone(),
            o.clone(),
            endpoint.to_owned(),
        ))
    }

    fn message(d: &Delivery, target: &str) -> Action {
        Action {
            target: target.to_owned(),
            delivery: d.clone(),
        }
    }
}

impl Kind for C2d {
    const NAME: &'static str = C2D;
    type Message = Action;
    type Context = Hub;

    fn template(kind: &EndpointKind) -> Option<&str> {
        match kind {
            EndpointKind::C2d(o) => Some(&o.target),
            _ => None,
        }
    }

    fn open(
        hub: &Hub,
        rt: &tokio::runtime::Handle,
        kind: &EndpointKind,
        endpoint: &str,
        _worker: usize,
    ) -> Option<Link<Action>> {
        let EndpointKind::C2d(o) = kind else {
            return None;
        };
        Some(run::c2d(rt, hub.clone(), o.clone(), endpoint.to_owned()))
    }

    fn message(d: &Delivery, target: &str) -> Action {
        Action {
            target: target.to_owned(),
            delivery: d.clone(),
        }
    }
}
