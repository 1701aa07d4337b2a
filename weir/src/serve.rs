//! `weir serve`: wires the registry, rules, engine, gateways and API together, and takes
//! them down in order on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use weir_core::{ConnectionRegistry, HealthBoard};
use weir_engine::EngineConfig;
use weir_gateways::mqtt::Mqtt;
use weir_gateways::{
    Admission, Gateway, GatewayContext, GatewayMetrics, MqttListener, QuicListener,
};
use weir_storage::Registry;
use weir_storage::c2d::C2dStore;
use weir_storage::commit::CommitStore;
use weir_storage::log::Log;
use weir_storage::secret::{generate_key, write_private};

use crate::api::{self, ApiState, ServiceKeys};
use crate::config::Config;
use crate::reload::{self, ReloadStatus};
use crate::{http_server, tls_setup};
use weir_hub::{Events, Hub};

/// The example rules written into ./rules when it does not exist.
pub const EXAMPLE_RULES: &str = include_str!("../../rules/example.toml");

/// Threads for blocking work; see `run`.
const BLOCKING_THREADS: usize = 4;

/// How long a graceful stop may take before Weir gives up waiting.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// In a cluster the dataflow ends only once every process stops: a process stopped alone
/// leaves after this, its log closed (its sources hold the cluster's frontier until then,
/// and the others wait for it to return).
const CLUSTER_STOP_LIMIT: Duration = Duration::from_secs(10);

