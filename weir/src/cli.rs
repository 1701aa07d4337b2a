//! Command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::{ca_cmd, config, device_cmd, dps_cmd, rules_cmd, serve, simulate};

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "An IoT hub and stream-processing engine that speaks the Azure IoT Hub device protocol",
    long_about = "Weir accepts device telemetry over MQTT (TCP and TLS) from Azure IoT device SDKs and plain MQTT \
clients, routes it with rules written as files, and archives it as partitioned Parquet.\n\n\
Start a hub with embedded defaults:   weir serve\n\
Register a device:                    weir device create dev1\n\
Check rules before deploying them:    weir rules check ./rules"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the hub: MQTT gateways, the routing engine, the archive and the REST API.
    Serve(ServeArgs),
    /// Print the default weir.toml with every setting and its meaning.
    DefaultConfig,
    /// Validate or test routing rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Manage devices on a running hub (through its REST API).
    Device(DeviceArgs),
    /// Manage the CA certificates X.509 devices chain to (upload, proof of possession).
    Ca(CaArgs),
    /// The provisioning service (`[dps]`): its ID scope, enrollments and registrations.
    Dps(DpsArgs),
    /// Edge mode (`[upstream]`): the link to the hub and the store-and-forward queue.
    Edge(EdgeArgs),
    /// Simulate devices publishing telemetry, and report throughput and latency.
    Simulate(simulate::SimulateArgs),
    /// Print a link that opens the live page of a running hub, signed in for a while.
    Dashboard(DashboardArgs),
}

#[derive(Args, Debug)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub hub: HubArgs,
    /// How long the link signs the browser in for, in seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(i64).range(60..=86_400))]
    pub valid_secs: i64,
}

