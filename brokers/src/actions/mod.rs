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

/// The two kinds differ only in their variant and the task that acts.
macro_rules! action_kind {
    ($kind:ident, $name:expr, $variant:path, $run:path) => {
        impl Kind for $kind {
            const NAME: &'static str = $name;
            type Message = Action;
            type Context = Hub;

            fn template(kind: &EndpointKind) -> Option<&str> {
                match kind {
                    $variant(o) => Some(&o.target),
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
                let $variant(o) = kind else {
                    return None;
                };
                Some($run(rt, hub.clone(), o.clone(), endpoint.to_owned()))
            }

            fn message(d: &Delivery, target: &str) -> Action {
                Action {
                    target: target.to_owned(),
                    delivery: d.clone(),
                }
            }
        }
    };
}

action_kind!(Method, METHOD, EndpointKind::Method, run::methods);
action_kind!(C2d, C2D, EndpointKind::C2d, run::c2d);