pub fn run(cfg: Config) -> anyhow::Result<()> {
    init_tracing(&cfg.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weir-io")
        // Blocking work (registry and session writes in redb, one writer at a time) gains
        // nothing from hundreds of threads; tokio's default of 512 let a connect storm
        // spawn one per device, each with its stack and allocator heap resident.
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("cannot start the async runtime")?;
    let served = rt.block_on(serve(cfg));
    // An engine that did not stop in time is still joined on a blocking thread: leave it
    // (the process ends with this function) rather than wait for it.
    rt.shutdown_timeout(Duration::from_secs(1));
    served
}

fn init_tracing(level: &str) {
    // rustls warns about every client that sends an IP address as SNI (mosquitto does).
    let level = if level.contains("rustls") {
        level.to_string()
    } else {
        format!("{level},rustls=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

async fn bind(addr: Option<SocketAddr>, key: &str) -> anyhow::Result<Option<TcpListener>> {
    let Some(a) = addr else { return Ok(None) };
    TcpListener::bind(a)
        .await
        .map(Some)
        .with_context(|| format!("cannot listen on {a} (`listen.{key}`, --{key}): is another process using it? Choose another address or \"off\""))
}

/// Reads the `iothubowner` key from `<data-dir>/iothubowner.connstr`, creating it (0600) at
/// first start and rewriting it when the host name changed.
fn ensure_owner_key(data_dir: &Path, hostname: &str) -> anyhow::Result<String> {
    ensure_policy_key(data_dir, hostname, "iothubowner")
}

/// Reads the key of shared access policy `policy` from `<data-dir>/{policy}.connstr`,
/// creating it (0600) at first start and rewriting it when the host name changed.
fn ensure_policy_key(data_dir: &Path, hostname: &str, policy: &str) -> anyhow::Result<String> {
    let path = data_dir.join(format!("{policy}.connstr"));
    let existing = std::fs::read_to_string(&path).ok();
    let key = match existing
        .as_deref()
        .and_then(|s| connstr_field(s, "SharedAccessKey"))
    {
        Some(k) => k.to_owned(),
        None => generate_key()?,
    };
    let connstr = format!("HostName={hostname};SharedAccessKeyName={policy};SharedAccessKey={key}");
    if existing.as_deref().map(str::trim) != Some(connstr.as_str()) {
        write_private(&path, format!("{connstr}\n").as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!(path = %path.display(), %policy, "wrote a service connection string");
    }
    Ok(key)
}

/// A field of an IoT Hub connection string (`Key=Value;...`).
pub fn connstr_field<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    s.trim().split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

fn load_rules(cfg: &Config) -> anyhow::Result<weir_rules::RuleSet> {
    if cfg.rules_is_default && !cfg.rules.exists() {
        std::fs::create_dir_all(&cfg.rules)?;
        std::fs::write(cfg.rules.join("example.toml"), EXAMPLE_RULES)?;
        tracing::info!(dir = %cfg.rules.display(), "created the rules directory with an example");
    }
    match weir_rules::load_dir(&cfg.rules, &cfg.hostname, crate::sinks::catalog()) {
        Ok(set) => Ok(set),
        Err(diags) => {
            for d in &diags {
                eprintln!(
                    "{}",
                    d.render(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                );
            }
            bail!(
                "{} error(s) in the rules in {}; fix them (check with `weir rules check {}`) and start again",
                diags.len(),
                cfg.rules.display(),
                cfg.rules.display()
            )
        }
    }
}

/// The soft limit (often 1024) would cap the hub far below `mqtt.max_connections`.
fn raise_fd_limit(max_connections: usize) {
    match crate::fdlimit::raise() {
        // Files besides connections: logs, archives, the registry, HTTP.
        Ok(n) if n < max_connections as u64 + 1024 => tracing::warn!(
            limit = n,
            max_connections,
            "the open file limit (RLIMIT_NOFILE) is below mqtt.max_connections: connections beyond it are refused; raise the hard limit (ulimit -Hn, LimitNOFILE=) or run as root"
        ),
        Ok(n) => tracing::info!(limit = n, "open file limit (RLIMIT_NOFILE)"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open file limit; connections beyond it are refused")
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    raise_fd_limit(cfg.mqtt_limits.max_connections);
    // Keys, device records and device data live here: only the hub's user may read them.
    weir_storage::fsutil::create_dir_durable(&cfg.data_dir)
        .and_then(|()| weir_storage::fsutil::restrict(&cfg.data_dir))
        .with_context(|| {
            format!(
                "cannot create the data directory {} (mode 0700)",
                cfg.data_dir.display()
            )
        })?;
    crate::cluster::check_shape(&cfg.data_dir, cfg.cluster.as_ref(), cfg.workers)?;
    let mut signals = Signals::new()?;
    // Bind first, so a busy port fails before anything else starts.
    let mqtt_l = bind(cfg.mqtt, "mqtt").await?;
    let mqtts_l = bind(cfg.mqtts, "mqtts").await?;
    let http_l = bind(cfg.http, "http").await?;
    let https_l = bind(cfg.https, "https").await?;

    let owner_key = ensure_owner_key(&cfg.data_dir, &cfg.hostname)?;
    let tls_files = if mqtts_l.is_some() || https_l.is_some() || cfg.quic.is_some() {
        Some(match &cfg.tls {
            Some((cert, key)) => tls_setup::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            },
            None => tls_setup::ensure_dev_certs(&cfg.data_dir, &cfg.hostname)?,
        })
    } else {
        None
    };
    let tls = match &tls_files {
        Some(files) if mqtts_l.is_some() || https_l.is_some() => {
            let config = weir_gateways::tls::server_config(&files.cert, &files.key, &[])
                .with_context(|| format!("loading the TLS certificate {}", files.cert.display()))?;
            Some(TlsAcceptor::from(config))
        }
        _ => None,
    };
    let quic = match (cfg.quic, &tls_files) {
        (Some(addr), Some(files)) => {
            let tls = weir_gateways::tls::quic_server_config(
                &files.cert,
                &files.key,
                &[weir_gateways::quic::ALPN],
            )
            .with_context(|| format!("loading the TLS certificate {}", files.cert.display()))?;
            Some(
                weir_gateways::quic::bind(addr, tls, &cfg.mqtt_settings).with_context(|| {
                    "`listen.quic`, --quic: is another process using it? Choose another address or \"off\""
                })?,
            )
        }
        _ => None,
    };

    let registry = Arc::new(
        Registry::open(&cfg.data_dir.join("registry.redb")).with_context(|| {
            format!("opening the device registry in {}", cfg.data_dir.display())
        })?,
    );
    let rules = load_rules(&cfg)?;
    tracing::info!(dir = %cfg.rules.display(), rules = %reload::describe(&rules), "rules loaded");
    let rules = Arc::new(ArcSwap::from_pointee(rules));

    upgrade_legacy_log(&cfg)?;
    let (mut log, recovered) = Log::open(cfg.log.clone())
        .with_context(|| format!("opening the ingest log in {}", cfg.log.dir.display()))?;
    let commits = Arc::new(
        CommitStore::open(&cfg.data_dir.join("commits.redb"))
            .context("opening the archive's commit store")?,
    );
    let endpoint_health = Arc::new(HealthBoard::default());
    tracing::info!(
        log_end = recovered.end,
        segments = recovered.segments,
        torn_bytes_cut = recovered.truncated_bytes,
        "ingest log recovered"
    );
    let archive_metrics = Arc::new(weir_storage::parquet::ArchiveMetrics::default());
    let c2d = Arc::new(
        C2dStore::open(&cfg.data_dir.join("c2d.redb"))
            .context("opening the cloud-to-device message store")?,
    );
    let events = Events::new(
        cfg.hostname.clone(),
        Arc::new(log.ingest()),
        tokio::runtime::Handle::current(),
    );
    let connections = Arc::new(ConnectionRegistry::default());
    // Keep-alive and credential expiry of every registered connection, on one timer.
    tokio::spawn(ConnectionRegistry::sweep(Arc::downgrade(&connections)));
    let hub = Hub::new(registry.clone(), c2d, events, Arc::clone(&connections));
    if let Some(c) = &cfg.cluster {
        // Every process keeps the whole registry: a device may connect to any of them.
        hub.join_cluster(c.process, c.processes());
    }
    let uplink = cfg.upstream.clone().map(|u| {
        tracing::info!(hub = %u.hub, edge = %u.device_id, address = %u.address(), "edge mode: forwarding to the hub through upstream endpoints");
        let children = weir_brokers::upstream::Children {
            hub: hub.clone(),
            edge: u.device_id.clone(),
        };
        let outbox = weir_storage::outbox::Outbox::open(&cfg.data_dir.join("upstream.redb"), u.budget_bytes)
            .map(Arc::new)
            .context("opening the upstream queue <data_dir>/upstream.redb")?;
        anyhow::Ok(weir_brokers::upstream::Uplink::start(
            &tokio::runtime::Handle::current(),
            u,
            outbox,
            Arc::new(log.ingest()),
            Some(children),
        ))
    })
    .transpose()?;
    let mut policies = vec![("iothubowner".to_string(), owner_key.clone())];
    let dps = match &cfg.dps {
        None => None,
        Some(dps_cfg) => {
            let dps_key =
                ensure_policy_key(&cfg.data_dir, &cfg.hostname, "provisioningserviceowner")?;
            policies.push(("provisioningserviceowner".into(), dps_key));
            let this_hub = crate::config::LinkedHub {
                hostname: cfg.hostname.clone(),
                api: cfg.http.map(|a| format!("http://{a}")).unwrap_or_default(),
                connection_string: format!(
                    "HostName={};SharedAccessKeyName=iothubowner;SharedAccessKey={owner_key}",
                    cfg.hostname
                ),
                weight: 1,
                ca: None,
            };
            let dps = crate::dps::Dps::open(&cfg.data_dir, dps_cfg, this_hub)?;
            tracing::info!(id_scope = %weir_core::Provisioning::id_scope(&dps), linked_hubs = dps_cfg.hubs.len().max(1), cascade = dps_cfg.cascade, "provisioning service on");
            if cfg.cluster.is_some() {
                // Enrollments and registrations reach the other processes with the
                // registry's changes (decision 043); opened before the engine starts, so
                // no change from the log passes before the store is linked.
                let staged = std::sync::Arc::clone(&hub.events().staged);
                registry.replicate_provisioning(
                    std::sync::Arc::clone(&dps.inner.store),
                    Box::new(move || staged.notify_one()),
                );
            }
            Some(dps)
        }
    };
    // Hub events a crash left in the registry's outbox go into the log first: the engine
    // takes the registry's tags as they are now as the device context at the log's end.
    let event_ingest: Arc<dyn weir_core::Ingest> = Arc::new(log.ingest());
    loop {
        match weir_hub::events::drain_outbox(&registry, &event_ingest).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                return Err(anyhow::anyhow!(e)).context(
                    "moving staged hub events into the ingest log before the engine starts",
                );
            }
        }
    }
    let engine_metrics = Arc::new(weir_engine::EngineMetrics::default());
    let stop_metrics = Arc::clone(&engine_metrics);
    if let Some(c) = &cfg.cluster {
        tracing::info!(process = c.process, processes = c.processes(), peers = ?c.hosts, "cluster: the dataflow starts once every process has joined");
    }
    let cluster_reports = Arc::new(api::dashboard::peers::ClusterReports::default());
    let mut engine = crate::engine_run::Running::start(crate::engine_run::EngineParts {
        config: EngineConfig {
            workers: cfg.workers,
            tick: Duration::from_millis(200),
            dedupe: cfg.dedupe,
            close_insights_at_end: false,
            cluster: cfg.cluster.clone(),
        },
        archive: cfg.archive.clone(),
        commits: Arc::clone(&commits),
        health: Arc::clone(&endpoint_health),
        uplink: uplink.clone(),
        hub: hub.clone(),
        rules: Arc::clone(&rules),
        registry: registry.clone(),
        feed: log.feed(),
        ingest: log.ingest(),
        metrics: Arc::clone(&engine_metrics),
        archive_metrics: Arc::clone(&archive_metrics),
        runtime: tokio::runtime::Handle::current(),
        reports: Arc::clone(&cluster_reports) as Arc<dyn weir_engine::cluster::Reports>,
    })?;
    let gateway_metrics = Arc::new(GatewayMetrics::default());

    let (stop_tx, stop_rx) = watch::channel(false);
    let gateways = Arc::new(GatewayContext {
        hub_name: cfg.hostname.clone(),
        ingest: Arc::new(log.ingest()),
        directory: registry.clone(),
        services: Arc::new(hub.clone()),
        provisioning: dps
            .clone()
            .map(|d| Arc::new(d) as Arc<dyn weir_core::Provisioning>),
        connections,
        admission: Arc::new(
            Admission::new(cfg.mqtt_limits.max_connections, cfg.mqtt_limits.max_pending)
                .with_throttle(weir_gateways::throttle::ConnectThrottle::new(
                    cfg.mqtt_limits.connect_rate,
                    cfg.mqtt_limits.connect_rate_per_address,
                )),
        ),
        metrics: Arc::clone(&gateway_metrics),
        shutdown: stop_rx.clone(),
    });
    let mut listeners: Vec<Box<dyn Gateway>> = Vec::new();
    if let Some(l) = mqtt_l {
        listeners.push(Box::new(MqttListener {
            listener: l,
            tls: None,
            config: cfg.mqtt_settings.clone(),
        }));
    }
    if let Some(l) = mqtts_l {
        listeners.push(Box::new(MqttListener {
            listener: l,
            tls: tls.clone(),
            config: cfg.mqtt_settings.clone(),
        }));
    }
    if let Some(amqp) = cfg.amqp.clone() {
        listeners.push(Box::new(weir_gateways::amqp::AmqpGateway { config: amqp }));
    }
    if let Some(endpoint) = quic {
        listeners.push(Box::new(QuicListener {
            endpoint,
            config: cfg.mqtt_settings.clone(),
        }));
    }
    let mut tasks = Vec::new();
    for g in listeners {
        tracing::debug!(protocol = g.protocol(), "gateway starting");
        tasks.push(tokio::spawn(g.run(Arc::clone(&gateways))));
    }
    let reload_status = Arc::new(ReloadStatus::default());
    let http_limits = http_server::HttpLimits::new(cfg.http_settings.clone());
    let log_view = log.metrics();
    let state = Arc::new(ApiState {
        hostname: cfg.hostname.clone(),
        keys: ServiceKeys { policies },
        dps,
        registry: registry.clone(),
        hub: hub.clone(),
        websocket: Mqtt::iothub(Arc::clone(&gateways), &cfg.mqtt_settings, "mqtt-ws"),
        engine_metrics,
        gateway_metrics,
        archive_metrics,
        log_metrics: log_view.clone(),
        reload: Arc::clone(&reload_status),
        rules: Arc::clone(&rules),
        endpoint_health: Arc::clone(&endpoint_health),
        http: Arc::clone(&http_limits),
        max_message_bytes: cfg.mqtt_settings.max_message_bytes,
        upstream: uplink.clone(),
        log_budget_bytes: cfg.log.budget_bytes,
        workers: cfg.workers,
        cluster: cfg
            .cluster
            .as_ref()
            .map_or((0, 1), |c| (c.process, c.processes())),
        cluster_reports: Arc::clone(&cluster_reports),
    });
    let weak = Arc::downgrade(&state);
    cluster_reports.set_local(move || {
        weak.upgrade().map_or(serde_json::Value::Null, |s| {
            api::dashboard::snapshot::report(&s)
        })
    });
    let app = api::router(state);
    if let Some(l) = http_l {
        tasks.push(tokio::spawn(http_server::serve(
            l,
            None,
            app.clone(),
            Arc::clone(&http_limits),
            stop_rx.clone(),
        )));
    }
    if let Some(l) = https_l {
        tasks.push(tokio::spawn(http_server::serve(
            l,
            tls.clone(),
            app.clone(),
            Arc::clone(&http_limits),
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(hub.clone().maintain(stop_rx.clone())));
    tasks.push(tokio::spawn(reload::watch_rules(
        cfg.rules.clone(),
        cfg.hostname.clone(),
        Arc::clone(&rules),
        reload_status,
        Duration::from_secs(1),
        stop_rx.clone(),
    )));

    let show = |a: Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
    tracing::info!(
        hostname = %cfg.hostname,
        mqtt = %show(cfg.mqtt),
        mqtts = %show(cfg.mqtts),
        quic = %show(cfg.quic),
        http = %show(cfg.http),
        https = %show(cfg.https),
        workers = cfg.workers,
        data = %cfg.data_dir.display(),
        "Weir is ready"
    );

    tokio::select! {
        () = signals.recv() => {}
        () = engine.ended() => tracing::error!("the engine ended by itself; stopping (the reason follows)"),
    }
    tracing::info!("stopping: no new connections; draining accepted messages");
    let stopping_since = std::time::Instant::now();
    let (phase, phase_rx) = tokio::sync::watch::channel("waiting for connections to close");
    let watch = tokio::spawn(watch_stop(
        phase_rx,
        log_view,
        Arc::clone(&endpoint_health),
        stop_metrics,
    ));
    let _ = stop_tx.send(true);
    // Registered connections hear it from the connection registry (those still
    // authenticating watch `stop_rx`).
    gateways.connections.shut();
    // A second signal stops at once.
    tokio::spawn(async move {
        signals.recv().await;
        eprintln!("second signal: exiting immediately");
        std::process::exit(130);
    });
    if !gateways.admission.drain(Duration::from_secs(10)).await {
        tracing::warn!("some connections did not close within 10 s");
    }
    for t in tasks {
        t.abort();
    }
    phase.send_replace("logging the last hub events");
    // Hub events staged by the last registry changes go into the log before it closes, so
    // this stop archives them too (otherwise the next start would).
    while let Ok(n) = weir_hub::events::drain_outbox(&registry, &event_ingest).await {
        if n == 0 {
            break;
        }
    }
    drop(event_ingest);
    // The writer syncs what is queued; the engine then reads the log to its end, and the
    // sinks commit everything before the workers exit.
    let in_cluster = cfg.cluster.is_some();
    phase.send_replace("waiting for the engine to archive and commit the log's end");
    let stopped = tokio::time::timeout(
        if in_cluster {
            CLUSTER_STOP_LIMIT
        } else {
            STOP_LIMIT
        },
        tokio::task::spawn_blocking(move || {
            engine.stopping();
            log.close();
            engine.join()
        }),
    )
    .await;
    watch.abort();
    match stopped {
        Ok(Ok(Ok(()))) => {
            tracing::info!(
                secs = format!("{:.1}", stopping_since.elapsed().as_secs_f64()),
                "stopped; everything accepted is archived and committed"
            );
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(e)) => Err(e.into()),
        Err(_) if in_cluster => {
            tracing::info!(
                "stopped while other processes of the cluster run: they wait for this one to return; nothing is lost (its log is read again at its next start)"
            );
            Ok(())
        }
        Err(_) => bail!(
            "the engine did not stop within {} s; nothing is lost: the log is replayed at the next start",
            STOP_LIMIT.as_secs()
        ),
    }
}

/// While a stop takes longer than a few seconds, says every few seconds what it waits
/// for, so an operator (or a test's log) sees whether connections, the log or the archive
/// hold it up.
async fn watch_stop(
    phase: tokio::sync::watch::Receiver<&'static str>,
    log: weir_storage::log::LogMetricsHandle,
    health: Arc<HealthBoard>,
    engine: Arc<weir_engine::EngineMetrics>,
) {
    use weir_engine::EngineMetrics as M;
    let every = Duration::from_secs(5);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        tracing::info!(
            waiting_for = *phase.borrow(),
            log_end = log.end(),
            committed_to = health.floor(),
            workers_running = M::get(&engine.workers_running),
            feeds_ended = M::get(&engine.sources_ended),
            sinks_closed = M::get(&engine.sinks_closed),
            "still stopping"
        );
    }
}

/// Upgrades an ingest log of format 1 (its records carry a device hash that was not
/// stable, and its commits were per worker), or refuses to start, saying what to do.
fn upgrade_legacy_log(cfg: &Config) -> anyhow::Result<()> {
    use weir_storage::commit::legacy;
    use weir_storage::log::{Format, format, upgrade_legacy};
    let dir = &cfg.log.dir;
    let end = match format(dir)
        .with_context(|| format!("reading the ingest log in {}", dir.display()))?
    {
        Format::Current => return Ok(()),
        Format::Newer(v) => bail!(
            "the ingest log in {} was written by a newer Weir (format {v}); run that version, or move the data directory aside",
            dir.display()
        ),
        Format::Legacy { end } => end,
    };
    let commits_dir = cfg.data_dir.join("commits");
    let archived = match legacy::read(&commits_dir)? {
        None => end == 0,
        Some(c) => c.floor.is_some_and(|f| f >= end),
    };
    if !archived {
        bail!(
            "the ingest log in {} was written by an earlier Weir (format 1) and holds records that are not archived yet; \
             start the earlier version once and stop it cleanly (a clean stop archives everything), then start this one",
            dir.display()
        );
    }
    upgrade_legacy(dir, end)?;
    legacy::remove(&commits_dir).with_context(|| {
        format!(
            "removing the old commit records in {}",
            commits_dir.display()
        )
    })?;
    tracing::info!(
        dir = %dir.display(),
        continues_at = end,
        "upgraded the ingest log to format 2 (stable device partitions; the worker count may now change between runs)"
    );
    Ok(())
}

/// SIGINT and SIGTERM, listened to from start-up on, so a second signal that arrives while
/// the first is being handled is not missed.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_key_is_created_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let k1 = ensure_owner_key(dir.path(), "localhost").expect("create");
        let p = dir.path().join("iothubowner.connstr");
        assert_eq!(
            std::fs::metadata(&p).expect("file").permissions().mode() & 0o777,
            0o600
        );
        let k2 = ensure_owner_key(dir.path(), "hub.example").expect("rename");
        assert_eq!(k1, k2);
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(connstr_field(&text, "HostName"), Some("hub.example"));
        assert_eq!(
            connstr_field(&text, "SharedAccessKeyName"),
            Some("iothubowner")
        );
    }
}
