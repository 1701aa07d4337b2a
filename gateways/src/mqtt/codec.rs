//! MQTT 3.1.1 framing and packets.
//!
//! rumqttd's v4 codec frames packets and handles CONNECT, SUBSCRIBE, UNSUBSCRIBE and the
//! small acknowledgements. Its `Publish` keeps QoS, packet id and DUP crate-private, so
//! PUBLISH, the hot packet, is decoded and encoded here, without copying the payload
//! (see docs/decisions/001-mqtt-codec.md).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttd::protocol::v4::{self, V4};
use rumqttd::protocol::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, PingReq, PingResp, Protocol, PubAck,
    PubAckReason, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, Unsubscribe,
};

pub use rumqttd::protocol::{Filter, QoS};

/// A packet received from a peer.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Connect {
        connect: Connect,
        login: Option<Login>,
        will: bool,
    },
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish(Publish),
    PubAck(u16),
    Subscribe(Subscribe),
    SubAck(u16),
    Unsubscribe(Unsubscribe),
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
    /// QoS 2 flow packets (PUBREC, PUBREL, PUBCOMP): Weir does not do QoS 2.
    Unsupported(&'static str),
}

impl Inbound {
    /// The packet type, for logs: a packet's contents never go into a log line.
    pub fn name(&self) -> &'static str {
        match self {
            Inbound::Connect { .. } => "CONNECT",
            Inbound::ConnAck { .. } => "CONNACK",
            Inbound::Publish(_) => "PUBLISH",
            Inbound::PubAck(_) => "PUBACK",
            Inbound::Subscribe(_) => "SUBSCRIBE",
            Inbound::SubAck(_) => "SUBACK",
            Inbound::Unsubscribe(_) => "UNSUBSCRIBE",
            Inbound::UnsubAck(_) => "UNSUBACK",
            Inbound::PingReq => "PINGREQ",
            Inbound::PingResp => "PINGRESP",
            Inbound::Disconnect => "DISCONNECT",
            Inbound::Unsupported(n) => n,
        }
    }
}

/// A PUBLISH, payload shared with the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    /// 0 for QoS 0.
    pub pkid: u16,
    pub topic: Bytes,
    pub payload: Bytes,
}

