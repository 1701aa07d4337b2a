//! The per-worker sink of one broker kind: each endpoint publishes through its own
//! [`Link`], and commits its log offset only below the oldest message the broker has not
//! confirmed.
//!
//! At least once, not exactly once: no broker can make a publish and Weir's commit
//! atomic. After a crash or a lost connection, what was published but not committed is
//! published again; messages carry their ingest offset for consumers to drop repeats.
//!
//! A broker that goes away fails the endpoint alone: its deliveries are dropped (they stay
//! in the ingest log above its commit point), and after a backoff it reconnects and asks
//! the engine to replay what it missed, as the Parquet sink does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_core::feed::{device_hash, partition_of};
use weir_core::recovery::{Candidate, Recovery, first_request, retain_uncommitted};
use weir_core::{
    Delivery, EndpointSpec, EndpointState as Health, HealthBoard, ReplayRequest, Sink, SinkError,
};
use weir_storage::commit::{CommitStore, Update};

use crate::Kind;
use crate::link::{Link, Outgoing};
use crate::template::Template;

/// How long a worker waits for a broker that confirms nothing before failing the endpoint.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long a clean stop waits for outstanding confirms.
const DRAIN: Duration = Duration::from_secs(10);
const RECORD_EVERY: Duration = Duration::from_secs(1);
/// How often a sink records when only its frontier moved (a cluster's clock moves it while
/// the hub is idle): every record is a durable transaction, and an idle process had one a
/// second for each broker kind, configured or not.
const IDLE_RECORD_EVERY: Duration = Duration::from_secs(5);

pub(crate) struct Endpoint<M> {
    spec: Option<Arc<EndpointSpec>>,
    template: Option<Template>,
    link: Option<Link<M>>,
    /// Per partition: deliveries below this offset are confirmed by the broker.
    committed: Vec<u64>,
    recovery: Recovery,
}

impl<M: Send + 'static> Endpoint<M> {
    pub(crate) fn new(committed: Vec<u64>) -> Self {
        Endpoint {
            spec: None,
            template: None,
            link: None,
            committed,
            recovery: Recovery::default(),
        }
    }

    pub(crate) fn committed_at(&self, partition: u16) -> u64 {
        self.committed[usize::from(partition)]
    }

    fn committed_min(&self, partitions: &[u16]) -> u64 {
        partitions
            .iter()
            .map(|p| self.committed[usize::from(*p)])
            .min()
            .unwrap_or(0)
    }

    /// The current link has had a message confirmed: the broker works again.
    fn proven(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.progress.confirmed() > 0)
    }
}

/// One worker's endpoints of the broker kind `K`.
pub struct BrokerSink<K: Kind> {
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) ctx: Arc<K::Context>,
    pub(crate) store: Arc<CommitStore>,
    pub(crate) health: Arc<HealthBoard>,
    pub(crate) worker: usize,
    pub(crate) partitions: Vec<u16>,
    /// Per partition: the frontier as recorded at start, which endpoints this run has not
    /// seen yet have committed up to.
    pub(crate) frontiers: Vec<u64>,
    pub(crate) frontier: u64,
    /// Every delivery below this has arrived (counting those beyond the frontier).
    pub(crate) watermark: u64,
    pub(crate) endpoints: HashMap<String, Endpoint<K::Message>>,
    pub(crate) durable_floor: u64,
    pub(crate) last_record: Instant,
    /// The frontier and the sum of the commit points at the last record: nothing to
    /// record while neither moved.
    pub(crate) recorded: Option<(u64, u64)>,
    pub(crate) key: String,
}

impl<K: Kind> BrokerSink<K> {
    fn endpoint(&mut self, spec: &Arc<EndpointSpec>) -> &mut Endpoint<K::Message> {
        let name = spec.name.to_string();
        let frontiers = &self.frontiers;
        let e = self
            .endpoints
            .entry(name)
            .or_insert_with(|| Endpoint::new(frontiers.clone()));
        if e.spec.as_ref().is_none_or(|s| s.kind != spec.kind) {
            // New options (a reload changed the URL or the exchange): reconnect.
            e.link = None;
            e.template = K::template(&spec.kind).and_then(|t| Template::parse(t).ok());
        }
        e.spec = Some(Arc::clone(spec));
        e
    }

