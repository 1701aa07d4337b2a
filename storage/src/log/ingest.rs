//! The gateways' side of the log.

use tokio::sync::oneshot;
use weir_core::feed::device_hash;
use weir_core::{AckFuture, DeviceId, Event, Ingest, IngestError, IngestFuture};

use super::writer::Append;

/// Appends batches to the log; cloning is cheap.
#[derive(Clone)]
pub struct LogIngest {
    tx: Option<flume::Sender<Append>>,
}

impl LogIngest {
    pub(crate) fn new(tx: Option<flume::Sender<Append>>) -> LogIngest {
        LogIngest { tx }
    }
}

impl Ingest for LogIngest {
    fn ingest(&self, device: &DeviceId, events: Vec<Event>) -> IngestFuture {
        let tx = self.tx.clone();
        let hash = device_hash(device.as_str());
        Box::pin(async move {
            let tx = tx.ok_or(IngestError::ShuttingDown)?;
            let (done, ack) = oneshot::channel();
            tx.send_async(Append { hash, events, done })
                .await
                .map_err(|_| IngestError::ShuttingDown)?;
            let ack: AckFuture =
                Box::pin(async move { ack.await.unwrap_or(Err(IngestError::ShuttingDown)) });
            Ok(ack)
        })
    }
}