impl Publish {
    pub fn topic_str(&self) -> Result<&str, CodecError> {
        std::str::from_utf8(&self.topic)
            .map_err(|_| CodecError::Malformed("topic is not UTF-8".into()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("unsupported protocol level {0}: Weir speaks MQTT 3.1.1 (level 4)")]
    ProtocolLevel(u8),
    #[error("topic of {0} bytes is longer than MQTT's 65535")]
    TopicTooLong(usize),
}

/// The largest remaining length MQTT can express.
pub const MAX_REMAINING: usize = 268_435_455;

impl From<rumqttd::protocol::Error> for CodecError {
    fn from(e: rumqttd::protocol::Error) -> Self {
        match e {
            rumqttd::protocol::Error::PayloadSizeLimitExceeded(n) => CodecError::TooLarge(n),
            rumqttd::protocol::Error::InvalidProtocolLevel(l) => CodecError::ProtocolLevel(l),
            other => CodecError::Malformed(other.to_string()),
        }
    }
}

/// Takes one packet off the front of `buf`, or `None` when more bytes are needed.
/// `max` bounds the remaining length, so an oversized packet fails before it is buffered.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Inbound>, CodecError> {
    let header = match v4::check(buf.iter(), max) {
        Ok(h) => h,
        Err(rumqttd::protocol::Error::InsufficientBytes(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let kind = header.byte1 >> 4;
    let flags = header.byte1 & 0x0f;
    if kind == 3 {
        let mut frame = buf.split_to(header.frame_length()).freeze();
        frame.advance(header.fixed_header_len);
        return decode_publish(flags, frame).map(|p| Some(Inbound::Publish(p)));
    }
    let packet = V4.read_mut(buf, max)?;
    Ok(Some(match packet {
        Packet::Connect(connect, _, will, _, login) => Inbound::Connect {
            connect,
            login,
            will: will.is_some(),
        },
        Packet::ConnAck(ack, _) => Inbound::ConnAck {
            session_present: ack.session_present,
            code: connack_code(ack.code),
        },
        Packet::PubAck(ack, _) => Inbound::PubAck(ack.pkid),
        Packet::Subscribe(s, _) => Inbound::Subscribe(s),
        Packet::SubAck(s, _) => Inbound::SubAck(s.pkid),
        Packet::Unsubscribe(u, _) => Inbound::Unsubscribe(u),
        Packet::UnsubAck(u, _) => Inbound::UnsubAck(u.pkid),
        Packet::PingReq(_) => Inbound::PingReq,
        Packet::PingResp(_) => Inbound::PingResp,
        Packet::Disconnect(..) => Inbound::Disconnect,
        Packet::PubRec(..) => Inbound::Unsupported("PUBREC"),
        Packet::PubRel(..) => Inbound::Unsupported("PUBREL"),
        Packet::PubComp(..) => Inbound::Unsupported("PUBCOMP"),
        Packet::Publish(..) => Inbound::Unsupported("PUBLISH"),
    }))
}

fn connack_code(c: ConnectReturnCode) -> u8 {
    match c {
        ConnectReturnCode::Success => 0,
        ConnectReturnCode::RefusedProtocolVersion => 1,
        ConnectReturnCode::ClientIdentifierNotValid => 2,
        ConnectReturnCode::ServiceUnavailable => 3,
        ConnectReturnCode::BadUserNamePassword => 4,
        _ => 5,
    }
}

fn decode_publish(flags: u8, mut body: Bytes) -> Result<Publish, CodecError> {
    let qos = (flags >> 1) & 0b11;
    if qos == 3 {
        return Err(CodecError::Malformed("PUBLISH with QoS 3".into()));
    }
    if body.remaining() < 2 {
        return Err(CodecError::Malformed(
            "PUBLISH too short for its topic".into(),
        ));
    }
    let topic_len = body.get_u16() as usize;
    if body.remaining() < topic_len {
        return Err(CodecError::Malformed(
            "PUBLISH topic runs past the packet".into(),
        ));
    }
    let topic = body.split_to(topic_len);
    let pkid = if qos > 0 {
        if body.remaining() < 2 {
            return Err(CodecError::Malformed("PUBLISH without a packet id".into()));
        }
        let id = body.get_u16();
        if id == 0 {
            return Err(CodecError::Malformed("PUBLISH with packet id 0".into()));
        }
        id
    } else {
        0
    };
    Ok(Publish {
        qos,
        dup: flags & 0b1000 != 0,
        retain: flags & 0b0001 != 0,
        pkid,
        topic,
        payload: body,
    })
}

fn write(packet: Packet, out: &mut BytesMut) {
    // Encoding the small fixed-shape packets below cannot fail: their lengths are bounded.
    if let Err(e) = V4.write(packet, out) {
        tracing::error!(error = %e, "MQTT encoding failed");
    }
}

pub fn connack(code: u8, session_present: bool, out: &mut BytesMut) {
    let code = match code {
        0 => ConnectReturnCode::Success,
        1 => ConnectReturnCode::RefusedProtocolVersion,
        2 => ConnectReturnCode::ClientIdentifierNotValid,
        3 => ConnectReturnCode::ServiceUnavailable,
        4 => ConnectReturnCode::BadUserNamePassword,
        _ => ConnectReturnCode::NotAuthorized,
    };
    write(
        Packet::ConnAck(
            ConnAck {
                session_present,
                code,
            },
            None,
        ),
        out,
    );
}

pub fn puback(pkid: u16, out: &mut BytesMut) {
    write(
        Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::Success,
            },
            None,
        ),
        out,
    );
}

/// SUBACK with one granted QoS (or 0x80) per filter.
pub fn suback(pkid: u16, granted: &[Option<u8>], out: &mut BytesMut) {
    let return_codes = granted
        .iter()
        .map(|g| match g {
            Some(0) => SubscribeReasonCode::Success(QoS::AtMostOnce),
            Some(_) => SubscribeReasonCode::Success(QoS::AtLeastOnce),
            None => SubscribeReasonCode::Failure,
        })
        .collect();
    write(Packet::SubAck(SubAck { pkid, return_codes }, None), out);
}

pub fn unsuback(pkid: u16, out: &mut BytesMut) {
    write(
        Packet::UnsubAck(
            UnsubAck {
                pkid,
                reasons: Vec::new(),
            },
            None,
        ),
        out,
    );
}

pub fn pingresp(out: &mut BytesMut) {
    write(Packet::PingResp(PingResp), out);
}

pub fn pingreq(out: &mut BytesMut) {
    write(Packet::PingReq(PingReq), out);
}

pub fn disconnect(out: &mut BytesMut) {
    out.put_slice(&[0xe0, 0x00]);
}

/// CONNECT for clients (the load generator and tests).
pub fn connect(
    client_id: &str,
    keep_alive: u16,
    clean_session: bool,
    login: Option<(&str, &str)>,
    out: &mut BytesMut,
) {
    let connect = Connect {
        keep_alive,
        client_id: client_id.to_owned(),
        clean_session,
    };
    let login = login.map(|(u, p)| Login {
        username: u.to_owned(),
        password: p.to_owned(),
    });
    write(Packet::Connect(connect, None, None, None, login), out);
}

/// SUBSCRIBE for clients.
pub fn subscribe(pkid: u16, filter: &str, qos: u8, out: &mut BytesMut) {
    let filter = Filter {
        path: filter.to_owned(),
        qos: if qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: rumqttd::protocol::RetainForwardRule::OnEverySubscribe,
    };
    write(
        Packet::Subscribe(
            Subscribe {
                pkid,
                filters: vec![filter],
            },
            None,
        ),
        out,
    );
}

/// Encodes a PUBLISH. `pkid` is ignored at QoS 0. A topic MQTT cannot carry (over 65535
/// bytes) or a packet over its size limit is refused, and nothing is written.
pub fn publish(
    topic: &str,
    payload: &[u8],
    qos: u8,
    pkid: u16,
    dup: bool,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    let topic_len =
        u16::try_from(topic.len()).map_err(|_| CodecError::TopicTooLong(topic.len()))?;
    let mut len = 2 + topic.len() + payload.len();
    if qos > 0 {
        len += 2;
    }
    if len > MAX_REMAINING {
        return Err(CodecError::TooLarge(len));
    }
    out.reserve(len + 5);
    out.put_u8(0x30 | (u8::from(dup) << 3) | ((qos & 0b11) << 1));
    let mut x = len;
    loop {
        let mut byte = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if x == 0 {
            break;
        }
    }
    out.put_u16(topic_len);
    out.put_slice(topic.as_bytes());
    if qos > 0 {
        out.put_u16(pkid);
    }
    out.put_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_and_partial_input_waits() {
        let mut out = BytesMut::new();
        publish(
            "devices/d/messages/events/",
            b"{\"a\":1}",
            1,
            7,
            true,
            &mut out,
        )
        .expect("encodes");
        let full = out.clone();
        let mut partial = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(decode(&mut partial, 1024), Ok(None));
        let p = match decode(&mut out, 1024) {
            Ok(Some(Inbound::Publish(p))) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!((p.qos, p.pkid, p.dup), (1, 7, true));
        assert_eq!(&p.topic[..], b"devices/d/messages/events/");
        assert_eq!(&p.payload[..], b"{\"a\":1}");
        assert!(out.is_empty());
    }

    #[test]
    fn rejects_oversize_and_malformed() {
        let mut out = BytesMut::new();
        publish("t", &[0u8; 2000], 0, 0, false, &mut out).expect("encodes");
        assert!(matches!(
            decode(&mut out, 1000),
            Err(CodecError::TooLarge(_))
        ));
        let mut bad = BytesMut::from(&[0x32u8, 0x03, 0x00, 0x05, b'a'][..]);
        assert!(matches!(
            decode(&mut bad, 1000),
            Err(CodecError::Malformed(_))
        ));
        let mut len = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(decode(&mut len, 1000).is_err());
    }

    #[test]
    fn refuses_topics_mqtt_cannot_carry() {
        let mut out = BytesMut::new();
        let long = "t".repeat(65_536);
        assert_eq!(
            publish(&long, b"x", 0, 0, false, &mut out),
            Err(CodecError::TopicTooLong(65_536))
        );
        assert!(out.is_empty(), "nothing is written");
        publish(&long[1..], b"x", 0, 0, false, &mut out).expect("65535 is the limit");
        let mut back = out.clone();
        match decode(&mut back, 1 << 20) {
            Ok(Some(Inbound::Publish(p))) => assert_eq!(p.topic.len(), 65_535),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_round_trips_through_rumqttd() {
        let mut out = BytesMut::new();
        connect(
            "dev1",
            60,
            false,
            Some(("hub/dev1/?api-version=1", "tok")),
            &mut out,
        );
        match decode(&mut out, 1024) {
            Ok(Some(Inbound::Connect { connect, login, .. })) => {
                assert_eq!(connect.client_id, "dev1");
                assert!(!connect.clean_session);
                assert_eq!(login.map(|l| l.password), Some("tok".into()));
            }
            other => panic!("{other:?}"),
        }
    }
}
