//! The edge's one connection to its hub, shared by every worker's upstream endpoints.
//!
//! Each worker's [`Link`] hands its messages to the [`Uplink`] task with its own
//! [`Progress`]; the task publishes them at QoS 1 in the order they come and confirms each
//! to its progress when the hub's PUBACK has come for it and everything before it, so a
//! worker's confirms stay in its publish order. When the connection is lost (an error, or
//! the hub acknowledging nothing for [`SILENCE`], which is how a black-holed link shows),
//! every message not yet confirmed fails its worker's endpoint: the generic sink then
//! replays from its commit point once the link is back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use weir_gateways::mqtt::codec::{self, Inbound};
use weir_gateways::mqtt::requests::{self, ToEdge};
use weir_gateways::sas;

use super::children::Children;
use super::config::UpstreamConfig;
use super::message::Message;
use crate::link::{Link, Progress};

/// QoS 1 messages without a PUBACK on the connection.
const MAX_IN_FLIGHT: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The hub acknowledged nothing (PUBACK or PINGRESP) for this long while it owed
/// something: the link is taken as dead.
pub const SILENCE: Duration = Duration::from_secs(10);
const KEEP_ALIVE: u16 = 30;
const TOKEN_TTL_SECS: i64 = 3600;
const MAX_BACKOFF: Duration = Duration::from_secs(10);

struct Job {
    message: Message,
    progress: Arc<Progress>,
}

/// What the hub sent about the edge's children, applied in the order it came.
enum EdgeWork {
    Children(Vec<serde_json::Value>),
    Desired { child: String, patch: bytes::Bytes },
}

/// The link's state, for `GET /upstream` and `weir edge status`.
#[derive(Debug, Clone, Default)]
pub struct LinkState {
    pub connected: bool,
    pub last_error: Option<String>,
    /// Messages the hub has acknowledged since the start.
    pub forwarded: u64,
    pub connects: u64,
}

/// The shared connection: a task on the runtime that owns the socket.
pub struct Uplink {
    tx: mpsc::Sender<Job>,
    up: AtomicBool,
    forwarded: AtomicU64,
    connects: AtomicU64,
    last_error: Mutex<Option<String>>,
    edge_tx: Option<mpsc::UnboundedSender<EdgeWork>>,
    pub config: UpstreamConfig,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Uplink {
    /// Starts connecting to the hub in the background, and keeps reconnecting. With
    /// `children`, the edge keeps its children's identities and desired properties as the
    /// hub sends them.
    pub fn start(
        rt: &tokio::runtime::Handle,
        config: UpstreamConfig,
        children: Option<Children>,
    ) -> Arc<Uplink> {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let edge_tx = children.map(|c| {
            let (etx, erx) = mpsc::unbounded_channel();
            rt.spawn(apply(c, erx));
            etx
        });
        let uplink = Arc::new(Uplink {
            tx,
            up: AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            last_error: Mutex::new(None),
            edge_tx,
            config,
        });
        rt.spawn(run(Arc::clone(&uplink), rx));
        uplink
    }

    pub fn state(&self) -> LinkState {
        LinkState {
            connected: self.up.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
        }
    }

    fn down_reason(&self) -> String {
        let why = self
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "not connected yet".into());
        format!("the link to hub {} is down: {why}", self.config.hub)
    }

    fn set_error(&self, e: &str) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_owned());
        }
    }
}

/// A worker's link for endpoint `endpoint`: forwards to the uplink while it is up.
pub fn open(
    rt: &tokio::runtime::Handle,
    uplink: Option<Arc<Uplink>>,
    endpoint: String,
) -> Link<Message> {
    Link::spawn(rt, endpoint, move |mut rx, progress| async move {
        let Some(uplink) = uplink else {
            return Err(
                "this hub has no [upstream] section in weir.toml: an upstream endpoint forwards from an edge to its hub"
                    .to_owned(),
            );
        };
        while let Some(out) = rx.recv().await {
            if let Some(e) = progress.error() {
                return Err(e);
            }
            if !uplink.up.load(Ordering::Acquire) {
                return Err(uplink.down_reason());
            }
            let job = Job {
                message: out.message,
                progress: Arc::clone(&progress),
            };
            if uplink.tx.send(job).await.is_err() {
                return Err("the hub link stopped".into());
            }
        }
        Ok(())
    })
}

