//! The edge's one connection to its hub, and the store-and-forward queue behind it.
//!
//! Each worker's upstream endpoint puts what its routes send into the [`Outbox`] (see
//! `queue.rs`) and counts it delivered once that is durable: the edge's log is not held
//! back by an unreachable hub, and the budget applies to the queue. One task owns the
//! connection: it connects (and reconnects with backoff), forwards from the queue in the
//! order things were put in (`forward.rs`), and removes what the hub acknowledged. When
//! the connection is lost (an error, or the hub acknowledging nothing for [`SILENCE`],
//! which is how a black-holed link shows), it starts again from the queue's oldest
//! message: what was sent and not acknowledged goes again, and the hub's duplicate
//! window drops what it already had.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{Notify, mpsc};
use weir_core::{DeviceDirectory, Ingest};
use weir_gateways::sas;
use weir_storage::outbox::{Backlog, Outbox};

use super::children::Children;
use super::config::{Credential, Transport, UpstreamConfig};
use super::edge_work::{EdgeWork, Reply, apply};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The hub acknowledged nothing (PUBACK or PINGRESP) for this long while it owed
/// something: the link is taken as dead.
pub const SILENCE: Duration = Duration::from_secs(10);
pub(crate) const KEEP_ALIVE: u16 = 30;
const TOKEN_TTL_SECS: i64 = 3600;
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The link's state, for `GET /upstream` and `weir edge status`.
#[derive(Debug, Clone, Default)]
pub struct LinkState {
    pub connected: bool,
    pub last_error: Option<String>,
    /// Messages the hub has acknowledged since the start.
    pub forwarded: u64,
    pub connects: u64,
    /// Waiting in the store-and-forward queue.
    pub backlog: Backlog,
    /// When the oldest waiting message entered the edge (ms since the epoch).
    pub oldest_ms: Option<i64>,
    /// Messages dropped to stay within the budget since the start.
    pub dropped: u64,
    pub budget_bytes: u64,
}

/// The shared connection and queue.
pub struct Uplink {
    pub(crate) outbox: Arc<Outbox>,
    /// Something was put in the queue.
    pub(crate) ready: Notify,
    pub(crate) ingest: Arc<dyn Ingest>,
    /// One budget pass at a time.
    pub(crate) enforcing: tokio::sync::Mutex<()>,
    pub(crate) dropped: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    up: AtomicBool,
    pub(crate) connects: AtomicU64,
    last_error: Mutex<Option<String>>,
    pub(crate) edge_tx: Option<mpsc::UnboundedSender<EdgeWork>>,
    /// The edge's registry, which says who its children are.
    directory: Option<Arc<dyn DeviceDirectory>>,
    pub config: UpstreamConfig,
}

pub(crate) use crate::mqtt::client::Stream;
use crate::mqtt::client::{Refused, handshake};

impl Uplink {
    /// Starts connecting to the hub in the background, and keeps reconnecting; forwards
    /// from `outbox`, and writes drop-ledger events to `ingest` (the edge's log). With
    /// `children`, the edge keeps its children's identities and desired properties as the
    /// hub sends them.
    pub fn start(
        rt: &tokio::runtime::Handle,
        config: UpstreamConfig,
        outbox: Arc<Outbox>,
        ingest: Arc<dyn Ingest>,
        children: Option<Children>,
    ) -> Arc<Uplink> {
        let directory = children
            .as_ref()
            .map(|c| Arc::clone(c.hub.registry()) as Arc<dyn DeviceDirectory>);
        let (reply_tx, reply_rx) = mpsc::unbounded_channel();
        let edge_tx = children.map(|c| {
            let (etx, erx) = mpsc::unbounded_channel();
            rt.spawn(apply(c, erx, reply_tx));
            etx
        });
        let uplink = Arc::new(Uplink {
            outbox,
            ready: Notify::new(),
            ingest,
            enforcing: tokio::sync::Mutex::new(()),
            dropped: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            up: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            last_error: Mutex::new(None),
            edge_tx,
            directory,
            config,
        });
        rt.spawn(run(Arc::clone(&uplink), reply_rx));
        uplink
    }

    pub fn state(&self) -> LinkState {
        let oldest_ms = self
            .outbox
            .peek(None, 1)
            .ok()
            .and_then(|v| v.first().map(|i| i.event.enqueued_ms));
        LinkState {
            connected: self.up.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            backlog: self.outbox.backlog(),
            oldest_ms,
            dropped: self.dropped.load(Ordering::Relaxed),
            budget_bytes: self.config.budget_bytes,
        }
    }

