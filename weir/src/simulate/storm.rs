//! Connections that only hold (`--idle`), and the reconnect storm (`--storm`): every
//! device connects, then all drop at once, as after a network outage, and reconnect
//! at once, retrying with backoff as the device SDKs do when refused.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use weir_gateways::mqtt::codec;

use super::conn::{Counters, Plan, Refused, Stream, connect, mqtt_connect};
use super::payload::Rng;

/// Pings often enough for the hub's keep-alive (60 s asked, 90 s allowed).
const PING_EVERY: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// One attempt: TCP, TLS and CONNACK.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// `--idle`: connects (retrying, as a burst of 100 k meets the server's limits), then
/// holds the connection until the run stops, connecting again when the hub ends it.
pub async fn idle(plan: &Plan, counters: &Counters, seed: u64) -> anyhow::Result<()> {
    let mut rng = Rng::new(seed);
    loop {
        let Some(mut stream) = connect_retrying(plan, counters, &mut rng).await else {
            return Ok(());
        };
        counters.connected.fetch_add(1, Ordering::Relaxed);
        let stopped = async {
            let halted = counters.halt.notified();
            tokio::pin!(halted);
            halted.as_mut().enable();
            if !counters.stop.load(Ordering::Relaxed) {
                halted.await;
            }
        };
        if hold(&mut stream, stopped).await == Held::Stopped {
            return Ok(());
        }
        counters.connected.fetch_sub(1, Ordering::Relaxed);
        counters.lost.fetch_add(1, Ordering::Relaxed);
    }
}

/// How holding a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Held {
    Stopped,
    /// The hub closed it. Under a burst this happens to a live connection when an attempt
    /// the device had already given up on reaches the hub after the one that worked: the
    /// later CONNECT of a device id replaces the earlier connection, as on IoT Hub, and
    /// then finds its own socket closed. A device SDK connects again; so does this.
    Lost,
}

/// Holds the connection, pinging, until `stop` or the hub closes it. One timer per
/// connection and no polling: a simulator holding 100 k connections must not eat the
/// cores it shares with the hub it measures.
async fn hold(stream: &mut Box<dyn Stream>, stop: impl Future<Output = ()>) -> Held {
    let mut ping = BytesMut::new();
    codec::pingreq(&mut ping);
    // Only PINGRESPs arrive; they are read to see the connection end.
    let mut answers = [0u8; 16];
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Held::Stopped,
            r = stream.read(&mut answers) => if !matches!(r, Ok(n) if n > 0) {
                return Held::Lost;
            },
            () = tokio::time::sleep(PING_EVERY) => if stream.write_all(&ping).await.is_err() {
                return Held::Lost;
            },
        }
    }
}

/// The phases of a storm run, which the main task moves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Connect,
    /// Every connection drops at once and reconnects.
    Drop,
    Stop,
}

/// Parses `127.0.0.2-127.0.0.200` (or one address) into the addresses in between.
pub fn source_ips(range: &str) -> anyhow::Result<Vec<IpAddr>> {
    let (a, b) = range.split_once('-').unwrap_or((range, range));
    let parse = |s: &str| -> anyhow::Result<std::net::Ipv4Addr> {
        s.trim()
            .parse()
            .with_context(|| format!("--source-ips: {s:?} is not an IPv4 address"))
    };
    let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
    if b < a || b - a > 1 << 16 {
        bail!("--source-ips {range}: give FIRST-LAST with FIRST <= LAST, at most 65536 addresses");
    }
    Ok((a..=b)
        .map(|n| IpAddr::from(std::net::Ipv4Addr::from(n)))
        .collect())
}

/// Connects until it works, backing off (doubling, with jitter) after a refusal or a
/// failure; `None` once the run stops first.
async fn connect_retrying(
    plan: &Plan,
    counters: &Counters,
    rng: &mut Rng,
) -> Option<Box<dyn Stream>> {
    let login = plan.login.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
    let mut backoff = FIRST_BACKOFF;
    while !counters.stop.load(Ordering::Relaxed) {
        let attempt = async {
            let mut s = connect(&plan.addr, &plan.transport, plan.source).await?;
            mqtt_connect(&mut s, &plan.client_id, login).await?;
            anyhow::Ok(s)
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(e)) if e.downcast_ref::<Refused>().is_some_and(|r| r.code == 3) => {
                counters.throttled.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_)) | Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let jitter = 0.5 + rng.unit();
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    None
}

/// One device of a storm run: connect, hold until the drop, drop, reconnect, hold until
/// the stop.
pub async fn device(
    plan: Plan,
    counters: Arc<Counters>,
    mut phase: watch::Receiver<Phase>,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = Rng::new(seed);
    let Some(first) = connect_retrying(&plan, &counters, &mut rng).await else {
        return Ok(());
    };
    counters.connected.fetch_add(1, Ordering::Relaxed);
    // The guard `wait_for` returns may not live across an await: dropped at once.
    phase.wait_for(|p| *p >= Phase::Drop).await.map(|_| ())?;
    // Gone without DISCONNECT, as when the network fails.
    drop(first);
    let Some(mut again) = connect_retrying(&plan, &counters, &mut rng).await else {
        return Ok(());
    };
    counters.reconnected.fetch_add(1, Ordering::Relaxed);
    loop {
        let stop = async {
            // A closed channel (the run is over) ends the hold as the stop does.
            let _ = phase.wait_for(|p| *p >= Phase::Stop).await;
        };
        if hold(&mut again, stop).await == Held::Stopped {
            return Ok(());
        }
        counters.lost.fetch_add(1, Ordering::Relaxed);
        match connect_retrying(&plan, &counters, &mut rng).await {
            Some(s) => again = s,
            None => return Ok(()),
        }
    }
}

