//! A small client for Weir's REST API, authenticated like the IoT Hub service SDK.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use weir_gateways::sas;

use crate::cli::HubArgs;
use crate::serve::connstr_field;

pub struct HubClient {
    uri: Uri,
    /// The hub host name from the connection string: the SAS resource.
    pub hostname: String,
    policy: String,
    key: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A JSON response.
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// The body on success; otherwise an error with IoT Hub's message and what to do.
    pub fn ok(self) -> anyhow::Result<Value> {
        if self.status.is_success() {
            return Ok(self.body);
        }
        let msg = self
            .body
            .get("Message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let hint = match self.status {
            StatusCode::UNAUTHORIZED => {
                "; check the service connection string (--connection-string, or iothubowner.connstr in --data-dir)"
            }
            StatusCode::NOT_FOUND => "; list devices with `weir device list`",
            _ => "",
        };
        bail!("the hub answered {}: {msg}{hint}", self.status)
    }
}

impl HubClient {
    pub fn new(args: &HubArgs) -> anyhow::Result<HubClient> {
        let connstr = match &args.connection_string {
            Some(c) => c.clone(),
            None => {
                let p = args.data_dir.join("iothubowner.connstr");
                std::fs::read_to_string(&p).with_context(|| {
                    format!(
                        "cannot read {}: pass --connection-string, or --data-dir of a hub started with `weir serve`",
                        p.display()
                    )
                })?
            }
        };
        let field = |n: &str| {
            connstr_field(&connstr, n)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("the connection string has no {n}"))
        };
        let uri: Uri = args
            .api
            .parse()
            .with_context(|| format!("--api {:?} is not a URL", args.api))?;
        let tls = if uri.scheme_str() == Some("https") {
            let ca = args
                .ca
                .clone()
                .unwrap_or_else(|| args.data_dir.join("tls/ca.pem"));
            Some(tls_connector(&ca)?)
        } else {
            None
        };
        Ok(HubClient {
            uri,
            hostname: field("HostName")?,
            policy: field("SharedAccessKeyName")?,
            key: field("SharedAccessKey")?,
            tls,
        })
    }

    fn token(&self) -> anyhow::Result<String> {
        self.token_for(3600)
    }

    fn token_for(&self, secs: i64) -> anyhow::Result<String> {
        let expiry = weir_core::time::now_secs() + secs;
        Ok(sas::build(
            &self.hostname,
            &self.key,
            expiry,
            Some(&self.policy),
        )?)
    }

    /// The live page's address with a service token valid for `secs`: opening it signs the
    /// browser in (the page moves the token into a cookie and off the address bar).
    pub fn dashboard_link(&self, secs: i64) -> anyhow::Result<String> {
        let token = self.token_for(secs)?;
        let base = self.uri.to_string();
        let encoded =
            percent_encoding::utf8_percent_encode(&token, percent_encoding::NON_ALPHANUMERIC);
        Ok(format!("{}/?token={encoded}", base.trim_end_matches('/')))
    }

    /// Sends one request and reads the JSON reply.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(m) = if_match {
            headers.push(("if-match".into(), format!("\"{m}\"")));
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        self.call_raw(method, path, Bytes::from(payload), &headers)
            .await
    }

    /// Sends any body with the given headers (cloud-to-device messages carry raw payloads).
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        headers: &[(String, String)],
    ) -> anyhow::Result<Reply> {
        let authority = self
            .uri
            .authority()
            .ok_or_else(|| anyhow!("--api needs a host and port"))?
            .clone();
        let port = authority
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let addr = format!("{}:{port}", authority.host());
        let tcp = TcpStream::connect(&addr).await.with_context(|| {
            format!("cannot reach the hub's REST API at {addr}: is `weir serve` running? (--api)")
        })?;
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{path}{sep}api-version=2021-04-12"))
            .header("host", authority.as_str())
            .header("authorization", self.token()?);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Full::new(body))?;
        let resp = match &self.tls {
            None => send(TokioIo::new(tcp), req).await?,
            Some(conn) => {
                let name = rustls::pki_types::ServerName::try_from(authority.host().to_string())?;
                let stream = conn
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake with the hub failed")?;
                send(TokioIo::new(stream), req).await?
            }
        };
        Ok(resp)
    }
}

async fn send<I>(io: I, req: Request<Full<Bytes>>) -> anyhow::Result<Reply>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok(Reply { status, body })
}

/// A TLS client trusting only `ca` (a PEM file).
pub fn tls_connector(ca: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    Ok(tokio_rustls::TlsConnector::from(Arc::new(
        tls_client_config(ca)?,
    )))
}

/// The rustls client configuration behind [`tls_connector`] (TLS 1.2 and 1.3).
pub fn tls_client_config(ca: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let pem = std::fs::read(ca)
        .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&pem)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}

fn rustls_pemfile_certs(
    pem: &[u8],
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs =
        rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        bail!("no certificate in the CA file");
    }
    Ok(certs)
}

/// The runtime the management commands run their requests on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
