//! The edge's `[upstream]` settings, as the link uses them.

use std::fmt;
use std::path::PathBuf;

/// How the edge reaches its hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// MQTT over TLS (port 8883).
    Mqtts,
    /// MQTT over QUIC (ALPN `mqtt`, Weir's QUIC gateway; port 14567).
    Quic,
    /// MQTT over WebSocket over TLS at `/$iothub/websocket` (port 443), for networks that
    /// let only HTTPS out.
    WebSocket,
}

impl Transport {
    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "mqtts" => Some(Transport::Mqtts),
            "quic" => Some(Transport::Quic),
            "websocket" => Some(Transport::WebSocket),
            _ => None,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Transport::Mqtts => 8883,
            Transport::Quic => 14567,
            Transport::WebSocket => 443,
        }
    }
}

/// How the edge proves its identity to the hub.
#[derive(Clone)]
pub enum Credential {
    /// SAS tokens signed with this symmetric key (base64).
    Sas(String),
    /// A TLS client certificate (PEM chain, device certificate first) and its key, read
    /// at every connect so a renewed certificate is picked up.
    X509 { cert: PathBuf, key: PathBuf },
}

/// Who the edge is on its hub and how it gets there.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// The hub's host name: the SAS token's resource and the TLS server name.
    pub hub: String,
    /// The edge's own device id on the hub (registered with `capabilities.iotEdge`).
    pub device_id: String,
    pub credential: Credential,
    pub transport: Transport,
    /// `host:port` to dial when the host name does not lead to the hub.
    pub address: Option<String>,
    /// PEM file of the CA that signed the hub's certificate; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// How often the edge asks the hub for its children (and at every connect).
    pub sync: std::time::Duration,
    /// The store-and-forward queue's size limit.
    pub budget_bytes: u64,
    /// The backlog's share of the link while live messages wait too (0..=1; 1: backlog
    /// first, every device's messages in order). See `lanes.rs`.
    pub catchup_share: f64,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("hub", &self.hub)
            .field("device_id", &self.device_id)
            .field(
                "credential",
                &match &self.credential {
                    Credential::Sas(_) => "sas <redacted>".to_owned(),
                    Credential::X509 { cert, .. } => format!("x509 {}", cert.display()),
                },
            )
            .field("transport", &self.transport)
            .field("address", &self.address)
            .field("ca", &self.ca)
            .field("sync", &self.sync)
            .field("budget_bytes", &self.budget_bytes)
            .field("catchup_share", &self.catchup_share)
            .finish()
    }
}

impl UpstreamConfig {
    /// Where to dial.
    pub fn address(&self) -> String {
        self.address
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.hub, self.transport.default_port()))
    }
}