    /// Whether the hub knows `device` as this edge's child (without a registry: assumed).
    pub(crate) fn is_child(&self, device: &str) -> bool {
        self.directory.as_ref().is_none_or(|d| {
            d.get(device)
                .is_some_and(|r| r.parent.as_deref() == Some(self.config.device_id.as_str()))
        })
    }

    fn set_error(&self, e: &str) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_owned());
        }
    }
}

async fn run(uplink: Arc<Uplink>, mut replies: mpsc::UnboundedReceiver<Reply>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let result = match connect(&uplink.config).await {
            Ok((stream, buf)) => {
                uplink.connects.fetch_add(1, Ordering::Relaxed);
                uplink.up.store(true, Ordering::Release);
                tracing::info!(hub = %uplink.config.hub, edge = %uplink.config.device_id, "connected to the hub");
                backoff = Duration::from_millis(500);
                super::forward::serve(&uplink, stream, buf, &mut replies).await
            }
            Err(e) => Err(e),
        };
        uplink.up.store(false, Ordering::Release);
        let e = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        tracing::warn!(hub = %uplink.config.hub, error = %e, retry_in = ?backoff, "the link to the hub is down; messages wait in the upstream queue");
        uplink.set_error(&e);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

pub(crate) async fn connect(cfg: &UpstreamConfig) -> Result<(Box<dyn Stream>, BytesMut), String> {
    let mut stream = dial(cfg).await?;
    // With a certificate the password stays empty: the TLS handshake proved the identity.
    let token = match &cfg.credential {
        Credential::Sas(key) => {
            let expiry = chrono::Utc::now().timestamp() + TOKEN_TTL_SECS;
            let resource = format!("{}/devices/{}", cfg.hub, cfg.device_id);
            sas::build(&resource, key, expiry, None)
                .map_err(|e| format!("the upstream key cannot sign a token: {e}"))?
        }
        Credential::X509 { .. } => String::new(),
    };
    let username = format!("{}/{}/?api-version=2021-04-12", cfg.hub, cfg.device_id);
    let login = Some((username.as_str(), token.as_str()));
    match handshake(
        &mut stream,
        &cfg.device_id,
        KEEP_ALIVE,
        login,
        CONNECT_TIMEOUT,
        "the hub",
    )
    .await
    {
        Ok(buf) => Ok((stream, buf)),
        Err(Refused::Code(code)) => Err(format!(
            "the hub refused the edge's connection (CONNACK {code}): check [upstream] device_id and its key or certificate, and that the device is registered with --edge"
        )),
        Err(Refused::Failed(e)) => Err(e),
    }
}

/// The CAs the edge trusts for its hub: `ca`, or the system's roots.
fn roots(cfg: &UpstreamConfig) -> Result<rustls::RootCertStore, String> {
    if let Some(ca) = &cfg.ca {
        return crate::tls::roots(&ca.to_string_lossy());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    Ok(roots)
}

/// The transport to the hub: TLS over TCP, a WebSocket over that, or QUIC.
async fn dial(cfg: &UpstreamConfig) -> Result<Box<dyn Stream>, String> {
    let address = cfg.address();
    let auth = match &cfg.credential {
        Credential::X509 { cert, key } => Some(crate::tls::client_auth(cert, key)?),
        Credential::Sas(_) => None,
    };
    if cfg.transport == Transport::Quic {
        let tls = crate::tls::client_config(roots(cfg)?, auth, true)?;
        let quic = tokio::time::timeout(CONNECT_TIMEOUT, super::quic::dial(cfg, tls))
            .await
            .map_err(|_| {
                format!("QUIC with {address} did not finish within {CONNECT_TIMEOUT:?}")
            })??;
        return Ok(Box::new(quic));
    }
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&address))
        .await
        .map_err(|_| format!("cannot connect to {address} within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(cfg.hub.clone())
        .map_err(|e| format!("{}: {e}", cfg.hub))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(crate::tls::client_config(
        roots(cfg)?,
        auth,
        false,
    )?));
    let tls: Box<dyn Stream> = Box::new(
        tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| format!("TLS with {address} did not finish within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("TLS with {address} failed: {e}"))?,
    );
    if cfg.transport == Transport::WebSocket {
        let ws = tokio::time::timeout(CONNECT_TIMEOUT, super::ws::upgrade(tls, &cfg.hub))
            .await
            .map_err(|_| {
                format!(
                    "the WebSocket upgrade at {address} did not finish within {CONNECT_TIMEOUT:?}"
                )
            })??;
        return Ok(Box::new(ws));
    }
    Ok(tls)
}