async fn apply(children: Children, mut rx: mpsc::UnboundedReceiver<EdgeWork>) {
    while let Some(work) = rx.recv().await {
        match work {
            EdgeWork::Children(list) => match children.sync(&list).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    children = list.len(),
                    changes = n,
                    "children synced from the hub"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot keep the children the hub listed"),
            },
            EdgeWork::Desired { child, patch } => {
                if let Err(e) = children.desired(&child, &patch).await {
                    tracing::warn!(device = child, error = %e, "cannot pass a desired patch on");
                }
            }
        }
    }
}

impl Uplink {
    /// Hands what the hub sent on `$weir/edge/...` to the children's keeper.
    fn hub_sent(&self, p: &codec::Publish) {
        let (Some(tx), Ok(topic)) = (&self.edge_tx, p.topic_str()) else {
            return;
        };
        let work = match requests::to_edge(topic) {
            Some(ToEdge::Children { status: 200, .. }) => {
                match serde_json::from_slice::<Vec<serde_json::Value>>(&p.payload) {
                    Ok(list) => EdgeWork::Children(list),
                    Err(e) => {
                        tracing::warn!(error = %e, "the hub's list of children is not a JSON array");
                        return;
                    }
                }
            }
            Some(ToEdge::Children { status, .. }) => {
                tracing::warn!(
                    status,
                    "the hub refused to list the edge's children: is the edge registered with --edge?"
                );
                return;
            }
            Some(ToEdge::ChildDesired { child }) => EdgeWork::Desired {
                child: child.to_owned(),
                patch: p.payload.clone(),
            },
            None => return,
        };
        let _ = tx.send(work);
    }
}

