//! `weir dps ...`: the provisioning service's enrollments and registrations, through its
//! service API (policy `provisioningserviceowner`).

use std::process::ExitCode;

use anyhow::Context;
use hyper::Method;
use serde_json::{Value, json};

use crate::cli::{DpsArgs, DpsCommand, EnrollmentCommand, RegistrationCommand};
use crate::client::{HubClient, runtime};
use crate::device_cmd::parse_tags;

fn path(kind: &str, id: &str) -> String {
    format!(
        "/{kind}/{}",
        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
    )
}

async fn enrollment(
    client: &HubClient,
    kind: &str,
    group: bool,
    cmd: EnrollmentCommand,
) -> anyhow::Result<()> {
    match cmd {
        EnrollmentCommand::Create {
            id,
            primary_key,
            cert,
            hub,
            device_id,
            tags: tag_list,
            disabled,
        } => {
            let attestation = match cert {
                Some(c) => {
                    let pem = std::fs::read_to_string(&c)
                        .with_context(|| format!("reading {}", c.display()))?;
                    let set = if group {
                        "signingCertificates"
                    } else {
                        "clientCertificates"
                    };
                    json!({"type": "x509", "x509": {set: {"primary": {"certificate": pem}}}})
                }
                None => {
                    json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": primary_key, "secondaryKey": primary_key}})
                }
            };
            let mut body = json!({
                "attestation": attestation,
                "provisioningStatus": if disabled { "disabled" } else { "enabled" },
                "initialTwin": {"tags": parse_tags(&tag_list)?.unwrap_or_else(|| json!({})), "properties": {"desired": {}}},
            });
            if let Some(h) = hub {
                body["allocationPolicy"] = json!("static");
                body["iotHubHostName"] = json!(h);
            }
            if let Some(d) = device_id {
                body["deviceId"] = json!(d);
            }
            let e = client
                .call(Method::PUT, &path(kind, &id), Some(&body), Some("*"))
                .await?
                .ok()?;
            println!(
                "enrollment {id} ({})",
                e["provisioningStatus"].as_str().unwrap_or("?")
            );
            if let Some(k) = e["attestation"]["symmetricKey"]["primaryKey"].as_str() {
                if group {
                    println!(
                        "group key: {k}  (each device uses base64(HMAC-SHA256(key, registration id)))"
                    );
                } else {
                    println!("key: {k}");
                }
            }
        }
        EnrollmentCommand::Show { id } => {
            let e = client
                .call(Method::GET, &path(kind, &id), None, None)
                .await?
                .ok()?;
            println!("{}", serde_json::to_string_pretty(&e)?);
        }
        EnrollmentCommand::Disable { id } => {
            let mut e = client
                .call(Method::GET, &path(kind, &id), None, None)
                .await?
                .ok()?;
            let etag = e["etag"].as_str().context("no etag")?.to_owned();
            e["provisioningStatus"] = json!("disabled");
            client
                .call(Method::PUT, &path(kind, &id), Some(&e), Some(&etag))
                .await?
                .ok()?;
            println!("enrollment {id} is disabled");
        }
        EnrollmentCommand::Delete { id } => {
            client
                .call(Method::DELETE, &path(kind, &id), None, Some("*"))
                .await?
                .ok()?;
            println!("deleted enrollment {id}");
        }
    }
    Ok(())
}

pub fn run(mut args: DpsArgs) -> anyhow::Result<ExitCode> {
    if args.hub.connection_string.is_none() {
        let p = args.hub.data_dir.join("provisioningserviceowner.connstr");
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {}: pass --connection-string, or --data-dir of a hub started with [dps] enabled = true",
                p.display()
            )
        })?;
        args.hub.connection_string = Some(text.trim().to_owned());
    }
    let client = HubClient::new(&args.hub)?;
    runtime()?.block_on(async move {
        match args.command {
            DpsCommand::Info => {
                let i = client
                    .call(Method::GET, "/provisioning", None, None)
                    .await?
                    .ok()?;
                println!("ID scope:     {}", i["idScope"].as_str().unwrap_or("?"));
                println!(
                    "service host: {}",
                    i["serviceHostName"].as_str().unwrap_or("?")
                );
                let hubs: Vec<&str> = i["linkedHubs"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                println!("linked hubs:  {}", hubs.join(", "));
            }
            DpsCommand::Enrollment(c) => enrollment(&client, "enrollments", false, c).await?,
            DpsCommand::Group(c) => enrollment(&client, "enrollmentGroups", true, c).await?,
            DpsCommand::Registration(RegistrationCommand::Show { id }) => {
                let r = client
                    .call(Method::GET, &path("registrations", &id), None, None)
                    .await?
                    .ok()?;
                println!("{}", serde_json::to_string_pretty(&r)?);
            }
            DpsCommand::Registration(RegistrationCommand::Delete { id }) => {
                client
                    .call(Method::DELETE, &path("registrations", &id), None, None)
                    .await?
                    .ok()?;
                println!("deleted registration {id}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
