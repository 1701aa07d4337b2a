//! Writing events Weir makes itself (dead letters, insight results) to the ingest log, from
//! a dataflow worker.

use weir_core::{Event, Ingest, IngestError};

/// Appends `events` to the log and waits until they are durable. Each device's events
/// stay in order.
pub(crate) fn durably(ingest: &dyn Ingest, events: Vec<Event>) -> Result<(), IngestError> {
    let mut batches: Vec<Vec<Event>> = Vec::new();
    for e in events {
        match batches
            .last_mut()
            .filter(|b| b.first().is_some_and(|f| f.device_id == e.device_id))
        {
            Some(b) => b.push(e),
            None => batches.push(vec![e]),
        }
    }
    futures_lite::future::block_on(async {
        let mut acks = Vec::with_capacity(batches.len());
        for b in batches {
            let device = b[0].device_id.clone();
            acks.push(ingest.ingest(&device, b).await?);
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    })
}
