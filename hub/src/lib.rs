//! The hub's device services: registry operations and the events they cause, twins,
//! direct methods and cloud-to-device messages.
//!
//! The REST API and every gateway talk to one [`Hub`]. Gateways reach it through
//! [`weir_core::DeviceServices`]; it reaches devices through the
//! [`weir_core::ConnectionRegistry`] all gateways register their connections in, with
//! typed messages ([`weir_core::ToDevice`]) each gateway encodes in its own protocol. It
//! does its blocking work (the registry and queues on disk) off the callers' I/O threads.

mod c2d;
mod devices;
pub mod documents;
mod elsewhere;
mod error;
pub mod events;
pub mod methods;
mod peers;
mod replica;
mod services;
mod twins;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_core::ConnectionRegistry;
use weir_storage::Registry;
use weir_storage::c2d::C2dStore;

pub use c2d::NewC2dMessage;
pub use error::HubError;
pub use events::Events;
pub use replica::RegistryReplica;

struct Inner {
    registry: Arc<Registry>,
    c2d: Arc<C2dStore>,
    events: Events,
    methods: methods::Methods,
    connections: Arc<ConnectionRegistry>,
    /// The cloud-to-device message each device has in flight (one at a time, in order).
    /// Per device, the cloud-to-device message on its way: its lock, and the connection
    /// that carries it (the device's own, or its edge's).
    c2d_inflight: Mutex<HashMap<String, (u64, String)>>,
    /// In a cluster: the other processes, for direct methods.
    peers: std::sync::OnceLock<peers::Peers>,
}

/// A handle on the hub's services; cloning is cheap.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// Runs blocking work (redb) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HubError> + Send + 'static,
) -> Result<T, HubError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(HubError::internal)?
}

impl Hub {
    pub fn new(
        registry: Arc<Registry>,
        c2d: Arc<C2dStore>,
        events: Events,
        connections: Arc<ConnectionRegistry>,
    ) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                registry,
                c2d,
                events,
                methods: methods::Methods::default(),
                connections,
                c2d_inflight: Mutex::new(HashMap::new()),
                peers: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    pub fn connections(&self) -> &Arc<ConnectionRegistry> {
        &self.inner.connections
    }

    pub fn is_connected(&self, device: &str) -> bool {
        self.inner.connections.is_connected(device)
    }

    /// Cloud-to-device messages waiting for `device`.
    pub fn c2d_pending(&self, device: &str) -> usize {
        self.inner.c2d.pending(device)
    }

    /// Keeps the hub's queues in order until `shutdown`: expires cloud-to-device messages
    /// and feedback (every second) and moves staged hub events to the log.
    pub async fn maintain(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let outbox = tokio::spawn(events::dispatch_outbox(
            Arc::clone(&self.inner.registry),
            self.inner.events.clone(),
            shutdown.clone(),
        ));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let hub = self.clone();
            let _ = tokio::task::spawn_blocking(move || hub.expire_c2d()).await;
        }
        let _ = outbox.await;
    }
}
