//! How the engine hands registry changes made on other processes of a cluster to this
//! process's registry, and the processes' messages to each other (decision 039).

use std::sync::Arc;

use crate::Event;

#[derive(Debug, thiserror::Error)]
#[error("registry replica: {0}")]
pub struct ReplicaError(pub String);

/// A process's copy of the registry, kept up to date from every process's log.
pub trait Replica: Send + Sync {
    /// Every change below this offset is applied, durably: the engine reads the logs from
    /// no later than this at its start.
    fn applied(&self) -> u64;
    /// Applies `changes` (events of the `Registry` source, in offset order, all below
    /// `through`) and returns how far the replica is now durably applied: `through`, or
    /// less when it saves only now and then while nothing changes.
    fn apply(&self, changes: &[Arc<Event>], through: u64) -> Result<u64, ReplicaError>;
    /// A `Cluster` event (a message between processes), as soon as it arrives: messages
    /// need no order, and answer calls someone waits for.
    fn deliver(&self, message: &Event) {
        let _ = message;
    }
}
