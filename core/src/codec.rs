//! The binary form of an [`Event`] in the ingest log.
//!
//! Layout (version 1), all integers little-endian, strings as varint length + UTF-8:
//!
//! ```text
//! u8 version | u8 source | u8 auth | u8 flags | i64 enqueued_ms | [u16 packet_id]
//! str device_id | [str module_id] | [str generation_id] | [str gateway] | [str dead_letter]
//! u16 system-property mask | str per set bit
//! varint property count | (str key, str value)*
//! varint body length | body bytes
//! ```
//!
//! The offset is not stored: it is the record's position in the log. Decoding never
//! panics on arbitrary input (there is a fuzz target for it).

use std::sync::Arc;

use bytes::Bytes;

use crate::event::{AuthMethod, Event, EventSource, SystemProperties};
use crate::ids::DeviceId;

const VERSION: u8 = 1;
/// System properties in the mask; the tenth (`edge_id`) was added after version 1 shipped,
/// and older records simply do not set its bit.
const SYSTEM_FIELDS: usize = 10;
const FLAG_REDELIVERED: u8 = 1;
const FLAG_PACKET_ID: u8 = 2;
const FLAG_MODULE: u8 = 4;
const FLAG_GENERATION: u8 = 8;
/// Added after version 1 shipped: older records simply do not have it.
const FLAG_GATEWAY: u8 = 16;
const FLAG_DEAD_LETTER: u8 = 32;
const FLAGS: u8 = FLAG_REDELIVERED
    | FLAG_PACKET_ID
    | FLAG_MODULE
    | FLAG_GENERATION
    | FLAG_GATEWAY
    | FLAG_DEAD_LETTER;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record ends early")]
    Truncated,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("{0} bytes left over after the record")]
    Trailing(usize),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn system_fields(s: &SystemProperties) -> [&Option<Box<str>>; SYSTEM_FIELDS] {
    [
        &s.message_id,
        &s.correlation_id,
        &s.content_type,
        &s.content_encoding,
        &s.user_id,
        &s.output_name,
        &s.creation_time_utc,
        &s.dt_dataschema,
        &s.dt_subject,
        &s.edge_id,
    ]
}

fn source_code(s: EventSource) -> u8 {
    match s {
        EventSource::DeviceMessages => 0,
        EventSource::TwinChangeEvents => 1,
        EventSource::DeviceLifecycleEvents => 2,
        EventSource::DeviceConnectionStateEvents => 3,
        EventSource::Insights => 4,
        EventSource::Clock => 5,
        EventSource::EdgeDrops => 6,
        EventSource::Registry => 7,
        EventSource::Cluster => 8,
    }
}

fn auth_code(a: AuthMethod) -> u8 {
    match a {
        AuthMethod::Sas => 0,
        AuthMethod::X509Thumbprint => 1,
        AuthMethod::X509Ca => 2,
        AuthMethod::Internal => 3,
        AuthMethod::BrokerUserId => 4,
        AuthMethod::Password => 5,
    }
}

/// Appends the encoding of `e` to `out`.
pub fn encode(e: &Event, out: &mut Vec<u8>) {
    let mut flags = 0;
    if e.redelivered {
        flags |= FLAG_REDELIVERED;
    }
    if e.packet_id.is_some() {
        flags |= FLAG_PACKET_ID;
    }
    if e.module_id.is_some() {
        flags |= FLAG_MODULE;
    }
    if e.generation_id.is_some() {
        flags |= FLAG_GENERATION;
    }
    if e.gateway.is_some() {
        flags |= FLAG_GATEWAY;
    }
    if e.dead_letter.is_some() {
        flags |= FLAG_DEAD_LETTER;
    }
    out.extend_from_slice(&[
        VERSION,
        source_code(e.source),
        auth_code(e.auth_method),
        flags,
    ]);
    out.extend_from_slice(&e.enqueued_ms.to_le_bytes());
    if let Some(p) = e.packet_id {
        out.extend_from_slice(&p.to_le_bytes());
    }
    put_str(out, e.device_id.as_str());
    if let Some(m) = &e.module_id {
        put_str(out, m);
    }
    if let Some(g) = &e.generation_id {
        put_str(out, g);
    }
    if let Some(g) = &e.gateway {
        put_str(out, g);
    }
    if let Some(d) = &e.dead_letter {
        put_str(out, d);
    }
    let fields = system_fields(&e.system);
    let mask = fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.is_some())
        .fold(0u16, |m, (i, _)| m | (1 << i));
    out.extend_from_slice(&mask.to_le_bytes());
    for f in fields.iter().filter_map(|f| f.as_deref()) {
        put_str(out, f);
    }
    put_varint(out, e.properties.len() as u64);
    for (k, v) in &e.properties {
        put_str(out, k);
        put_str(out, v);
    }
    put_varint(out, e.body.len() as u64);
    out.extend_from_slice(&e.body);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A LEB128 varint in its shortest form (so an event has exactly one encoding).
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(DecodeError::Invalid("varint"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(DecodeError::Invalid("varint"));
                }
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid("varint"))
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > self.buf.len() as u64 {
            return Err(DecodeError::Truncated);
        }
        Ok(n as usize)
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::Invalid(what))
    }
}

