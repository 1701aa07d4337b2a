//! Edge mode: `[upstream]` in weir.toml makes this process an edge that forwards to a hub
//! (decision 031).

use std::path::PathBuf;

use anyhow::bail;
use serde::Deserialize;
use weir_brokers::upstream::{Credential, Transport, UpstreamConfig};
use weir_gateways::mqtt::translate::{TranslateAuth, Translation};

/// `weir edge status`.
pub fn status(args: crate::cli::EdgeArgs) -> anyhow::Result<std::process::ExitCode> {
    let client = crate::client::HubClient::new(&args.hub)?;
    let crate::cli::EdgeCommand::Status { json } = args.command;
    crate::client::runtime()?.block_on(async move {
        let s = client
            .call(hyper::Method::GET, "/upstream", None, None)
            .await?
            .ok()?;
        if json {
            println!("{}", serde_json::to_string_pretty(&s)?);
            return Ok(std::process::ExitCode::SUCCESS);
        }
        let link = if s["connected"].as_bool() == Some(true) {
            "connected".to_owned()
        } else {
            format!(
                "down ({})",
                s["lastError"].as_str().unwrap_or("not connected yet")
            )
        };
        println!(
            "hub        {} as {}",
            s["hub"].as_str().unwrap_or("?"),
            s["deviceId"].as_str().unwrap_or("?")
        );
        println!("link       {link}");
        println!(
            "backlog    {} messages, {:.1} of {:.1} MiB",
            s["backlogMessages"],
            s["backlogBytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            s["budgetBytes"].as_f64().unwrap_or(0.0) / 1048576.0
        );
        if let Some(age) = s["oldestUnforwardedSecs"].as_f64() {
            println!("oldest     {age:.1} s waiting");
        }
        println!("forwarded  {}", s["forwarded"]);
        println!("dropped    {} (see the EdgeDrops ledger)", s["dropped"]);
        Ok(std::process::ExitCode::SUCCESS)
    })
}

/// A `[[translate]]` entry of weir.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslateSection {
    name: String,
    topic: String,
    auth: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password_file: String,
}

/// Checks the `[[translate]]` entries.
pub fn translations(
    entries: Vec<TranslateSection>,
) -> anyhow::Result<std::sync::Arc<[Translation]>> {
    let mut out = Vec::new();
    for (i, t) in entries.into_iter().enumerate() {
        let key = |k: &str| format!("`translate[{i}].{k}`");
        let auth = match (t.auth.as_str(), t.password.trim(), t.password_file.trim()) {
            ("device-key", "", "") => TranslateAuth::DeviceKey,
            ("device-key", _, _) => bail!(
                "{}: a device-key entry takes no password (clients use their device's key)",
                key("password")
            ),
            ("password", p, "") if !p.is_empty() => {
                TranslateAuth::Password(weir_core::Secret::new(p))
            }
            ("password", "", f) if !f.is_empty() => {
                TranslateAuth::Password(weir_core::Secret::new(
                    std::fs::read_to_string(f)
                        .map_err(|e| {
                            anyhow::anyhow!("{} = {f:?} cannot be read: {e}", key("password_file"))
                        })?
                        .trim(),
                ))
            }
            ("password", _, _) => bail!(
                "{} needs exactly one of `password` and `password_file`",
                key("auth")
            ),
            (other, _, _) => bail!(
                "{} = {other:?} must be \"device-key\" or \"password\"",
                key("auth")
            ),
        };
        let entry = Translation::new(&t.name, &t.topic, auth)
            .map_err(|e| anyhow::anyhow!("{} = {:?}: {e}", key("topic"), t.topic))?;
        out.push(entry);
    }
    Ok(out.into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    hub: String,
    device_id: String,
    key: String,
    key_file: String,
    cert: String,
    cert_key: String,
    transport: String,
    address: String,
    ca: String,
    sync_secs: f64,
    budget_mb: f64,
    catchup_share: f64,
}

/// Checks `[upstream]`; `None` when `hub` is empty (not an edge).
pub fn upstream(u: UpstreamSection) -> anyhow::Result<Option<UpstreamConfig>> {
    let hub = u.hub.trim();
    if hub.is_empty() {
        return Ok(None);
    }
    if hub.contains(['/', ' ', ';', ':']) {
        bail!("`upstream.hub` = {hub:?} must be the hub's host name (what its devices connect to)");
    }
    if let Err(e) = weir_core::ids::validate(&u.device_id) {
        bail!(
            "`upstream.device_id` = {:?}: {e}; register the edge on the hub with `weir device create <id> --edge`",
            u.device_id
        );
    }
    let credential = match (
        u.key.trim(),
        u.key_file.trim(),
        u.cert.trim(),
        u.cert_key.trim(),
    ) {
        (k, "", "", "") if !k.is_empty() => Credential::Sas(k.to_owned()),
        ("", f, "", "") if !f.is_empty() => Credential::Sas(
            std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("`upstream.key_file` = {f:?} cannot be read: {e}"))?
                .trim()
                .to_owned(),
        ),
        ("", "", c, k) if !c.is_empty() && !k.is_empty() => {
            let (cert, key) = (PathBuf::from(c), PathBuf::from(k));
            weir_brokers::tls::client_auth(&cert, &key)
                .map_err(|e| anyhow::anyhow!("`upstream.cert`/`upstream.cert_key`: {e}"))?;
            Credential::X509 { cert, key }
        }
        _ => bail!(
            "`upstream` needs one credential: `key` (the edge device's primary key) or `key_file` (a file holding it), or `cert` and `cert_key` (its X.509 certificate and private key)"
        ),
    };
    if let Credential::Sas(key) = &credential
        && weir_gateways::sas::sign(key, "x", "0").is_err()
    {
        bail!("`upstream.key` must be base64, as `weir device show` prints the edge's key");
    }
    let Some(transport) = Transport::parse(u.transport.trim()) else {
        bail!(
            "`upstream.transport` = {:?} must be \"mqtts\", \"quic\" or \"websocket\"",
            u.transport
        );
    };
    let address = match u.address.trim() {
        "" => None,
        a => {
            let port = a.rsplit_once(':').and_then(|(h, p)| {
                (!h.is_empty()).then_some(())?;
                p.parse::<u16>().ok()
            });
            if port.is_none() {
                bail!("`upstream.address` = {a:?} must be host:port, e.g. 127.0.0.1:8883");
            }
            Some(a.to_owned())
        }
    };
    let ca = match u.ca.trim() {
        "" => None,
        c => {
            let p = PathBuf::from(c);
            if !p.is_file() {
                bail!("`upstream.ca` = {c:?} is not a file (the PEM CA certificate of the hub)");
            }
            Some(p)
        }
    };
    if !(u.sync_secs >= 0.5 && u.sync_secs <= 86_400.0) {
        bail!("`upstream.sync_secs` must be between 0.5 and 86400");
    }
    if !(u.budget_mb > 0.0 && u.budget_mb.is_finite()) {
        bail!("`upstream.budget_mb` must be a positive number of MiB");
    }
    if !(0.0..=1.0).contains(&u.catchup_share) {
        bail!(
            "`upstream.catchup_share` = {} must be between 0 and 1 (the backlog's share of the link while live messages wait; 1 keeps every device's order)",
            u.catchup_share
        );
    }
    Ok(Some(UpstreamConfig {
        hub: hub.to_owned(),
        device_id: u.device_id,
        credential,
        transport,
        address,
        ca,
        sync: std::time::Duration::from_secs_f64(u.sync_secs),
        budget_bytes: (u.budget_mb * 1024.0 * 1024.0) as u64,
        catchup_share: u.catchup_share,
    }))
}
