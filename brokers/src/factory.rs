//! Creates each worker's sink of one broker kind from what earlier runs committed.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use weir_core::feed::{PARTITIONS, partitions_of};
use weir_core::{HealthBoard, Sink, SinkError, SinkFactory};
use weir_storage::commit::{CommitStore, Committed};

use crate::Kind;
use crate::sink::{BrokerSink, Endpoint};

pub struct BrokerSinkFactory<K: Kind> {
    rt: tokio::runtime::Handle,
    store: Arc<CommitStore>,
    health: Arc<HealthBoard>,
    committed: Committed,
    ctx: Arc<K::Context>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Kind> BrokerSinkFactory<K> {
    /// Links run on `rt`; commit points live in `store` under the kind's name.
    pub fn new(
        rt: tokio::runtime::Handle,
        store: Arc<CommitStore>,
        health: Arc<HealthBoard>,
        ctx: Arc<K::Context>,
    ) -> Result<Self, SinkError> {
        let committed = store.snapshot(K::NAME).map_err(|e| SinkError::Io {
            path: "commits.redb".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(BrokerSinkFactory {
            rt,
            store,
            health,
            committed,
            ctx,
            kind: PhantomData,
        })
    }
}

impl<K: Kind> SinkFactory for BrokerSinkFactory<K> {
    fn kind(&self) -> &'static str {
        K::NAME
    }

    fn recovered_floor(&self) -> u64 {
        self.recovered_floor_of(&(0..weir_core::feed::PARTITIONS).collect::<Vec<_>>())
    }

    fn recovered_floor_of(&self, partitions: &[u16]) -> u64 {
        // Nothing recorded yet (the first run with this kind): no constraint on where the
        // engine starts reading; the other sinks' commit points decide.
        let fresh =
            self.committed.endpoints.is_empty() && self.committed.frontier.iter().all(|&f| f == 0);
        if fresh {
            u64::MAX
        } else {
            self.committed.floor_of(partitions)
        }
    }

    fn open(&self, worker: usize, workers: usize) -> Result<Box<dyn Sink>, SinkError> {
        let partitions = partitions_of(worker, workers);
        let frontiers = self.committed.frontier.clone();
        let start = partitions
            .iter()
            .map(|p| frontiers[usize::from(*p)])
            .min()
            .unwrap_or(0);
        let endpoints: HashMap<String, Endpoint<K::Message>> = self
            .committed
            .endpoints
            .keys()
            .map(|name| {
                let committed = (0..PARTITIONS)
                    .map(|p| self.committed.committed(name, p))
                    .collect();
                (name.clone(), Endpoint::new(committed))
            })
            .collect();
        let durable_floor = partitions
            .iter()
            .map(|&p| {
                endpoints
                    .values()
                    .map(|e| e.committed_at(p))
                    .chain([frontiers[usize::from(p)]])
                    .min()
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0);
        Ok(Box::new(BrokerSink::<K> {
            rt: self.rt.clone(),
            ctx: Arc::clone(&self.ctx),
            store: Arc::clone(&self.store),
            health: Arc::clone(&self.health),
            worker,
            partitions,
            frontiers,
            frontier: start,
            watermark: start,
            endpoints,
            durable_floor,
            last_record: Instant::now(),
            recorded: None,
            key: String::new(),
        }))
    }
}