    /// Publishes `batch` to `name`, skipping what an earlier run committed.
    fn publish_batch(&mut self, name: &str, batch: Vec<Delivery>) -> Result<(), SinkError> {
        let rt = self.rt.clone();
        let ctx = Arc::clone(&self.ctx);
        let worker = self.worker;
        let mut key = std::mem::take(&mut self.key);
        let result = (|| {
            let Some(e) = self.endpoints.get_mut(name) else {
                return Ok(());
            };
            let (Some(spec), Some(template)) = (e.spec.clone(), e.template.as_ref()) else {
                return Ok(());
            };
            if K::template(&spec.kind).is_none() {
                return Err(SinkError::Unsupported(name.to_owned()));
            }
            for d in batch {
                let p = partition_of(device_hash(d.event.device_id.as_str()));
                if d.event.offset < e.committed[usize::from(p)] {
                    continue;
                }
                if e.link.is_none() {
                    e.link = K::open(&ctx, &rt, &spec.kind, name, worker);
                }
                let Some(link) = &e.link else {
                    return Err(SinkError::Unsupported(name.to_owned()));
                };
                template.render(&d, name, &mut key);
                let m = Outgoing {
                    offset: d.event.offset,
                    message: K::message(&d, &key),
                };
                link.send(m, PATIENCE).map_err(|e| SinkError::Unavailable {
                    endpoint: name.to_owned(),
                    message: e.to_string(),
                })?;
            }
            Ok(())
        })();
        self.key = key;
        result
    }

    /// Marks `name` failed: drops its link (its unconfirmed messages are published again
    /// after the retry) and, until then, its deliveries.
    fn fail(&mut self, name: &str, e: SinkError) -> SinkError {
        if let Some(s) = self.endpoints.get_mut(name) {
            s.link = None;
            s.recovery.fail(e.to_string());
        }
        self.publish_health(name);
        e
    }

    /// Fails every endpoint whose link reported an error.
    fn check_links(&mut self) {
        let broken: Vec<(String, String)> = self
            .endpoints
            .iter()
            .filter_map(|(n, s)| {
                let err = s.link.as_ref()?.progress.error()?;
                Some((n.clone(), err))
            })
            .collect();
        for (name, message) in broken {
            self.fail(
                &name,
                SinkError::Unavailable {
                    endpoint: name.clone(),
                    message,
                },
            );
        }
    }

    /// Raises each endpoint's commit point to what the broker has confirmed.
    fn settle(&mut self) {
        let parts = self.partitions.clone();
        let frontier = self.frontier;
        let mut changed = Vec::new();
        for (name, s) in self.endpoints.iter_mut() {
            let Some(complete) = s.recovery.complete_below(frontier) else {
                continue;
            };
            let to = s
                .link
                .as_ref()
                .and_then(|l| l.progress.oldest_unconfirmed())
                .map_or(complete, |o| o.min(complete));
            for &p in &parts {
                let c = &mut s.committed[usize::from(p)];
                *c = (*c).max(to);
            }
            if s.proven() && s.recovery.prove() {
                changed.push(name.clone());
            }
        }
        changed.iter().for_each(|n| self.publish_health(n));
    }

