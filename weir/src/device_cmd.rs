//! `weir device ...`: registry management against a running hub.

use std::process::ExitCode;

use anyhow::{Context, anyhow};
use hyper::Method;
use serde_json::{Map, Value, json};
use weir_gateways::sas;

use crate::cli::{DeviceArgs, DeviceCommand};
use crate::client::{HubClient, runtime};

fn path(id: &str) -> String {
    format!(
        "/devices/{}",
        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
    )
}

fn key(device: &Value, secondary: bool) -> anyhow::Result<String> {
    let k = if secondary {
        "secondaryKey"
    } else {
        "primaryKey"
    };
    device["authentication"]["symmetricKey"][k]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the device has no symmetric key"))
}

/// `HostName=...;DeviceId=...;SharedAccessKey=...`, as the Azure SDKs take it.
pub fn connection_string(hostname: &str, id: &str, key: &str) -> String {
    format!("HostName={hostname};DeviceId={id};SharedAccessKey={key}")
}

pub fn parse_tags(tags: &[String]) -> anyhow::Result<Option<Value>> {
    if tags.is_empty() {
        return Ok(None);
    }
    let mut map = Map::new();
    for t in tags {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| anyhow!("--tag {t:?} must be key=value"))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(Some(Value::Object(map)))
}

pub fn run(args: DeviceArgs) -> anyhow::Result<ExitCode> {
    let client = HubClient::new(&args.hub)?;
    runtime()?.block_on(async move {
        match args.command {
            DeviceCommand::Create {
                id,
                primary_key,
                secondary_key,
                disabled,
                tags,
                x509_thumbprint,
                x509_secondary_thumbprint,
                x509_ca,
                edge,
                parent,
            } => {
                let authentication = match (x509_thumbprint, x509_ca) {
                    (Some(p), _) => json!({"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": p, "secondaryThumbprint": x509_secondary_thumbprint}}),
                    (None, true) => json!({"type": "certificateAuthority"}),
                    (None, false) => json!({"type": "sas", "symmetricKey": {"primaryKey": primary_key, "secondaryKey": secondary_key}}),
                };
                let mut body = json!({
                    "deviceId": id,
                    "status": if disabled { "disabled" } else { "enabled" },
                    "authentication": authentication,
                });
                if let Some(t) = parse_tags(&tags)? {
                    body["tags"] = t;
                }
                if edge {
                    body["capabilities"] = json!({"iotEdge": true});
                }
                if let Some(p) = parent {
                    body["parentScopes"] = json!([weir_hub::documents::device_scope(&p)]);
                }
                let dev = client.call(Method::PUT, &path(&id), Some(&body), None).await?.ok()?;
                let kind = dev["authentication"]["type"].as_str().unwrap_or("?");
                println!("created device {id} ({}, {kind})", dev["status"].as_str().unwrap_or("?"));
                if kind == "sas" {
                    println!("{}", connection_string(&client.hostname, &id, &key(&dev, false)?));
                }
            }
            DeviceCommand::List { top } => {
                let p = match top {
                    Some(n) => format!("/devices?top={n}"),
                    None => "/devices".to_string(),
                };
                let list = client.call(Method::GET, &p, None, None).await?.ok()?;
                let devices = list.as_array().cloned().unwrap_or_default();
                println!("{:<40} {:<9} CONNECTION", "DEVICE", "STATUS");
                for d in &devices {
                    println!(
                        "{:<40} {:<9} {}",
                        d["deviceId"].as_str().unwrap_or("?"),
                        d["status"].as_str().unwrap_or("?"),
                        d["connectionState"].as_str().unwrap_or("?")
                    );
                }
                eprintln!("{} device(s)", devices.len());
            }
            DeviceCommand::Show { id } => {
                let dev = client.call(Method::GET, &path(&id), None, None).await?.ok()?;
                println!("{}", serde_json::to_string_pretty(&dev)?);
            }
            DeviceCommand::Delete { id } => {
                client.call(Method::DELETE, &path(&id), None, None).await?.ok()?;
                println!("deleted device {id}");
            }
            DeviceCommand::SetStatus { id, status } => {
                let dev = client.call(Method::GET, &path(&id), None, None).await?.ok()?;
                let etag = dev["etag"].as_str().context("the device has no etag")?.to_string();
                let body = json!({"deviceId": id, "status": status});
                client.call(Method::PUT, &path(&id), Some(&body), Some(&etag)).await?.ok()?;
                println!("device {id} is now {status}");
            }
            DeviceCommand::ConnectionString { id, secondary } => {
                let dev = client.call(Method::GET, &path(&id), None, None).await?.ok()?;
                println!("{}", connection_string(&client.hostname, &id, &key(&dev, secondary)?));
            }
            DeviceCommand::Send {
                id,
                body,
                properties,
                ttl,
                ack,
                message_id,
                content_type,
            } => {
                let expiry = chrono::Utc::now() + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX / 2).min(48 * 3600));
                let mut headers = vec![
                    ("iothub-ack".to_string(), ack),
                    ("iothub-expiry".to_string(), expiry.to_rfc3339()),
                ];
                if let Some(m) = message_id {
                    headers.push(("iothub-messageid".into(), m));
                }
                if let Some(c) = content_type {
                    headers.push(("content-type".into(), c));
                }
                for p in properties {
                    let (k, v) = p.split_once('=').ok_or_else(|| anyhow!("--prop {p:?} must be key=value"))?;
                    headers.push((format!("iothub-app-{k}"), v.to_string()));
                }
                let path = format!("{}/messages/deviceBound", path(&id));
                client
                    .call_raw(Method::POST, &path, bytes::Bytes::from(body), &headers)
                    .await?
                    .ok()?;
                println!("queued a message for {id}");
            }
            DeviceCommand::Token { id, ttl } => {
                let dev = client.call(Method::GET, &path(&id), None, None).await?.ok()?;
                let expiry = weir_core::time::now_secs() + i64::try_from(ttl).unwrap_or(i64::MAX / 2);
                let resource = format!("{}/devices/{id}", client.hostname);
                println!("{}", sas::build(&resource, &key(&dev, false)?, expiry, None)?);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
