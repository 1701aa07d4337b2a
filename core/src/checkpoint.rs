//! Where the engine keeps how far a stateful part of it (the insights) has come, so that
//! after a restart it replays only what that state still needs.

/// A stateful operator's progress through the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The lowest offset its state still needs: a replay starts here, and the log keeps
    /// everything from here on.
    pub floor: u64,
    /// Everything it produced from events below this offset is durably in the log.
    pub position: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("checkpoint store: {0}")]
pub struct CheckpointError(pub String);

/// A durable store of checkpoints by name.
pub trait Checkpoints: Send + Sync {
    fn load(&self, name: &str) -> Result<Option<Checkpoint>, CheckpointError>;
    /// Durable when it returns.
    fn store(&self, name: &str, checkpoint: Checkpoint) -> Result<(), CheckpointError>;
}