#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// Configuration file; flags override it. Without it, weir.toml in the current
    /// directory is read if present.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Where Weir keeps its registry, keys, certificates and archive.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Directory of rules files (*.toml); reloaded when they change.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Plain MQTT listener address, or "off".
    #[arg(long)]
    pub mqtt: Option<String>,
    /// MQTT over TLS listener address, or "off".
    #[arg(long)]
    pub mqtts: Option<String>,
    /// MQTT over QUIC (UDP) listener address, or "off".
    #[arg(long)]
    pub quic: Option<String>,
    /// REST API listener (plain HTTP), or "off".
    #[arg(long)]
    pub http: Option<String>,
    /// REST API listener over TLS, or "off" (the default).
    #[arg(long)]
    pub https: Option<String>,
    /// The hub's host name: devices put it in their SAS tokens and MQTT usernames, and
    /// the generated server certificate names it.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Engine worker threads (default: the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// This process's index in the cluster's hosts file (`cluster.process`).
    #[arg(long, requires = "hosts")]
    pub process: Option<usize>,
    /// A cluster's hosts file: one host:port a line, in process order (`cluster.hosts`).
    #[arg(long)]
    pub hosts: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// Check every rules file in DIR; exits 1 and prints diagnostics on any error.
    Check {
        dir: PathBuf,
        /// Hub name for $iothubname enrichments.
        #[arg(long, default_value = "localhost")]
        hostname: String,
    },
    /// Run recorded events (JSON lines) through the engine with the rules in DIR and print,
    /// per event, the routes it matched and what each endpoint received.
    Test {
        dir: PathBuf,
        /// A JSON-lines file; see `weir rules test --help` for the format.
        #[arg(long)]
        events: PathBuf,
        /// Hub name for $iothubname enrichments.
        #[arg(long, default_value = "localhost")]
        hostname: String,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct DeviceArgs {
    #[command(flatten)]
    pub hub: HubArgs,
    #[command(subcommand)]
    pub command: DeviceCommand,
}

#[derive(Args, Debug)]
pub struct EdgeArgs {
    #[command(flatten)]
    pub hub: HubArgs,
    #[command(subcommand)]
    pub command: EdgeCommand,
}

#[derive(Subcommand, Debug)]
pub enum EdgeCommand {
    /// Link state, backlog (messages, bytes, oldest age) and drops of a running edge.
    Status {
        /// Print the JSON of GET /upstream.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct CaArgs {
    #[command(flatten)]
    pub hub: HubArgs,
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Upload a CA certificate. With --key, also prove possession of its key (the key
    /// never leaves this machine); without, print the verification code to sign.
    Add {
        name: String,
        /// The CA certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// The CA's private key (PEM), to verify it at once.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Prove possession of a CA's key: with --key, sign the current verification code
    /// here; with --proof, upload a certificate made elsewhere (CN = the code, signed by
    /// the CA).
    Verify {
        name: String,
        #[arg(long, conflicts_with = "proof", required_unless_present = "proof")]
        key: Option<PathBuf>,
        #[arg(long)]
        proof: Option<PathBuf>,
    },
    /// List CA certificates.
    List,
    /// Show one CA certificate as JSON.
    Show { name: String },
    /// Delete a CA certificate (devices that chained to it are disconnected).
    Delete { name: String },
}

#[derive(Args, Debug)]
pub struct DpsArgs {
    /// Service API and credentials; the connection string defaults to
    /// <data-dir>/provisioningserviceowner.connstr.
    #[command(flatten)]
    pub hub: HubArgs,
    #[command(subcommand)]
    pub command: DpsCommand,
}

#[derive(Subcommand, Debug)]
pub enum DpsCommand {
    /// Print the ID scope devices register with, and the linked hubs.
    Info,
    /// Individual enrollments (one device each).
    #[command(subcommand)]
    Enrollment(EnrollmentCommand),
    /// Enrollment groups (devices with derived keys, or certificates of one CA).
    #[command(subcommand)]
    Group(EnrollmentCommand),
    /// Registration states (where a device was assigned).
    #[command(subcommand)]
    Registration(RegistrationCommand),
}

#[derive(Subcommand, Debug)]
pub enum EnrollmentCommand {
    /// Create (or replace) an enrollment: symmetric keys (generated unless given), or
    /// X.509 with --cert (the device's certificate; for a group, the signing CA).
    Create {
        id: String,
        #[arg(long, conflicts_with = "cert")]
        primary_key: Option<String>,
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Assign to this linked hub (the static policy); default: hashed over all.
        #[arg(long)]
        hub: Option<String>,
        /// The device id on the hub (individual enrollments; default: the registration id).
        #[arg(long)]
        device_id: Option<String>,
        /// An initial twin tag as key=value (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Show one as JSON.
    Show { id: String },
    /// Disable it (its devices lose hub access under `dps.revoke = "cascade"`).
    Disable { id: String },
    /// Delete it (likewise).
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
pub enum RegistrationCommand {
    /// Show a registration state as JSON.
    Show { id: String },
    /// Forget a registration state (the next registration starts afresh).
    Delete { id: String },
}

/// How management commands reach a running hub.
#[derive(Args, Debug, Clone)]
pub struct HubArgs {
    /// The hub's REST API.
    #[arg(
        long,
        global = true,
        env = "WEIR_API",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api: String,
    /// Service connection string (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...).
    /// Default: read from <data-dir>/iothubowner.connstr.
    #[arg(
        long,
        global = true,
        env = "WEIR_CONNECTION_STRING",
        hide_env_values = true
    )]
    pub connection_string: Option<String>,
    /// Data directory of the hub, to find iothubowner.connstr.
    #[arg(long, global = true, default_value = "./weir-data")]
    pub data_dir: PathBuf,
    /// CA certificate to trust for an https:// API (default: <data-dir>/tls/ca.pem).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Register a device (keys are generated unless given).
    Create {
        id: String,
        #[arg(long)]
        primary_key: Option<String>,
        #[arg(long)]
        secondary_key: Option<String>,
        /// Register the device disabled.
        #[arg(long)]
        disabled: bool,
        /// A tag as key=value (repeatable); values that parse as JSON are stored as JSON.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Authenticate with a self-signed certificate of this SHA-1 or SHA-256 thumbprint
        /// instead of keys.
        #[arg(long, conflicts_with_all = ["primary_key", "secondary_key", "x509_ca"])]
        x509_thumbprint: Option<String>,
        /// A second accepted thumbprint (for certificate rollover).
        #[arg(long, requires = "x509_thumbprint")]
        x509_secondary_thumbprint: Option<String>,
        /// Authenticate with a certificate chained to a verified CA, whose subject CN is
        /// the device id.
        #[arg(long, conflicts_with_all = ["primary_key", "secondary_key"])]
        x509_ca: bool,
        /// Register an IoT Edge device (`capabilities.iotEdge`): it may be the parent of
        /// other devices and publish for them (`[upstream]` of an edge's weir.toml).
        #[arg(long)]
        edge: bool,
        /// The edge device this device sits behind: that edge may publish for it.
        #[arg(long, value_name = "EDGE_ID")]
        parent: Option<String>,
    },
    /// List devices.
    List {
        #[arg(long)]
        top: Option<usize>,
    },
    /// Show one device as JSON.
    Show { id: String },
    /// Delete a device.
    Delete { id: String },
    /// Enable or disable a device.
    SetStatus {
        id: String,
        #[arg(value_parser = ["enabled", "disabled"])]
        status: String,
    },
    /// Print the device's connection string.
    ConnectionString {
        id: String,
        /// Use the secondary key.
        #[arg(long)]
        secondary: bool,
    },
    /// Send the device a cloud-to-device message (delivered when it is connected and
    /// subscribed; kept up to the expiry otherwise).
    Send {
        id: String,
        /// The payload.
        #[arg(long, default_value = "")]
        body: String,
        /// An application property as key=value (repeatable).
        #[arg(long = "prop")]
        properties: Vec<String>,
        /// Seconds the message waits for the device (at most 48 hours).
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Feedback to record: none, positive, negative or full.
        #[arg(long, default_value = "none", value_parser = ["none", "positive", "negative", "full"])]
        ack: String,
        #[arg(long)]
        message_id: Option<String>,
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Print a SAS token for the device (the MQTT password).
    Token {
        id: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let cfg = config::load(&args)?;
            serve::run(cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DefaultConfig => {
            print!("{}", config::DEFAULT_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules(RulesCommand::Check { dir, hostname }) => {
            Ok(rules_cmd::check(&dir, &hostname))
        }
        Command::Rules(RulesCommand::Test {
            dir,
            events,
            hostname,
            json,
        }) => rules_cmd::test(&dir, &events, &hostname, json),
        Command::Device(d) => device_cmd::run(d),
        Command::Ca(c) => ca_cmd::run(c),
        Command::Dps(d) => dps_cmd::run(d),
        Command::Edge(e) => crate::edge::status(e),
        Command::Simulate(s) => simulate::run(s),
        Command::Dashboard(d) => {
            let client = crate::client::HubClient::new(&d.hub)?;
            println!("{}", client.dashboard_link(d.valid_secs)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
