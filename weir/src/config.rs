//! Configuration: embedded defaults < weir.toml < command-line flags, validated before
//! anything starts. Every error names the key it concerns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::cli::ServeArgs;

pub const DEFAULT_TOML: &str = include_str!("../default.toml");

/// The largest MQTT message the log can store: a record holds the body plus the
/// properties and ids, which the topic bounds; 64 KiB covers their encoding overhead.
pub const MAX_MESSAGE_BYTES: usize = weir_storage::log::MAX_RECORD - 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    hub: Hub,
    listen: Listen,
    tls: Tls,
    mqtt: Mqtt,
    http: HttpSection,
    amqp: AmqpSection,
    engine: EngineSection,
    cluster: crate::cluster::ClusterSection,
    log: LogSection,
    dedupe: DedupeSection,
    archive: Archive,
    logging: Logging,
    dps: DpsSection,
    upstream: crate::edge::UpstreamSection,
    /// `[[translate]]` entries; none by default.
    #[serde(default)]
    translate: Vec<crate::edge::TranslateSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DpsSection {
    enabled: bool,
    revoke: String,
    hub: Vec<DpsHubSection>,
    #[serde(default)]
    id_scope: Option<String>,
}

/// The provisioning service's settings.
#[derive(Debug, Clone)]
pub struct DpsConfig {
    /// The hubs it assigns to (empty: this hub).
    pub hubs: Vec<LinkedHub>,
    /// Revoking an enrollment disables its devices on their hubs.
    pub cascade: bool,
    /// The ID scope devices name (`None`: made at first start and kept).
    pub id_scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DpsHubSection {
    hostname: String,
    api: String,
    connection_string: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    ca: Option<PathBuf>,
}

fn one() -> u32 {
    1
}

/// A hub the provisioning service assigns devices to.
#[derive(Debug, Clone)]
pub struct LinkedHub {
    pub hostname: String,
    pub api: String,
    pub connection_string: String,
    pub weight: u32,
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hub {
    hostname: String,
    data_dir: PathBuf,
    rules: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Listen {
    mqtt: String,
    mqtts: String,
    quic: String,
    http: String,
    https: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tls {
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mqtt {
    max_message_bytes: usize,
    connect_timeout_secs: u64,
    max_connections: usize,
    max_pending_connections: usize,
    connect_rate: u32,
    connect_rate_per_address: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AmqpSection {
    url: String,
    queues: Vec<String>,
    prefetch: u16,
    trust_user_id: bool,
    dead_letter_exchange: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    max_connections: usize,
    header_timeout_secs: u64,
}

/// Connection limits over every device gateway.
#[derive(Debug, Clone, Copy)]
pub struct MqttLimits {
    pub max_connections: usize,
    pub max_pending: usize,
    /// Connects a second, hub-wide and per source address (0: no limit).
    pub connect_rate: u32,
    pub connect_rate_per_address: u32,
}

/// Limits of the HTTP listeners.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineSection {
    workers: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    fsync: String,
    max_delay_ms: u64,
    segment_mb: u64,
    budget_mb: u64,
    queue: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupeSection {
    window_secs: u64,
    per_device: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Archive {
    max_rows: usize,
    max_bytes: usize,
    max_age_secs: f64,
    zstd_level: i32,
    row_group_mb: usize,
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Logging {
    level: String,
}

/// The validated configuration `weir serve` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub rules: PathBuf,
    /// True when the rules directory is the built-in default (it may then be created).
    pub rules_is_default: bool,
    pub mqtt: Option<SocketAddr>,
    pub mqtts: Option<SocketAddr>,
    /// MQTT over QUIC (UDP).
    pub quic: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub mqtt_settings: weir_gateways::MqttConfig,
    pub mqtt_limits: MqttLimits,
    pub http_settings: HttpSettings,
    /// The AMQP gateway, when `amqp.url` is set.
    pub amqp: Option<weir_gateways::amqp::AmqpGatewayConfig>,
    pub workers: usize,
    /// Process `process` of a cluster; `None` alone.
    pub cluster: Option<weir_engine::cluster::ClusterConfig>,
    pub log: weir_storage::log::LogConfig,
    pub dedupe: Option<weir_engine::DedupeConfig>,
    pub archive: weir_storage::ParquetConfig,
    pub log_level: String,
    /// The provisioning service, when on.
    pub dps: Option<DpsConfig>,
    /// Edge mode: the hub this process forwards to.
    pub upstream: Option<weir_brokers::upstream::UpstreamConfig>,
}

/// Merges a TOML document over the embedded defaults, key by key.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn parse_table(text: &str, what: &str) -> anyhow::Result<toml::Table> {
    text.parse::<toml::Table>()
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// Reads configuration for `weir serve`.
pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut table = parse_table(DEFAULT_TOML, "embedded default configuration")?;
    let file = match &args.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from("weir.toml")).filter(|p| p.exists()),
    };
    if let Some(path) = &file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        merge(&mut table, parse_table(&text, &path.display().to_string())?);
    }
    let source = file
        .as_ref()
        .map_or("the default configuration".to_string(), |p| {
            p.display().to_string()
        });
    let de = toml::Value::Table(table);
    let parsed: File = serde_path_to_error::deserialize(de).map_err(|e| {
        anyhow::anyhow!(
            "{source}: key `{}`: {}",
            e.path(),
            e.inner().to_string().trim()
        )
    })?;
    resolve(parsed, args)
}

fn addr(key: &str, value: &str) -> anyhow::Result<Option<SocketAddr>> {
    let v = value.trim();
    if v.is_empty() || v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| {
        anyhow::anyhow!("`{key}` = {v:?} is not an address like 127.0.0.1:1883 (or \"off\")")
    })
}

fn amqp_gateway(
    a: AmqpSection,
    max_message_bytes: usize,
) -> anyhow::Result<Option<weir_gateways::amqp::AmqpGatewayConfig>> {
    if a.url.trim().is_empty() {
        return Ok(None);
    }
    if let Err(e) = weir_gateways::amqp::check_url(a.url.trim()) {
        bail!(
            "`amqp.url` is not an AMQP URL ({e}); for example amqp://user:password@127.0.0.1:5672/%2f"
        );
    }
    if a.queues.is_empty() || a.queues.iter().any(|q| q.is_empty() || q.len() > 255) {
        bail!("`amqp.queues` must name at least one queue, each of 1 to 255 bytes");
    }
    if a.prefetch == 0 {
        bail!("`amqp.prefetch` must be at least 1");
    }
    let x = a.dead_letter_exchange.trim();
    if x.is_empty() || x.len() > 255 || x.starts_with("amq.") {
        bail!(
            "`amqp.dead_letter_exchange` must name an exchange of 1 to 255 bytes not starting with amq."
        );
    }
    Ok(Some(weir_gateways::amqp::AmqpGatewayConfig {
        url: weir_core::SecretUrl::new(a.url.trim()),
        queues: a.queues,
        prefetch: a.prefetch,
        trust_user_id: a.trust_user_id,
        dead_letter_exchange: x.to_owned(),
        max_message_bytes,
    }))
}

fn resolve(f: File, a: &ServeArgs) -> anyhow::Result<Config> {
    let hostname = a.hostname.clone().unwrap_or(f.hub.hostname);
    if hostname.is_empty() || hostname.contains(['/', ' ', ';']) {
        bail!(
            "`hub.hostname` = {hostname:?} must be a host name such as localhost or myhub.example.com"
        );
    }
    let listen =
        |key: &str, flag: &Option<String>, file: &str| addr(key, flag.as_deref().unwrap_or(file));
    let mqtt = listen("listen.mqtt", &a.mqtt, &f.listen.mqtt)?;
    let mqtts = listen("listen.mqtts", &a.mqtts, &f.listen.mqtts)?;
    let quic = listen("listen.quic", &a.quic, &f.listen.quic)?;
    let http = listen("listen.http", &a.http, &f.listen.http)?;
    let https = listen("listen.https", &a.https, &f.listen.https)?;
    // QUIC is UDP: it may share a port number with a TCP listener.
    let bound: Vec<SocketAddr> = [mqtt, mqtts, http, https].into_iter().flatten().collect();
    for (i, x) in bound.iter().enumerate() {
        if bound[..i].contains(x) {
            bail!("two listeners in [listen] use the same address {x}");
        }
    }
    let tls = match (f.tls.cert.trim(), f.tls.key.trim()) {
        ("", "") => None,
        ("", _) | (_, "") => bail!("`tls.cert` and `tls.key` must be set together"),
        (c, k) => Some((PathBuf::from(c), PathBuf::from(k))),
    };
    if f.mqtt.max_message_bytes < 1024 || f.mqtt.max_message_bytes > MAX_MESSAGE_BYTES {
        bail!(
            "`mqtt.max_message_bytes` must be between 1024 and {MAX_MESSAGE_BYTES}: a message must fit in one ingest log record ({} bytes) with its properties",
            weir_storage::log::MAX_RECORD
        );
    }
    if f.mqtt.connect_timeout_secs == 0 {
        bail!("`mqtt.connect_timeout_secs` must be at least 1");
    }
    if f.mqtt.max_connections == 0 || f.mqtt.max_connections > u32::MAX as usize {
        bail!("`mqtt.max_connections` must be at least 1");
    }
    if f.mqtt.max_pending_connections == 0
        || f.mqtt.max_pending_connections > f.mqtt.max_connections
    {
        bail!("`mqtt.max_pending_connections` must be between 1 and `mqtt.max_connections`");
    }
    if f.http.max_connections == 0 || f.http.max_connections > u32::MAX as usize {
        bail!("`http.max_connections` must be at least 1");
    }
    if !(1..=3600).contains(&f.http.header_timeout_secs) {
        bail!("`http.header_timeout_secs` must be between 1 and 3600");
    }
    let amqp = amqp_gateway(f.amqp, f.mqtt.max_message_bytes)?;
    let workers = match a.workers.unwrap_or(f.engine.workers) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n if n > 256 => bail!("`engine.workers` = {n} is more than 256"),
        n => n,
    };
    let cluster = crate::cluster::load(&f.cluster, a.process, a.hosts.as_deref())?;
    let Some(fsync) = weir_storage::log::FsyncPolicy::parse(&f.log.fsync) else {
        bail!(
            "`log.fsync` = {:?}: use \"batch\", \"always\" or \"never\"",
            f.log.fsync
        );
    };
    if f.log.max_delay_ms > 1000 {
        bail!("`log.max_delay_ms` must be at most 1000");
    }
    if f.log.segment_mb == 0 || f.log.budget_mb < 2 * f.log.segment_mb {
        bail!("`log.budget_mb` must be at least twice `log.segment_mb`, and both positive");
    }
    if f.log.queue == 0 {
        bail!("`log.queue` must be at least 1");
    }
    if f.dedupe.window_secs > 0 && f.dedupe.per_device == 0 {
        bail!("`dedupe.per_device` must be at least 1 (or set `dedupe.window_secs` = 0)");
    }
    if !(1..=22).contains(&f.archive.zstd_level) {
        bail!("`archive.zstd_level` must be between 1 and 22");
    }
    if f.archive.max_rows == 0 || f.archive.max_bytes == 0 {
        bail!("`archive.max_rows` and `archive.max_bytes` must be positive");
    }
    if !(f.archive.max_age_secs > 0.0 && f.archive.max_age_secs.is_finite()) {
        bail!("`archive.max_age_secs` must be positive");
    }
    weir_storage::parquet::options::check_path_template(&f.archive.path)
        .map_err(|e| anyhow::anyhow!("`archive.path`: {e}"))?;
    let dps = if f.dps.enabled {
        let mut hubs = Vec::new();
        for (i, h) in f.dps.hub.into_iter().enumerate() {
            let key = |k: &str| format!("`dps.hub[{i}].{k}`");
            if h.hostname.is_empty() || h.hostname.contains(['/', ' ', ';']) {
                bail!("{} = {:?} must be a host name", key("hostname"), h.hostname);
            }
            if !(h.api.starts_with("http://") || h.api.starts_with("https://")) {
                bail!(
                    "{} = {:?} must be an http:// or https:// URL",
                    key("api"),
                    h.api
                );
            }
            if !h.connection_string.contains("SharedAccessKey=") {
                bail!(
                    "{} must be a service connection string (HostName=…;SharedAccessKeyName=iothubowner;SharedAccessKey=…)",
                    key("connection_string")
                );
            }
            if h.weight == 0 {
                bail!("{} must be at least 1", key("weight"));
            }
            hubs.push(LinkedHub {
                hostname: h.hostname,
                api: h.api,
                connection_string: h.connection_string,
                weight: h.weight,
                ca: h.ca,
            });
        }
        if hubs.is_empty() && http.is_none() {
            bail!(
                "`dps.enabled` without [[dps.hub]] assigns devices to this hub through its REST API: turn on `listen.http`, or link hubs"
            );
        }
        let cascade = match f.dps.revoke.as_str() {
            "cascade" => true,
            "provisioning-only" => false,
            other => bail!("`dps.revoke` = {other:?} must be \"cascade\" or \"provisioning-only\""),
        };
        let valid =
            |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if let Some(scope) = f.dps.id_scope.as_deref().filter(|s| !valid(s)) {
            bail!(
                "`dps.id_scope` = {scope:?} must be 1 to 64 letters and digits, like 0ne00012345"
            );
        }
        Some(DpsConfig {
            hubs,
            cascade,
            id_scope: f.dps.id_scope,
        })
    } else {
        None
    };
    if cluster.is_some() && dps.as_ref().is_some_and(|d| d.id_scope.is_none()) {
        bail!(
            "`dps.id_scope` must be set in a cluster: devices may register through any process, so every process names the same scope; set it to the same value (e.g. the one `weir dps info` shows) in every process's weir.toml"
        );
    }
    let upstream = crate::edge::upstream(f.upstream)?;
    let translations = crate::edge::translations(f.translate)?;
    let data_dir = a.data_dir.clone().unwrap_or(f.hub.data_dir);
    let rules_is_default = a.rules.is_none() && f.hub.rules == Path::new("./rules");
    let rules = a.rules.clone().unwrap_or(f.hub.rules);
    let data_dir_for_log = data_dir.clone();
    let mut archive = weir_storage::ParquetConfig::new(data_dir.join("archive"));
    archive.max_rows = f.archive.max_rows;
    archive.max_bytes = f.archive.max_bytes;
    archive.max_age = Duration::from_secs_f64(f.archive.max_age_secs);
    archive.zstd_level = f.archive.zstd_level;
    archive.row_group_bytes = f.archive.row_group_mb.max(1) * 1024 * 1024;
    archive.default_path = f.archive.path;
    Ok(Config {
        hostname,
        data_dir,
        rules,
        rules_is_default,
        mqtt,
        mqtts,
        quic,
        http,
        https,
        tls,
        mqtt_settings: weir_gateways::MqttConfig {
            max_message_bytes: f.mqtt.max_message_bytes,
            connect_timeout: Duration::from_secs(f.mqtt.connect_timeout_secs),
            translations,
        },
        mqtt_limits: MqttLimits {
            max_connections: f.mqtt.max_connections,
            max_pending: f.mqtt.max_pending_connections,
            connect_rate: f.mqtt.connect_rate,
            connect_rate_per_address: f.mqtt.connect_rate_per_address,
        },
        http_settings: HttpSettings {
            max_connections: f.http.max_connections,
            header_timeout: Duration::from_secs(f.http.header_timeout_secs),
        },
        amqp,
        workers,
        log: weir_storage::log::LogConfig {
            clock: cluster.as_ref().map(|c| weir_storage::log::ClusterClock {
                process: c.process as u64,
                processes: c.processes() as u64,
            }),
            dir: data_dir_for_log.join("log"),
            fsync,
            max_delay: Duration::from_millis(f.log.max_delay_ms),
            segment_bytes: f.log.segment_mb * 1024 * 1024,
            budget_bytes: f.log.budget_mb * 1024 * 1024,
            queue: f.log.queue,
            keep: Duration::from_secs(f.dedupe.window_secs),
        },
        dedupe: (f.dedupe.window_secs > 0).then_some(weir_engine::DedupeConfig {
            window: Duration::from_secs(f.dedupe.window_secs),
            per_device: f.dedupe.per_device,
        }),
        cluster,
        archive,
        log_level: f.logging.level,
        dps,
        upstream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("weir.toml");
        std::fs::write(&p, text)?;
        load(&ServeArgs {
            config: Some(p),
            ..ServeArgs::default()
        })
    }

    #[test]
    fn defaults_are_valid_and_flags_override() {
        let c = load(&ServeArgs {
            config: None,
            mqtt: Some("off".into()),
            workers: Some(3),
            ..ServeArgs::default()
        })
        .expect("defaults load");
        assert_eq!(c.mqtt, None);
        assert_eq!(c.workers, 3);
        assert_eq!(c.mqtts, Some("127.0.0.1:8883".parse().expect("addr")));
    }

    #[test]
    fn errors_name_the_key() {
        let e = with_file("[mqtt]\nmax_message_bytes = \"big\"\n").expect_err("type error");
        assert!(e.to_string().contains("mqtt.max_message_bytes"), "{e}");
        let e = with_file("[listen]\nhttp = \"nowhere\"\n").expect_err("bad addr");
        assert!(e.to_string().contains("listen.http"), "{e}");
        let e = with_file("[archive]\nzstd = 3\n").expect_err("unknown key");
        assert!(e.to_string().contains("archive"), "{e}");
        let e = with_file("[mqtt]\nmax_message_bytes = 100000000\n").expect_err("too big");
        assert!(
            e.to_string().contains("mqtt.max_message_bytes")
                && e.to_string().contains("log record"),
            "{e}"
        );
        with_file(&format!(
            "[mqtt]\nmax_message_bytes = {MAX_MESSAGE_BYTES}\n"
        ))
        .expect("the largest message the log stores is accepted");
    }

    #[test]
    fn upstream_settings_are_checked_before_anything_starts() {
        let edge = "[upstream]\nhub = \"hub.test\"\ndevice_id = \"edge1\"\nkey = \"a2V5\"\n";
        let c = with_file(&format!(
            "{edge}transport = \"websocket\"\ncatchup_share = 0.25\n"
        ))
        .expect("a valid edge");
        let u = c.upstream.expect("an edge");
        assert_eq!(u.address(), "hub.test:443");
        assert!((u.catchup_share - 0.25).abs() < f64::EPSILON);
        for (line, key) in [
            ("catchup_share = 1.5", "upstream.catchup_share"),
            ("transport = \"carrier-pigeon\"", "upstream.transport"),
            ("budget_mb = 0", "upstream.budget_mb"),
        ] {
            let e = with_file(&format!("{edge}{line}\n")).expect_err(line);
            assert!(e.to_string().contains(key), "{line}: {e}");
        }
    }

    #[test]
    fn a_cluster_with_a_provisioning_service_names_its_id_scope() {
        let dir = tempfile::tempdir().expect("tmp");
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1:4101\n127.0.0.1:4102\n").expect("hosts");
        let cluster = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[cluster]\nhosts = {:?}\nprocess = 1\n[dps]\nenabled = true\n",
            hosts.display().to_string()
        );
        let e = with_file(&cluster).expect_err("no scope");
        assert!(e.to_string().contains("dps.id_scope"), "{e}");
        let c = with_file(&format!("{cluster}id_scope = \"0ne00C1A5\"\n")).expect("a scope");
        let scope = c.dps.and_then(|d| d.id_scope);
        assert_eq!(scope.as_deref(), Some("0ne00C1A5"));
        let e = with_file(&format!("{cluster}id_scope = \"0ne/../x\"\n")).expect_err("bad");
        assert!(e.to_string().contains("dps.id_scope"), "{e}");
    }
}
