//! `weir ca ...`: CA certificates on a running hub, with IoT Hub's proof of possession
//! done locally when the CA key is at hand (it is never sent).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use base64::Engine as _;
use hyper::Method;
use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};

use crate::cli::{CaArgs, CaCommand};
use crate::client::{HubClient, runtime};

fn path(name: &str, tail: &str) -> String {
    format!(
        "/certificates/{}{tail}",
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
    )
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn etag(doc: &Value) -> anyhow::Result<String> {
    doc["etag"]
        .as_str()
        .map(str::to_owned)
        .context("the hub's answer has no etag")
}

/// A certificate whose subject CN is `code`, signed with the CA's key: the proof.
fn sign_proof(ca: &Value, key_pem: &str, code: &str) -> anyhow::Result<String> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(ca["properties"]["certificate"].as_str().unwrap_or_default())
        .context("the hub returned no CA certificate")?;
    let key = KeyPair::from_pem(key_pem).context("reading the CA key (PEM)")?;
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(der), key)
        .context("the key does not fit the CA certificate")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, code);
    let now = chrono::Utc::now();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    let until = now + chrono::Duration::days(1);
    params.not_after = rcgen::date_time_ymd(
        chrono::Datelike::year(&until),
        u8::try_from(chrono::Datelike::month(&until)).unwrap_or(1),
        u8::try_from(chrono::Datelike::day(&until)).unwrap_or(1),
    );
    let proof_key = KeyPair::generate()?;
    Ok(params.signed_by(&proof_key, &issuer)?.pem())
}

/// Proves possession of `name`'s key: a fresh code, signed here with `key_pem`, or the
/// certificate in `proof_pem` made for the current code.
async fn verify(
    client: &HubClient,
    name: &str,
    key_pem: Option<String>,
    proof_pem: Option<String>,
) -> anyhow::Result<Value> {
    let current = client
        .call(Method::GET, &path(name, ""), None, None)
        .await?
        .ok()?;
    let proof = match (key_pem, proof_pem) {
        (_, Some(p)) => p,
        (Some(key), None) => {
            let coded = client
                .call(
                    Method::POST,
                    &path(name, "/generateVerificationCode"),
                    None,
                    Some(&etag(&current)?),
                )
                .await?
                .ok()?;
            let code = coded["properties"]["verificationCode"]
                .as_str()
                .context("the hub returned no verification code")?;
            sign_proof(&coded, &key, code)?
        }
        (None, None) => return Err(anyhow!("give --key (the CA key) or --proof")),
    };
    let latest = client
        .call(Method::GET, &path(name, ""), None, None)
        .await?
        .ok()?;
    client
        .call(
            Method::POST,
            &path(name, "/verify"),
            Some(&json!({ "certificate": proof })),
            Some(&etag(&latest)?),
        )
        .await?
        .ok()
}

pub fn run(args: CaArgs) -> anyhow::Result<ExitCode> {
    let client = HubClient::new(&args.hub)?;
    runtime()?.block_on(async move {
        match args.command {
            CaCommand::Add { name, cert, key } => {
                let pem = read(&cert, "CA certificate")?;
                let body = json!({ "properties": { "certificate": pem } });
                client
                    .call(Method::PUT, &path(&name, ""), Some(&body), None)
                    .await?
                    .ok()?;
                match key {
                    Some(k) => {
                        verify(&client, &name, Some(read(&k, "CA key")?), None).await?;
                        println!("added CA certificate {name} and proved possession of its key: verified");
                    }
                    None => {
                        let current = client.call(Method::GET, &path(&name, ""), None, None).await?.ok()?;
                        let coded = client
                            .call(Method::POST, &path(&name, "/generateVerificationCode"), None, Some(&etag(&current)?))
                            .await?
                            .ok()?;
                        println!("added CA certificate {name} (not verified yet)");
                        println!("verification code: {}", coded["properties"]["verificationCode"].as_str().unwrap_or("?"));
                        println!("sign a certificate with this code as its subject CN using the CA's key, then run");
                        println!("  weir ca verify {name} --proof <certificate.pem>   (or: --key <ca.key> to sign it here)");
                    }
                }
            }
            CaCommand::Verify { name, key, proof } => {
                let key = key.map(|k| read(&k, "CA key")).transpose()?;
                let proof = proof.map(|p| read(&p, "proof certificate")).transpose()?;
                verify(&client, &name, key, proof).await?;
                println!("CA certificate {name} is verified");
            }
            CaCommand::List => {
                let list = client.call(Method::GET, "/certificates", None, None).await?.ok()?;
                let all = list["value"].as_array().cloned().unwrap_or_default();
                println!("{:<24} {:<9} {:<22} THUMBPRINT", "NAME", "VERIFIED", "EXPIRY");
                for c in &all {
                    let p = &c["properties"];
                    println!(
                        "{:<24} {:<9} {:<22} {}",
                        c["name"].as_str().unwrap_or("?"),
                        p["isVerified"].as_bool().unwrap_or(false),
                        p["expiry"].as_str().unwrap_or("?"),
                        p["thumbprint"].as_str().unwrap_or("?"),
                    );
                }
                eprintln!("{} certificate(s)", all.len());
            }
            CaCommand::Show { name } => {
                let doc = client.call(Method::GET, &path(&name, ""), None, None).await?.ok()?;
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
            CaCommand::Delete { name } => {
                client
                    .call(Method::DELETE, &path(&name, ""), None, Some("*"))
                    .await?
                    .ok()?;
                println!("deleted CA certificate {name}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