    fn record(&mut self) -> Result<(), SinkError> {
        let parts = self.partitions.clone();
        let endpoints: Vec<(&str, Vec<u64>)> = self
            .endpoints
            .iter()
            .map(|(n, s)| {
                (
                    n.as_str(),
                    parts.iter().map(|&p| s.committed[usize::from(p)]).collect(),
                )
            })
            .collect();
        let floor = endpoints
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .chain([self.frontier])
            .min()
            .unwrap_or(self.frontier);
        let update = Update {
            sink: K::NAME,
            partitions: &parts,
            frontier: vec![self.frontier; parts.len()],
            endpoints,
            intents: Vec::new(),
            done: Vec::new(),
        };
        self.store.write(&update).map_err(|e| SinkError::Io {
            path: "commits.redb".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        self.durable_floor = floor;
        self.last_record = Instant::now();
        self.recorded = Some((self.frontier, self.commits()));
        let names: Vec<String> = self.endpoints.keys().cloned().collect();
        names.iter().for_each(|n| self.publish_health(n));
        Ok(())
    }

    /// The sum of every endpoint's commit points: it changes whenever one does, as they
    /// only rise (or an endpoint goes with a reload).
    fn commits(&self) -> u64 {
        self.endpoints
            .values()
            .flat_map(|s| s.committed.iter())
            .fold(0u64, |a, c| a.wrapping_add(*c))
    }

    fn publish_health(&self, name: &str) {
        let Some(s) = self.endpoints.get(name) else {
            return;
        };
        let health = s.recovery.health(s.committed_min(&self.partitions));
        let error = health.last_error.clone().unwrap_or_default();
        if let Some((before, after)) = self.health.report(self.worker, name, health) {
            match after {
                Health::Unhealthy => {
                    tracing::error!(endpoint = name, error = %error, "endpoint is unhealthy: its messages stay in the ingest log and it is retried with backoff (at most every 30 s)")
                }
                Health::Degraded => tracing::warn!(
                    endpoint = name,
                    "endpoint is publishing again and catching up on what it missed"
                ),
                Health::Healthy => tracing::info!(
                    endpoint = name,
                    was = before.as_str(),
                    "endpoint is healthy again"
                ),
            }
        }
    }
}

impl<K: Kind> Sink for BrokerSink<K> {
    fn write(
        &mut self,
        endpoint: &Arc<EndpointSpec>,
        batch: Vec<Delivery>,
    ) -> Result<(), SinkError> {
        if let Some(max) = batch.iter().map(|d| d.event.offset).max() {
            self.watermark = self.watermark.max(max + 1);
        }
        let name = endpoint.name.to_string();
        if !self.endpoint(endpoint).recovery.is_live() {
            return Ok(());
        }
        self.publish_batch(&name, batch)
            .map_err(|e| self.fail(&name, e))
    }

    fn advance(&mut self, frontier: u64) -> Result<(), SinkError> {
        self.frontier = self.frontier.max(frontier);
        self.watermark = self.watermark.max(self.frontier);
        self.check_links();
        self.settle();
        let now = (self.frontier, self.commits());
        let every = match self.recorded {
            Some(r) if r == now => return Ok(()),
            Some((_, commits)) if commits == now.1 => IDLE_RECORD_EVERY,
            _ => RECORD_EVERY,
        };
        if self.last_record.elapsed() >= every {
            self.record()?;
        }
        Ok(())
    }

    fn close(&mut self, end: u64) -> Result<(), SinkError> {
        self.frontier = self.frontier.max(end);
        for s in self.endpoints.values() {
            if let Some(l) = &s.link {
                l.drain(DRAIN);
            }
        }
        self.check_links();
        self.settle();
        self.record()
    }

    fn retry_now(&mut self) {
        self.endpoints
            .values_mut()
            .for_each(|s| s.recovery.retry_now());
    }

    fn floor(&self) -> u64 {
        self.durable_floor
    }

    fn replay_request(&mut self) -> Option<ReplayRequest> {
        let parts = &self.partitions;
        let candidates = self.endpoints.iter_mut().map(|(name, s)| Candidate {
            name,
            committed_min: s.committed_min(parts),
            recovery: &mut s.recovery,
            policy: s.spec.as_ref().and_then(|p| p.dead_letter.as_ref()),
        });
        let (request, changed) = first_request(candidates, self.watermark);
        if let Some(r) = &request
            && r.dead_letter.is_none()
            && changed.iter().any(|n| **n == *r.endpoint)
            && let Some(s) = self.endpoints.get_mut(&*r.endpoint)
        {
            // A retry starts (the endpoint's phase changed with this request, from failed
            // to resuming): a new connection, and everything unconfirmed is published
            // again. Only then: the chunks of its replay go out on that one
            // connection, in order, and what it has not confirmed keeps the commit point
            // below it.
            s.link = None;
            tracing::debug!(endpoint = %r.endpoint, worker = self.worker, from = r.from, "reconnecting a failed endpoint");
        }
        changed.iter().for_each(|n| self.publish_health(n));
        request
    }

    fn uncommitted(&self, endpoint: &str, batch: &mut Vec<Delivery>) {
        if let Some(s) = self.endpoints.get(endpoint) {
            retain_uncommitted(batch, &s.committed);
        }
    }

    fn dead_lettered(&mut self, endpoint: &str, count: u64, through: u64) -> Result<(), SinkError> {
        let parts = self.partitions.clone();
        let Some(s) = self.endpoints.get_mut(endpoint) else {
            return Ok(());
        };
        let moved = through > s.committed_min(&parts);
        for &p in &parts {
            let c = &mut s.committed[usize::from(p)];
            *c = (*c).max(through);
        }
        s.recovery.dead_lettered(count, moved);
        if moved {
            // The letters are durable in the log: record the new commit point now, so a
            // restart does not hand them on again.
            self.record()?;
        }
        self.publish_health(endpoint);
        Ok(())
    }

    fn replay(
        &mut self,
        endpoint: &str,
        spec: Option<&Arc<EndpointSpec>>,
        batch: Vec<Delivery>,
        through: u64,
    ) -> Result<(), SinkError> {
        if self
            .endpoints
            .get(endpoint)
            .and_then(|s| s.recovery.replayed_to())
            .is_none_or(|r| through < r)
        {
            return Ok(());
        }
        if let Some(spec) = spec {
            self.endpoint(spec);
            if let Err(e) = self.publish_batch(endpoint, batch) {
                return Err(self.fail(endpoint, e));
            }
        }
        let watermark = self.watermark;
        if let Some(s) = self.endpoints.get_mut(endpoint)
            && s.recovery.replayed(through, watermark)
        {
            self.publish_health(endpoint);
        }
        Ok(())
    }
}
