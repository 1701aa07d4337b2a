//! `weir simulate`: many devices publishing telemetry, with a progress bar and a report
//! of throughput and publish→PUBACK latency. Also drives plain brokers (mosquitto) so the
//! benchmarks can compare them under the same load.

mod conn;
mod payload;
mod quic;
mod storm;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::cli::HubArgs;
use crate::client::HubClient;
use conn::{Counters, Plan, Transport};
use payload::Template;

#[derive(Args, Debug)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub hub: HubArgs,
    /// Simulated devices, one MQTT connection each.
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// Messages per device; 0 means until --duration ends.
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// Stop publishing after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Target total rate in messages per second; 0 means as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// MQTT QoS for publishes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Payload template: {{seq}}, {{device}}, {{ts}}, {{rand:LO:HI}}, {{randint:LO:HI}}.
    #[arg(
        long,
        default_value = r#"{"temp": {{rand:15:35}}, "hum": {{randint:20:80}}, "seq": {{seq}}}"#
    )]
    pub payload: String,
    /// How devices connect: plain MQTT (to --mqtt), MQTT/TLS (to --mqtts) or MQTT over
    /// QUIC (to --quic); TLS and QUIC trust --ca.
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    pub transport: TransportKind,
    /// The same as --transport tls.
    #[arg(long, conflicts_with = "transport")]
    pub tls: bool,
    /// Plain MQTT address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: String,
    /// MQTT over TLS address.
    #[arg(long, default_value = "127.0.0.1:8883")]
    pub mqtts: String,
    /// MQTT over QUIC address (UDP).
    #[arg(long, default_value = "127.0.0.1:14567")]
    pub quic: String,
    /// Device id prefix; devices are PREFIX0000, PREFIX0001, ...
    #[arg(long, default_value = "sim-")]
    pub prefix: String,
    /// QoS 1 messages in flight per connection.
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// Target a plain MQTT broker (e.g. mosquitto): no registration, no credentials.
    #[arg(long)]
    pub broker: bool,
    /// Also subscribe to this filter on one more connection and count deliveries.
    #[arg(long)]
    pub subscribe: Option<String>,
    /// After publishing, wait until Weir's /metrics shows the messages in finalised Parquet
    /// files, and report the end-to-end rate.
    #[arg(long)]
    pub wait_archived: bool,
    /// The endpoint --wait-archived counts rows of.
    #[arg(long, default_value = "archive")]
    pub archive_endpoint: String,
    /// Register the devices and exit.
    #[arg(long)]
    pub register_only: bool,
    /// Only connect every device and hold the connections idle for --duration seconds
    /// (for measuring the memory an idle connection costs).
    #[arg(long, requires = "duration")]
    pub idle: bool,
    /// Connect from these local addresses in turn (`127.0.0.2-127.0.0.200`): each has its
    /// own ~28 k ephemeral ports, so 100 k connections to one server need several.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// A reconnect storm: connect every device, then drop all connections at once (no
    /// DISCONNECT, as in a network outage) and reconnect them all at once, retrying with
    /// backoff when refused; reports the time until all are back. Ends after --duration
    /// seconds more.
    #[arg(long, requires = "duration", conflicts_with = "idle")]
    pub storm: bool,
    /// With --storm: once all are connected, wait for this file to exist before the drop,
    /// so that several simulators (one per server process) drop together.
    #[arg(long, value_name = "FILE", requires = "storm")]
    pub drop_when: Option<std::path::PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    Tcp,
    Tls,
    Quic,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    if args.messages == 0 && args.duration.is_none() {
        bail!("give --messages or --duration, or the simulation never ends");
    }
    let files = crate::fdlimit::raise()?;
    // Connections, and a few files besides.
    if files < args.devices as u64 + 64 {
        bail!(
            "--devices {} needs as many open files, and only {files} are allowed: raise the hard limit (ulimit -Hn) or run as root",
            args.devices
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(simulate(args))
}

struct Device {
    id: String,
    login: Option<(String, String)>,
}

/// Registers (or looks up) the simulated devices and builds their MQTT credentials.
/// Registration requests in flight at once.
const REGISTER_CONCURRENCY: usize = 32;

async fn register(
    args: &SimulateArgs,
    client: &HubClient,
    ttl: i64,
) -> anyhow::Result<Vec<Device>> {
    use futures_util::{StreamExt, TryStreamExt};
    let bar = if args.quiet || args.json || args.devices < 1000 {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.devices as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("registering {bar:40} {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let out = futures_util::stream::iter(0..args.devices)
        .map(|i| {
            let bar = bar.clone();
            async move {
                let d = register_one(&format!("{}{i:04}", args.prefix), client, ttl).await;
                bar.inc(1);
                d
            }
        })
        .buffered(REGISTER_CONCURRENCY)
        .try_collect()
        .await;
    bar.finish_and_clear();
    out
}

async fn register_one(id: &str, client: &HubClient, ttl: i64) -> anyhow::Result<Device> {
    let path = format!("/devices/{id}");
    let body = json!({"deviceId": id, "authentication": {"type": "sas"}});
    let reply = client.call(Method::PUT, &path, Some(&body), None).await?;
    let dev = if reply.status == StatusCode::CONFLICT {
        client.call(Method::GET, &path, None, None).await?.ok()?
    } else {
        reply.ok()?
    };
    let key = dev["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .context("device without a key")?;
    let resource = format!("{}/devices/{id}", client.hostname);
    let token = weir_gateways::sas::build(&resource, key, weir_core::time::now_secs() + ttl, None)?;
    let user = format!("{}/{id}/?api-version=2021-04-12", client.hostname);
    Ok(Device {
        id: id.to_owned(),
        login: Some((user, token)),
    })
}

async fn metric(client: &HubClient, name: &str) -> anyhow::Result<u64> {
    let reply = client.call(Method::GET, "/metrics", None, None).await?;
    let text = reply.body.as_str().unwrap_or_default().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("metric {name} not found at /metrics"))
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<std::process::ExitCode> {
    let template = Arc::new(Template::parse(&args.payload)?);
    let client = if args.broker {
        None
    } else {
        Some(HubClient::new(&args.hub)?)
    };
    let ttl = 3600 + args.duration.unwrap_or(0.0) as i64;
    let devices = match &client {
        Some(c) => register(&args, c, ttl).await?,
        None => (0..args.devices)
            .map(|i| Device {
                id: format!("{}{i:04}", args.prefix),
                login: None,
            })
            .collect(),
    };
    let kind = if args.tls {
        TransportKind::Tls
    } else {
        args.transport
    };
    let ca = args
        .hub
        .ca
        .clone()
        .unwrap_or_else(|| args.hub.data_dir.join("tls/ca.pem"));
    let host = client
        .as_ref()
        .map_or("localhost".to_string(), |c| c.hostname.clone());
    let (addr, transport) = match kind {
        TransportKind::Tcp => (args.mqtt.clone(), Transport::Tcp),
        TransportKind::Tls => (
            args.mqtts.clone(),
            Transport::Tls(crate::client::tls_connector(&ca)?, host),
        ),
        TransportKind::Quic => {
            let server = tokio::net::lookup_host(&args.quic)
                .await?
                .next()
                .with_context(|| format!("--quic {} resolves to no address", args.quic))?;
            (
                args.quic.clone(),
                Transport::Quic(quic::endpoint(&ca, server)?, host),
            )
        }
    };
    let endpoint_metric = format!(
        "weir_archive_endpoint_rows_total{{endpoint=\"{}\"}}",
        args.archive_endpoint
    );
    if args.register_only {
        println!("registered {} device(s)", devices.len());
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let archived_before = match (&client, args.wait_archived) {
        (Some(c), true) => metric(c, &endpoint_metric).await.unwrap_or(0),
        _ => 0,
    };

    let received = Arc::new(AtomicU64::new(0));
    let last_received = Arc::new(std::sync::Mutex::new(None));
    let stop_sub = Arc::new(AtomicBool::new(false));
    let subscriber = args.subscribe.clone().map(|filter| {
        tokio::spawn(conn::subscribe(
            addr.clone(),
            filter,
            args.qos,
            Arc::clone(&received),
            Arc::clone(&last_received),
            Arc::clone(&stop_sub),
        ))
    });
    if subscriber.is_some() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let counters = Arc::new(Counters::default());
    let per_device_rate = if args.rate > 0.0 {
        args.rate / args.devices as f64
    } else {
        0.0
    };
    let total = args.messages.saturating_mul(args.devices as u64);
    let bar = if args.quiet || args.json {
        indicatif::ProgressBar::hidden()
    } else if total > 0 {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} msgs {per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let sources = match &args.source_ips {
        Some(r) if kind == TransportKind::Quic => {
            bail!("--source-ips {r}: only TCP and TLS connections take a source address")
        }
        Some(r) => storm::source_ips(r)?,
        None => Vec::new(),
    };
    if args.storm {
        let plans = devices
            .into_iter()
            .enumerate()
            .map(|(i, d)| conn::Plan {
                addr: addr.clone(),
                transport: transport.clone(),
                topic: String::new(),
                client_id: d.id,
                login: d.login,
                qos: 0,
                messages: 0,
                rate: 0.0,
                inflight: 1,
                template: Arc::clone(&template),
                idle: true,
                source: (!sources.is_empty()).then(|| sources[i % sources.len()]),
            })
            .collect();
        let hold = Duration::from_secs_f64(args.duration.unwrap_or(0.0));
        let storm = storm::Storm {
            hold,
            drop_when: args.drop_when.clone(),
        };
        return storm::run(plans, storm, &bar, args.json).await;
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, d) in devices.into_iter().enumerate() {
        let plan = Plan {
            addr: addr.clone(),
            transport: transport.clone(),
            topic: format!("devices/{}/messages/events/", d.id),
            client_id: d.id,
            login: d.login,
            qos: args.qos,
            messages: args.messages,
            rate: per_device_rate,
            inflight: args.inflight,
            template: Arc::clone(&template),
            idle: args.idle,
            source: (!sources.is_empty()).then(|| sources[i % sources.len()]),
        };
        tasks.push(tokio::spawn(conn::publish(
            plan,
            Arc::clone(&counters),
            i as u64 + 1,
        )));
    }
    let ticker = {
        let (counters, bar) = (Arc::clone(&counters), bar.clone());
        let duration = args.duration.map(Duration::from_secs_f64);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bar.set_position(counters.sent.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "connected {} acked {}",
                    counters.connected.load(Ordering::Relaxed),
                    counters.acked.load(Ordering::Relaxed)
                ));
                if duration.is_some_and(|d| started.elapsed() >= d) {
                    counters.stop();
                }
            }
        })
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(h)) => hist.add(&h)?,
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let publish_elapsed = started.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    let sent = counters.sent.load(Ordering::Relaxed);
    let acked = counters.acked.load(Ordering::Relaxed);

    let mut subscribed = None;
    if let Some(sub) = subscriber {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut quiet_since = Instant::now();
        let mut seen = received.load(Ordering::Relaxed);
        while received.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = received.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        stop_sub.store(true, Ordering::Relaxed);
        let _ = sub.await;
        let got = received.load(Ordering::Relaxed);
        let last = last_received
            .lock()
            .ok()
            .and_then(|l| *l)
            .unwrap_or(started);
        subscribed = Some((got, last.duration_since(started)));
    }

    let mut archived = None;
    if let (Some(c), true) = (&client, args.wait_archived) {
        let want = if args.qos == 1 { acked } else { sent };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let rows = metric(c, &endpoint_metric)
                .await
                .unwrap_or(0)
                .saturating_sub(archived_before);
            if rows >= want || Instant::now() > deadline {
                archived = Some((rows, started.elapsed()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let pct = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let report = json!({
        "devices": args.devices,
        "connected": counters.connected.load(Ordering::Relaxed),
        "lost": counters.lost.load(Ordering::Relaxed),
        "qos": args.qos,
        "sent": sent,
        "acked": acked,
        "publish_seconds": publish_elapsed.as_secs_f64(),
        "publish_rate": rate(sent, publish_elapsed),
        "latency_ms": if hist.is_empty() { json!(null) } else { json!({
            "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "p999": pct(0.999), "max": hist.max() as f64 / 1000.0
        })},
        "subscriber": subscribed.map(|(n, d)| json!({"received": n, "seconds": d.as_secs_f64(), "rate": rate(n, d)})),
        "archived": archived.map(|(n, d)| json!({"rows": n, "seconds": d.as_secs_f64(), "rate": rate(n, d)})),
        "errors": failures,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "devices {}  qos {}  sent {sent}  acked {acked}",
            args.devices, args.qos
        );
        println!(
            "published in {:.2} s: {:.0} msg/s",
            publish_elapsed.as_secs_f64(),
            rate(sent, publish_elapsed)
        );
        if !hist.is_empty() {
            println!(
                "publish→PUBACK latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                pct(0.5),
                pct(0.9),
                pct(0.99),
                pct(0.999),
                hist.max() as f64 / 1000.0
            );
        }
        if let Some((n, d)) = subscribed {
            println!(
                "subscriber received {n} in {:.2} s: {:.0} msg/s",
                d.as_secs_f64(),
                rate(n, d)
            );
        }
        if let Some((n, d)) = archived {
            println!(
                "archived {n} rows, visible in Parquet after {:.2} s: {:.0} msg/s end to end",
                d.as_secs_f64(),
                rate(n, d)
            );
        }
        for f in &failures {
            eprintln!("error: {f}");
        }
    }
    Ok(if failures.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}