/// How long each phase may take before the run gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(600);

/// Waits until `done` says so, showing `what` and the count on the bar; how long it took,
/// or `None` past [`PHASE_LIMIT`].
async fn phase_done(
    bar: &indicatif::ProgressBar,
    what: &str,
    count: impl Fn() -> u64,
    n: u64,
) -> Option<Duration> {
    let t0 = Instant::now();
    bar.set_length(n);
    while t0.elapsed() < PHASE_LIMIT {
        let c = count();
        bar.set_position(c);
        bar.set_message(what.to_owned());
        if c >= n {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// How a storm run ends and starts its drop.
pub struct Storm {
    /// How long the connections are held after all are back.
    pub hold: Duration,
    /// Drop only once this file exists.
    pub drop_when: Option<std::path::PathBuf>,
}

/// Runs a storm over `plans` and reports: the time until all were connected, then, after
/// every connection dropped at once, until all were back; refusals and failed attempts
/// on the way.
pub async fn run(
    plans: Vec<Plan>,
    storm_at: Storm,
    bar: &indicatif::ProgressBar,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let n = plans.len() as u64;
    let counters = Arc::new(Counters::default());
    let (phase, rx) = watch::channel(Phase::Connect);
    let tasks: Vec<_> = plans
        .into_iter()
        .enumerate()
        .map(|(i, p)| tokio::spawn(device(p, Arc::clone(&counters), rx.clone(), i as u64 + 1)))
        .collect();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let first = phase_done(bar, "connecting", || load(&counters.connected), n).await;
    let (throttled_first, failed_first) = (load(&counters.throttled), load(&counters.failed));
    let mut storm = None;
    if first.is_some() {
        // Everything settles (CONNACKs, registrations) before the drop.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(f) = &storm_at.drop_when {
            bar.set_message(format!("waiting for {}", f.display()));
            while !f.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = phase.send(Phase::Drop);
        storm = phase_done(bar, "reconnecting", || load(&counters.reconnected), n).await;
        tokio::time::sleep(storm_at.hold).await;
    }
    counters.stop();
    let _ = phase.send(Phase::Stop);
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    bar.finish_and_clear();
    errors.truncate(10);
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let report = serde_json::json!({
        "devices": n,
        "connected": load(&counters.connected),
        "connect_seconds": secs(first),
        "connect_throttled": throttled_first,
        "connect_failed": failed_first,
        "reconnected": load(&counters.reconnected),
        "storm_seconds": secs(storm),
        "storm_throttled": load(&counters.throttled) - throttled_first,
        "storm_failed": load(&counters.failed) - failed_first,
        "lost": load(&counters.lost),
        "errors": errors,
    });
    if json {
        println!("{report}");
    } else {
        println!(
            "{n} devices: all connected in {}; after dropping every connection at once, all back in {} ({} CONNACK 3 refusals, {} failed attempts on the way)",
            first.map_or("(not all)".to_owned(), |d| format!(
                "{:.2} s",
                d.as_secs_f64()
            )),
            storm.map_or("(not all)".to_owned(), |d| format!(
                "{:.2} s",
                d.as_secs_f64()
            )),
            report["storm_throttled"],
            report["storm_failed"],
        );
    }
    Ok(if storm.is_some() && errors.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges() {
        let ips = source_ips("127.0.0.2-127.0.1.1").expect("range");
        assert_eq!(ips.len(), 256);
        assert_eq!(ips[0], IpAddr::from([127, 0, 0, 2]));
        assert_eq!(ips[255], IpAddr::from([127, 0, 1, 1]));
        assert_eq!(source_ips("127.0.0.9").expect("one").len(), 1);
        assert!(source_ips("127.0.0.9-127.0.0.1").is_err());
        assert!(source_ips("localhost").is_err());
    }

    #[tokio::test]
    async fn a_held_connection_ends_as_lost_or_stopped() {
        // The hub answers a ping, then closes: the device sees it lost.
        let (client, mut hub) = tokio::io::duplex(64);
        let mut stream: Box<dyn Stream> = Box::new(client);
        hub.write_all(&[0xd0, 0]).await.expect("pingresp");
        drop(hub);
        let held = hold(&mut stream, std::future::pending()).await;
        assert_eq!(held, Held::Lost);

        // While the hub keeps it open, only the stop ends it.
        let (client, _hub) = tokio::io::duplex(64);
        let mut stream: Box<dyn Stream> = Box::new(client);
        let held = hold(&mut stream, async {}).await;
        assert_eq!(held, Held::Stopped);
    }
}