/// Decodes one event; `body_owner` lets the body share the caller's buffer when it can.
pub fn decode(buf: &[u8], offset: u64, body_owner: Option<&Bytes>) -> Result<Event, DecodeError> {
    let mut r = Reader { buf };
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let source = match r.u8()? {
        0 => EventSource::DeviceMessages,
        1 => EventSource::TwinChangeEvents,
        2 => EventSource::DeviceLifecycleEvents,
        3 => EventSource::DeviceConnectionStateEvents,
        4 => EventSource::Insights,
        5 => EventSource::Clock,
        6 => EventSource::EdgeDrops,
        7 => EventSource::Registry,
        8 => EventSource::Cluster,
        _ => return Err(DecodeError::Invalid("source")),
    };
    let auth_method = match r.u8()? {
        0 => AuthMethod::Sas,
        1 => AuthMethod::X509Thumbprint,
        2 => AuthMethod::X509Ca,
        3 => AuthMethod::Internal,
        4 => AuthMethod::BrokerUserId,
        5 => AuthMethod::Password,
        _ => return Err(DecodeError::Invalid("auth method")),
    };
    let flags = r.u8()?;
    if flags & !FLAGS != 0 {
        return Err(DecodeError::Invalid("flags"));
    }
    let enqueued_ms = i64::from_le_bytes(r.array()?);
    let packet_id = if flags & FLAG_PACKET_ID != 0 {
        Some(u16::from_le_bytes(r.array()?))
    } else {
        None
    };
    let device_id =
        DeviceId::parse(r.str("device id")?).map_err(|_| DecodeError::Invalid("device id"))?;
    let module_id = if flags & FLAG_MODULE != 0 {
        Some(Arc::from(r.str("module id")?))
    } else {
        None
    };
    let generation_id = if flags & FLAG_GENERATION != 0 {
        Some(Arc::from(r.str("generation id")?))
    } else {
        None
    };
    let gateway = if flags & FLAG_GATEWAY != 0 {
        Some(Arc::from(r.str("gateway")?))
    } else {
        None
    };
    let dead_letter = if flags & FLAG_DEAD_LETTER != 0 {
        Some(Arc::from(r.str("dead-letter endpoint")?))
    } else {
        None
    };
    let mask = u16::from_le_bytes(r.array()?);
    if mask >> SYSTEM_FIELDS != 0 {
        return Err(DecodeError::Invalid("system property mask"));
    }
    let mut system = SystemProperties::default();
    {
        let slots: [&mut Option<Box<str>>; SYSTEM_FIELDS] = [
            &mut system.message_id,
            &mut system.correlation_id,
            &mut system.content_type,
            &mut system.content_encoding,
            &mut system.user_id,
            &mut system.output_name,
            &mut system.creation_time_utc,
            &mut system.dt_dataschema,
            &mut system.dt_subject,
            &mut system.edge_id,
        ];
        for (i, slot) in slots.into_iter().enumerate() {
            if mask & (1 << i) != 0 {
                *slot = Some(r.str("system property")?.into());
            }
        }
    }
    let count = r.varint()?;
    // Each property takes at least two bytes, so a count beyond that is corrupt.
    if count > r.buf.len() as u64 / 2 {
        return Err(DecodeError::Invalid("property count"));
    }
    let mut properties = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let k = r.str("property key")?.to_owned();
        let v = r.str("property value")?.to_owned();
        properties.push((k, v));
    }
    let n = r.len()?;
    let raw = r.take(n)?;
    if !r.buf.is_empty() {
        return Err(DecodeError::Trailing(r.buf.len()));
    }
    let body = match body_owner {
        Some(owner) => {
            let start = raw.as_ptr() as usize - owner.as_ptr() as usize;
            owner.slice(start..start + n)
        }
        None => Bytes::copy_from_slice(raw),
    };
    Ok(Event {
        source,
        device_id,
        module_id,
        generation_id,
        auth_method,
        gateway,
        dead_letter,
        enqueued_ms,
        offset,
        packet_id,
        redelivered: flags & FLAG_REDELIVERED != 0,
        system,
        properties,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut e = Event::telemetry(
            DeviceId::parse("dev-1").expect("id"),
            1_700_000_000_123,
            Bytes::from_static(b"{\"t\":1}"),
        );
        e.system.message_id = Some("m1".into());
        e.system.dt_subject = Some("s".into());
        e.properties = vec![
            ("k".into(), "v with spaces".into()),
            ("é".into(), "".into()),
        ];
        e.packet_id = Some(42);
        e.redelivered = true;
        e.generation_id = Some(Arc::from("gen"));
        e.gateway = Some(Arc::from("mqtt-quic"));
        e.dead_letter = Some(Arc::from("dlq"));
        e
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let e = sample();
        let mut buf = Vec::new();
        encode(&e, &mut buf);
        let mut back = decode(&buf, 7, None).expect("decodes");
        assert_eq!(back.offset, 7);
        back.offset = e.offset;
        assert_eq!(back, e);
        let owner = Bytes::from(buf.clone());
        let shared = decode(&owner, 0, Some(&owner)).expect("decodes");
        assert_eq!(shared.body, e.body);
        for cut in 0..buf.len() {
            assert!(
                decode(&buf[..cut], 0, None).is_err(),
                "truncated at {cut} must fail"
            );
        }
        let mut extra = buf.clone();
        extra.push(0);
        assert_eq!(decode(&extra, 0, None), Err(DecodeError::Trailing(1)));
        let mut bad = buf.clone();
        bad[0] = 9;
        assert_eq!(decode(&bad, 0, None), Err(DecodeError::Version(9)));
    }
}
