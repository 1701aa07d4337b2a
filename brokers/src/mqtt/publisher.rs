//! Publishing to an MQTT broker for one endpoint in one worker: connect (TCP or TLS),
//! CONNECT with a clean session, PUBLISH at QoS 1 keeping up to [`MAX_IN_FLIGHT`] without
//! a PUBACK, confirming to the sink in publish order, PINGREQ when idle.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use weir_core::MqttOptions;
use weir_gateways::mqtt::codec::{self, Inbound};

use super::client::{Refused, Stream, handshake};
use super::options::parse_url;
use crate::link::{Link, Outgoing, Progress};

/// QoS 1 messages without a PUBACK per connection.
const MAX_IN_FLIGHT: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEP_ALIVE: u16 = 60;

/// One MQTT message.
pub struct Message {
    pub topic: String,
    pub body: Bytes,
}

/// Starts publishing for `endpoint` (worker `worker`) with `options` on `rt`.
pub fn open(
    rt: &tokio::runtime::Handle,
    options: MqttOptions,
    endpoint: String,
    worker: usize,
) -> Link<Message> {
    let client_id = format!(
        "{}-w{worker}",
        options
            .client_id
            .clone()
            .unwrap_or_else(|| format!("weir-{endpoint}"))
    );
    Link::spawn(rt, endpoint, move |rx, progress| async move {
        run(&options, &client_id, rx, &progress).await
    })
}

async fn connect(
    options: &MqttOptions,
    client_id: &str,
) -> Result<(Box<dyn Stream>, BytesMut), String> {
    let url = parse_url(options.url.expose())?;
    let redacted = &options.url;
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|_| format!("cannot connect to {redacted} within {CONNECT_TIMEOUT:?}"))?
    .map_err(|e| format!("cannot connect to {redacted}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut stream: Box<dyn Stream> = match (&url.tls, &options.ca) {
        (true, Some(ca)) => {
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| format!("{}: {e}", url.host))?;
            Box::new(
                crate::tls::connector(ca)?
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {redacted} failed: {e}"))?,
            )
        }
        _ => Box::new(tcp),
    };
    let login = url.login.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
    let peer = redacted.to_string();
    match handshake(
        &mut stream,
        client_id,
        KEEP_ALIVE,
        login,
        CONNECT_TIMEOUT,
        &peer,
    )
    .await
    {
        Ok(buf) => Ok((stream, buf)),
        Err(Refused::Code(code)) => Err(format!("{peer} refused the connection (CONNACK {code})")),
        Err(Refused::Failed(e)) => Err(e),
    }
}

async fn run(
    options: &MqttOptions,
    client_id: &str,
    mut rx: mpsc::Receiver<Outgoing<Message>>,
    progress: &Arc<Progress>,
) -> Result<(), String> {
    let (stream, mut buf) = connect(options, client_id).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    // Packet ids in publish order, with whether their PUBACK has come.
    let mut inflight: VecDeque<(u16, bool)> = VecDeque::new();
    let mut pkid: u16 = 0;
    let mut out = BytesMut::new();
    let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE) / 2));
    loop {
        tokio::select! {
            n = rd.read_buf(&mut buf) => {
                if n.map_err(|e| e.to_string())? == 0 {
                    return Err(format!("{} closed the connection", options.url));
                }
                while let Some(p) = codec::decode(&mut buf, 1 << 20).map_err(|e| e.to_string())? {
                    if let Inbound::PubAck(id) = p
                        && let Some(slot) = inflight.iter_mut().find(|(i, acked)| *i == id && !acked)
                    {
                        slot.1 = true;
                    }
                }
                while inflight.front().is_some_and(|(_, acked)| *acked) {
                    inflight.pop_front();
                    progress.confirm_oldest();
                }
                buf.reserve(4096);
            }
            next = rx.recv(), if inflight.len() < MAX_IN_FLIGHT => {
                let Some(first) = next else { break };
                let mut m = Some(first);
                // Everything already waiting goes out in one write.
                while let Some(Outgoing { message, .. }) = m.take() {
                    pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
                    codec::publish(&message.topic, &message.body, 1, pkid, false, &mut out)
                        .map_err(|e| format!("cannot encode a message for topic {:?}: {e}", message.topic))?;
                    inflight.push_back((pkid, false));
                    if inflight.len() < MAX_IN_FLIGHT {
                        m = rx.try_recv().ok();
                    }
                }
                wr.write_all(&out).await.map_err(|e| e.to_string())?;
                out.clear();
            }
            _ = ping.tick() => {
                codec::pingreq(&mut out);
                wr.write_all(&out).await.map_err(|e| e.to_string())?;
                out.clear();
            }
        }
    }
    codec::disconnect(&mut out);
    let _ = wr.write_all(&out).await;
    Ok(())
}
