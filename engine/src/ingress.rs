//! The bridge from async gateways into the timely workers.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use timely::scheduling::SyncActivator;
use tokio::sync::mpsc;
use weir_core::{DeviceId, Event, Ingest, IngestError, IngestFuture};

/// A batch of events from one connection, so from one device.
pub type Batch = Vec<Event>;

/// The engine no longer accepts events (it is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine is shutting down and accepts no more events")]
pub struct IngressClosed;

pub(crate) struct WorkerQueue {
    pub tx: mpsc::Sender<Batch>,
    /// Set by the worker once its source operator exists.
    pub activator: OnceLock<SyncActivator>,
}

/// Where gateways send events. Cloning is cheap.
///
/// Each device maps to one worker (the same one the dataflow's exchange picks), so a
/// device's events stay in order, and each worker has a bounded queue: when it is full,
/// `send` waits, and the gateway stops reading from its socket.
#[derive(Clone)]
pub struct Ingress {
    pub(crate) queues: Arc<[WorkerQueue]>,
}

/// The hash the dataflow exchanges on; ingress uses it too so events start on their worker.
pub fn device_hash(id: &DeviceId) -> u64 {
    let mut h = DefaultHasher::new();
    id.as_str().hash(&mut h);
    h.finish()
}

impl Ingress {
    pub fn workers(&self) -> usize {
        self.queues.len()
    }

    pub fn worker_for(&self, id: &DeviceId) -> usize {
        (device_hash(id) % self.queues.len() as u64) as usize
    }

    /// Queues a batch of events, all from `device`, waiting while the worker's queue is full.
    pub async fn send(&self, device: &DeviceId, batch: Batch) -> Result<(), IngressClosed> {
        if batch.is_empty() {
            return Ok(());
        }
        let q = &self.queues[self.worker_for(device)];
        q.tx.send(batch).await.map_err(|_| IngressClosed)?;
        if let Some(a) = q.activator.get() {
            // An error means the worker has exited; the send above would then have failed.
            let _ = a.activate();
        }
        Ok(())
    }

    /// Like [`Ingress::send`], for threads outside an async runtime.
    pub fn send_blocking(&self, device: &DeviceId, batch: Batch) -> Result<(), IngressClosed> {
        if batch.is_empty() {
            return Ok(());
        }
        let q = &self.queues[self.worker_for(device)];
        q.tx.blocking_send(batch).map_err(|_| IngressClosed)?;
        if let Some(a) = q.activator.get() {
            let _ = a.activate();
        }
        Ok(())
    }

    /// Like [`Ingress::send`] but fails instead of waiting when the queue is full.
    pub fn try_send(&self, device: &DeviceId, batch: Batch) -> Result<(), Batch> {
        let q = &self.queues[self.worker_for(device)];
        match q.tx.try_send(batch) {
            Ok(()) => {
                if let Some(a) = q.activator.get() {
                    let _ = a.activate();
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) => {
                Err(b)
            }
        }
    }
}

impl Ingest for Ingress {
    fn ingest(&self, device: &DeviceId, batch: Vec<Event>) -> IngestFuture {
        let this = self.clone();
        let device = device.clone();
        Box::pin(async move {
            this.send(&device, batch)
                .await
                .map_err(|_| IngestError::ShuttingDown)
        })
    }
}
