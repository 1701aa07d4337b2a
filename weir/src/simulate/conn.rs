//! One simulated device: an MQTT connection that publishes and, at QoS 1, measures
//! publish→PUBACK latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use std::net::IpAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use weir_gateways::mqtt::codec::{self, Inbound};

use super::payload::{Rng, Template};

/// What a publisher needs to know.
pub struct Plan {
    pub addr: String,
    pub transport: Transport,
    pub client_id: String,
    pub login: Option<(String, String)>,
    pub topic: String,
    pub qos: u8,
    /// 0 = no limit (until `stop`).
    pub messages: u64,
    /// Messages per second for this connection; 0 = as fast as possible.
    pub rate: f64,
    pub inflight: usize,
    pub template: Arc<Template>,
    /// Connect, then send nothing until `stop` (keep-alive pings only).
    pub idle: bool,
    /// The local address to connect from (spreading connections over 127.0.0.0/8 gives
    /// each address its own ephemeral ports).
    pub source: Option<IpAddr>,
}

/// Shared counters for progress and the report.
#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub stop: AtomicBool,
    /// Woken with `stop`, for connections that wait.
    pub halt: Notify,
    /// Storm mode: connections back after the drop, attempts refused with CONNACK 3,
    /// attempts that failed otherwise.
    pub reconnected: AtomicU64,
    pub throttled: AtomicU64,
    pub failed: AtomicU64,
    /// Connections the hub ended after CONNACK (each connected again).
    pub lost: AtomicU64,
}

impl Counters {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.halt.notify_waiters();
    }
}

/// The server answered CONNACK with a refusal.
#[derive(Debug)]
pub struct Refused {
    pub client_id: String,
    pub code: u8,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: connection refused, CONNACK return code {}",
            self.client_id, self.code
        )
    }
}

impl std::error::Error for Refused {}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// How a simulated device reaches the server; TLS and QUIC carry the name the server's
/// certificate must have.
#[derive(Clone)]
pub enum Transport {
    Tcp,
    Tls(tokio_rustls::TlsConnector, String),
    Quic(quinn::Endpoint, String),
}

pub async fn connect(
    addr: &str,
    transport: &Transport,
    source: Option<IpAddr>,
) -> anyhow::Result<Box<dyn Stream>> {
    if let Transport::Quic(ep, name) = transport {
        let server = tokio::net::lookup_host(addr)
            .await?
            .next()
            .with_context(|| format!("{addr} resolves to no address"))?;
        return Ok(Box::new(super::quic::connect(ep, server, name).await?));
    }
    let tcp = match source {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let server = tokio::net::lookup_host(addr)
                .await?
                .next()
                .with_context(|| format!("{addr} resolves to no address"))?;
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket
                .bind((ip, 0).into())
                .with_context(|| format!("cannot bind {ip}"))?;
            socket.connect(server).await
        }
    }
    .with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    Ok(match transport {
        Transport::Tls(c, name) => {
            let name = rustls::pki_types::ServerName::try_from(name.clone())?;
            Box::new(c.connect(name, tcp).await.context("TLS handshake failed")?)
        }
        _ => Box::new(tcp),
    })
}

/// CONNECT and wait for a successful CONNACK.
pub async fn mqtt_connect(
    s: &mut Box<dyn Stream>,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::new();
    codec::connect(client_id, 60, false, login, &mut out);
    s.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if let Some(p) = codec::decode(&mut buf, 1 << 20)? {
            match p {
                Inbound::ConnAck { code: 0, .. } => return Ok(buf),
                Inbound::ConnAck { code, .. } => {
                    return Err(Refused {
                        client_id: client_id.to_owned(),
                        code,
                    }
                    .into());
                }
                other => bail!("{client_id}: expected CONNACK, got {other:?}"),
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut buf)).await?? == 0 {
            bail!("{client_id}: the server closed the connection before CONNACK");
        }
    }
}

