//! Forwarding from the queue over one live connection: publish at QoS 1 in queue order,
//! remove what the hub acknowledged (everything before it acknowledged too), keep the
//! connection alive, and pass the hub's messages about children on.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weir_gateways::mqtt::codec::{self, Inbound};
use weir_gateways::mqtt::requests;

use super::edge_work::Reply;
use super::lanes::Lanes;
use super::link::{KEEP_ALIVE, SILENCE, Stream, Uplink};
use super::message::Message;

/// QoS 1 messages without a PUBACK on the connection.
const MAX_IN_FLIGHT: usize = 1000;

/// A message on the wire: its packet id, whether the hub acknowledged it, its place in
/// the queue.
struct InFlight {
    pkid: u16,
    acked: bool,
    seq: u64,
}

async fn write(wr: &mut (impl AsyncWrite + Unpin), out: &mut BytesMut) -> Result<(), String> {
    // A black-holed link stops taking bytes once the socket buffer is full.
    tokio::time::timeout(SILENCE, wr.write_all(out))
        .await
        .map_err(|_| format!("the hub took no data for {SILENCE:?}"))?
        .map_err(|e| e.to_string())?;
    out.clear();
    Ok(())
}

/// The connection's state between packets.
struct Wire {
    inflight: VecDeque<InFlight>,
    pkid: u16,
    /// What to send next: the backlog and live lanes.
    lanes: Lanes,
}

impl Wire {
    /// Publishes what the queue has that was not sent yet, as far as the window allows.
    fn fill(&mut self, uplink: &Uplink, out: &mut BytesMut) -> Result<(), String> {
        let room = MAX_IN_FLIGHT - self.inflight.len();
        if room == 0 {
            return Ok(());
        }
        let items = self
            .lanes
            .next(&uplink.outbox, room)
            .map_err(|e| e.to_string())?;
        let edge = &uplink.config.device_id;
        for item in items {
            let m = Message::of(&item.event, uplink.is_child(item.event.device_id.as_str()));
            let topic = m.topic(edge);
            self.pkid = if self.pkid == u16::MAX {
                1
            } else {
                self.pkid + 1
            };
            codec::publish(&topic, &m.body, 1, self.pkid, false, out)
                .map_err(|e| format!("cannot encode a message for {topic:?}: {e}"))?;
            self.inflight.push_back(InFlight {
                pkid: self.pkid,
                acked: false,
                seq: item.seq,
            });
        }
        Ok(())
    }

    /// The acknowledged messages at the front of the window, taken off it.
    fn settled(&mut self) -> Vec<u64> {
        let mut done = Vec::new();
        while self.inflight.front().is_some_and(|m| m.acked) {
            if let Some(m) = self.inflight.pop_front() {
                done.push(m.seq);
            }
        }
        done
    }
}

pub(crate) async fn serve(
    uplink: &Uplink,
    stream: Box<dyn Stream>,
    mut buf: BytesMut,
    replies: &mut tokio::sync::mpsc::UnboundedReceiver<Reply>,
) -> Result<(), String> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let boundary = uplink.outbox.newest().map_err(|e| e.to_string())?;
    let mut wire = Wire {
        inflight: VecDeque::new(),
        pkid: 0,
        lanes: Lanes::new(boundary, uplink.config.catchup_share),
    };
    let mut out = BytesMut::new();
    let mut last_heard = Instant::now();
    let mut last_sent = Instant::now();
    let mut ping_owed = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut rids: u64 = 0;
    let mut last_sync = Instant::now();
    // Which connection this is, so a PUBACK decided after it ended is not sent on the next.
    let conn = uplink.connects.load(Ordering::Relaxed);
    if uplink.edge_tx.is_some() {
        // QoS 1: cloud-to-device messages for children come this way.
        codec::subscribe(1, requests::EDGE_FILTER, 1, &mut out);
        codec::publish(
            &requests::children_request_topic("0"),
            &[],
            0,
            0,
            false,
            &mut out,
        )
        .map_err(|e| e.to_string())?;
    }
    loop {
        let was_empty = wire.inflight.is_empty();
        wire.fill(uplink, &mut out)?;
        if !out.is_empty() {
            if was_empty && !wire.inflight.is_empty() {
                // Silence is counted from when the hub first owes an answer.
                last_heard = Instant::now();
            }
            write(&mut wr, &mut out).await?;
            last_sent = Instant::now();
        }
        tokio::select! {
            n = rd.read_buf(&mut buf) => {
                if n.map_err(|e| e.to_string())? == 0 {
                    return Err("the hub closed the connection".to_owned());
                }
                last_heard = Instant::now();
                while let Some(p) = codec::decode(&mut buf, 1 << 20).map_err(|e| e.to_string())? {
                    match p {
                        Inbound::PubAck(id) => {
                            if let Some(m) = wire.inflight.iter_mut().find(|m| m.pkid == id && !m.acked) {
                                m.acked = true;
                            }
                        }
                        Inbound::PingResp => ping_owed = false,
                        Inbound::Publish(p) => uplink.hub_sent(&p, conn),
                        _ => {}
                    }
                }
                let done = wire.settled();
                if !done.is_empty() {
                    uplink.outbox.remove(&done).map_err(|e| e.to_string())?;
                    uplink.forwarded.fetch_add(done.len() as u64, Ordering::Relaxed);
                }
                buf.reserve(4096);
            }
            _ = uplink.ready.notified() => wire.lanes.wake(),
            Some(reply) = replies.recv() => match reply {
                // An answer for a child; one whose topic does not fit is dropped (the
                // hub's caller times out).
                Reply::Publish(topic, payload) => {
                    let _ = codec::publish(&topic, &payload, 0, 0, false, &mut out);
                }
                Reply::PubAck { conn: c, pkid } if c == conn => codec::puback(pkid, &mut out),
                Reply::PubAck { .. } => {}
            },
            _ = tick.tick() => {
                wire.lanes.wake();
                if uplink.edge_tx.is_some() && last_sync.elapsed() >= uplink.config.sync {
                    rids += 1;
                    codec::publish(&requests::children_request_topic(&rids.to_string()), &[], 0, 0, false, &mut out)
                        .map_err(|e| e.to_string())?;
                    last_sync = Instant::now();
                }
                let owed = !wire.inflight.is_empty() || ping_owed;
                if owed && last_heard.elapsed() >= SILENCE {
                    return Err(format!("the hub acknowledged nothing for {SILENCE:?}"));
                }
                if !ping_owed && last_sent.elapsed() >= Duration::from_secs(u64::from(KEEP_ALIVE) / 2) {
                    codec::pingreq(&mut out);
                    if wire.inflight.is_empty() {
                        last_heard = Instant::now();
                    }
                    ping_owed = true;
                }
            }
        }
    }
}