async fn run(uplink: Arc<Uplink>, mut rx: mpsc::Receiver<Job>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let result = match connect(&uplink.config).await {
            Ok((stream, buf)) => {
                uplink.connects.fetch_add(1, Ordering::Relaxed);
                uplink.up.store(true, Ordering::Release);
                tracing::info!(hub = %uplink.config.hub, edge = %uplink.config.device_id, "connected to the hub");
                backoff = Duration::from_millis(500);
                serve(&uplink, stream, buf, &mut rx).await
            }
            Err(e) => Err(e),
        };
        uplink.up.store(false, Ordering::Release);
        let e = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        tracing::warn!(hub = %uplink.config.hub, error = %e, retry_in = ?backoff, "the link to the hub is down; messages stay in the log");
        uplink.set_error(&e);
        let reason = uplink.down_reason();
        while let Ok(job) = rx.try_recv() {
            job.progress.fail(reason.clone());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn connect(cfg: &UpstreamConfig) -> Result<(Box<dyn Stream>, BytesMut), String> {
    let address = cfg.address();
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&address))
        .await
        .map_err(|_| format!("cannot connect to {address} within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(cfg.hub.clone())
        .map_err(|e| format!("{}: {e}", cfg.hub))?;
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector(cfg)?.connect(name, tcp))
        .await
        .map_err(|_| format!("TLS with {address} did not finish within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("TLS with {address} failed: {e}"))?;
    let mut stream: Box<dyn Stream> = Box::new(tls);
    let expiry = chrono::Utc::now().timestamp() + TOKEN_TTL_SECS;
    let resource = format!("{}/devices/{}", cfg.hub, cfg.device_id);
    let token = sas::build(&resource, &cfg.key, expiry, None)
        .map_err(|e| format!("the upstream key cannot sign a token: {e}"))?;
    let username = format!("{}/{}/?api-version=2021-04-12", cfg.hub, cfg.device_id);
    let mut out = BytesMut::new();
    codec::connect(
        &cfg.device_id,
        KEEP_ALIVE,
        true,
        Some((&username, &token)),
        &mut out,
    );
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match codec::decode(&mut buf, 1 << 20).map_err(|e| e.to_string())? {
            Some(Inbound::ConnAck { code: 0, .. }) => return Ok((stream, buf)),
            Some(Inbound::ConnAck { code, .. }) => {
                return Err(format!(
                    "the hub refused the edge's connection (CONNACK {code}): check [upstream] device_id and key, and that the device is registered with --edge"
                ));
            }
            Some(other) => return Err(format!("expected CONNACK, got {}", other.name())),
            None => {}
        }
        let n = tokio::time::timeout(CONNECT_TIMEOUT, stream.read_buf(&mut buf))
            .await
            .map_err(|_| "the hub sent no CONNACK".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the hub closed the connection before CONNACK".into());
        }
    }
}

fn connector(cfg: &UpstreamConfig) -> Result<tokio_rustls::TlsConnector, String> {
    if let Some(ca) = &cfg.ca {
        return crate::tls::connector(&ca.to_string_lossy());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A message on the wire, and whose it is.
struct InFlight {
    pkid: u16,
    acked: bool,
    progress: Arc<Progress>,
}

async fn write(wr: &mut (impl AsyncWrite + Unpin), out: &mut BytesMut) -> Result<(), String> {
    // A black-holed link stops taking bytes once the socket buffer is full.
    tokio::time::timeout(SILENCE, wr.write_all(out))
        .await
        .map_err(|_| format!("the hub took no data for {SILENCE:?}"))?
        .map_err(|e| e.to_string())?;
    out.clear();
    Ok(())
}

async fn serve(
    uplink: &Uplink,
    stream: Box<dyn Stream>,
    mut buf: BytesMut,
    rx: &mut mpsc::Receiver<Job>,
) -> Result<(), String> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut pkid: u16 = 0;
    let mut out = BytesMut::new();
    let mut last_heard = Instant::now();
    let mut last_sent = Instant::now();
    let mut ping_owed = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let edge = uplink.config.device_id.clone();
    let mut rids: u64 = 0;
    let mut last_sync = Instant::now();
    if uplink.edge_tx.is_some() {
        codec::subscribe(1, requests::EDGE_FILTER, 0, &mut out);
        codec::publish(
            &requests::children_request_topic("0"),
            &[],
            0,
            0,
            false,
            &mut out,
        )
        .map_err(|e| e.to_string())?;
        write(&mut wr, &mut out).await?;
    }
    let result = async {
        loop {
            tokio::select! {
                n = rd.read_buf(&mut buf) => {
                    if n.map_err(|e| e.to_string())? == 0 {
                        return Err("the hub closed the connection".to_owned());
                    }
                    last_heard = Instant::now();
                    while let Some(p) = codec::decode(&mut buf, 1 << 20).map_err(|e| e.to_string())? {
                        match p {
                            Inbound::PubAck(id) => {
                                if let Some(m) = inflight.iter_mut().find(|m| m.pkid == id && !m.acked) {
                                    m.acked = true;
                                }
                            }
                            Inbound::PingResp => ping_owed = false,
                            Inbound::Publish(p) => uplink.hub_sent(&p),
                            _ => {}
                        }
                    }
                    while inflight.front().is_some_and(|m| m.acked) {
                        if let Some(m) = inflight.pop_front() {
                            m.progress.confirm_oldest();
                            uplink.forwarded.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    buf.reserve(4096);
                }
                next = rx.recv(), if inflight.len() < MAX_IN_FLIGHT => {
                    let Some(first) = next else { return Ok(()) };
                    let mut job = Some(first);
                    if inflight.is_empty() {
                        // Silence is counted from when the hub first owes an answer.
                        last_heard = Instant::now();
                    }
                    while let Some(Job { message, progress }) = job.take() {
                        // A worker whose link already failed replays from its commit
                        // point: what it handed over before must not go out after.
                        if progress.error().is_none() {
                            pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
                            let topic = message.topic(&edge);
                            codec::publish(&topic, &message.body, 1, pkid, false, &mut out)
                                .map_err(|e| format!("cannot encode a message for {topic:?}: {e}"))?;
                            inflight.push_back(InFlight { pkid, acked: false, progress });
                        }
                        if inflight.len() < MAX_IN_FLIGHT {
                            job = rx.try_recv().ok();
                        }
                    }
                    write(&mut wr, &mut out).await?;
                    last_sent = Instant::now();
                }
                _ = tick.tick() => {
                    if uplink.edge_tx.is_some() && last_sync.elapsed() >= uplink.config.sync {
                        rids += 1;
                        codec::publish(&requests::children_request_topic(&rids.to_string()), &[], 0, 0, false, &mut out)
                            .map_err(|e| e.to_string())?;
                        write(&mut wr, &mut out).await?;
                        last_sync = Instant::now();
                    }
                    let owed = !inflight.is_empty() || ping_owed;
                    if owed && last_heard.elapsed() >= SILENCE {
                        return Err(format!("the hub acknowledged nothing for {SILENCE:?}"));
                    }
                    if !ping_owed && last_sent.elapsed() >= Duration::from_secs(u64::from(KEEP_ALIVE) / 2) {
                        codec::pingreq(&mut out);
                        write(&mut wr, &mut out).await?;
                        if inflight.is_empty() {
                            last_heard = Instant::now();
                        }
                        ping_owed = true;
                        last_sent = Instant::now();
                    }
                }
            }
        }
    }
    .await;
    if let Err(e) = &result {
        let reason = format!("the link to hub {} was lost: {e}", uplink.config.hub);
        for m in inflight {
            m.progress.fail(reason.clone());
        }
    }
    result
}