/// Publishes per `plan`; returns the latency histogram (microseconds) at QoS 1.
pub async fn publish(
    plan: Plan,
    counters: Arc<Counters>,
    seed: u64,
) -> anyhow::Result<Histogram<u64>> {
    if plan.idle {
        super::storm::idle(&plan, &counters, seed).await?;
        return Ok(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?);
    }
    let mut stream = connect(&plan.addr, &plan.transport, plan.source).await?;
    let login = plan.login.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
    let leftover = mqtt_connect(&mut stream, &plan.client_id, login).await?;
    counters.connected.fetch_add(1, Ordering::Relaxed);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..65536).map(|_| AtomicU64::new(0)).collect());
    let window = Arc::new(Semaphore::new(plan.inflight.max(1)));
    let epoch = Instant::now();
    let total_acks = Arc::new(AtomicU64::new(0));

    let reader = {
        let (sent_at, window, counters, total_acks) = (
            Arc::clone(&sent_at),
            Arc::clone(&window),
            Arc::clone(&counters),
            Arc::clone(&total_acks),
        );
        let mut hist = hist.clone();
        tokio::spawn(async move {
            let mut buf = leftover;
            loop {
                while let Some(p) = codec::decode(&mut buf, 1 << 20)? {
                    if let Inbound::PubAck(id) = p {
                        let t0 = sent_at[id as usize].load(Ordering::Relaxed);
                        let now = epoch.elapsed().as_micros() as u64;
                        let _ = hist.record(now.saturating_sub(t0).max(1));
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                        total_acks.fetch_add(1, Ordering::Relaxed);
                        window.add_permits(1);
                    }
                }
                buf.reserve(4096);
                if rd.read_buf(&mut buf).await? == 0 {
                    return anyhow::Ok(hist);
                }
            }
        })
    };

    let mut rng = Rng::new(seed);
    let mut body = Vec::with_capacity(256);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut pkid: u16 = 0;
    let mut seq = 0u64;
    let started = Instant::now();
    while (plan.messages == 0 || seq < plan.messages) && !counters.stop.load(Ordering::Relaxed) {
        if plan.rate > 0.0 {
            let due = started + Duration::from_secs_f64(seq as f64 / plan.rate);
            let now = Instant::now();
            if due > now {
                if !out.is_empty() {
                    wr.write_all(&out).await?;
                    out.clear();
                }
                tokio::time::sleep(due - now).await;
            }
        }
        if plan.qos == 1 {
            if window.available_permits() == 0 && !out.is_empty() {
                wr.write_all(&out).await?;
                out.clear();
            }
            window.acquire().await?.forget();
            pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            sent_at[pkid as usize].store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        plan.template
            .render(&mut body, seq, &plan.client_id, &mut rng);
        codec::publish(&plan.topic, &body, plan.qos, pkid, false, &mut out)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        seq += 1;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        if out.len() >= 32 * 1024 {
            wr.write_all(&out).await?;
            out.clear();
        }
    }
    if !out.is_empty() {
        wr.write_all(&out).await?;
    }
    if plan.qos == 1 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while total_acks.load(Ordering::Relaxed) < seq && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut bye = BytesMut::new();
    codec::disconnect(&mut bye);
    let _ = wr.write_all(&bye).await;
    let _ = wr.shutdown().await;
    match tokio::time::timeout(Duration::from_secs(5), reader).await {
        Ok(Ok(Ok(h))) => Ok(h),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Ok(hist),
    }
}

/// Subscribes to `filter` and counts deliveries until `stop`; returns (count, time of the
/// last delivery).
pub async fn subscribe(
    addr: String,
    filter: String,
    qos: u8,
    received: Arc<AtomicU64>,
    last: Arc<std::sync::Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut s = connect(&addr, &Transport::Tcp, None).await?;
    let mut buf = mqtt_connect(&mut s, "weir-simulate-subscriber", None).await?;
    let mut out = BytesMut::new();
    codec::subscribe(1, &filter, qos, &mut out);
    s.write_all(&out).await?;
    out.clear();
    loop {
        let mut n = 0;
        while let Some(p) = codec::decode(&mut buf, 1 << 20)? {
            if let Inbound::Publish(p) = p {
                n += 1;
                if p.qos == 1 {
                    codec::puback(p.pkid, &mut out);
                }
            }
        }
        if n > 0 {
            received.fetch_add(n, Ordering::Relaxed);
            if let Ok(mut l) = last.lock() {
                *l = Some(Instant::now());
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        buf.reserve(64 * 1024);
        match tokio::time::timeout(Duration::from_millis(200), s.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}
