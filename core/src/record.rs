//! Framing of log records: what a segment file is a sequence of.
//!
//! ```text
//! u32 payload length | u32 CRC-32 of (hash ‖ payload) | u64 device hash | payload
//! ```
//!
//! The payload is an [`crate::codec`]-encoded event. The device hash in the header lets a
//! reader skip other partitions without decoding.

use crate::codec;

pub const HEADER: usize = 16;
/// No record is larger; a bigger length in a header means the header is garbage.
pub const MAX_RECORD: usize = 64 * 1024 * 1024;

fn crc(hash: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&hash.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends one framed record.
pub fn frame(hash: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(hash, payload).to_le_bytes());
    out.extend_from_slice(&hash.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A parsed header.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub len: usize,
    pub crc: u32,
    pub hash: u64,
}

pub fn header(b: &[u8; HEADER]) -> Header {
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Header {
        len: word(0) as usize,
        crc: word(4),
        hash: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
    }
}

/// True when `payload` matches the header's checksum.
pub fn verify(h: &Header, payload: &[u8]) -> bool {
    crc(h.hash, payload) == h.crc
}

/// What a scan of framed records found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Complete, valid records from the start.
    pub records: u64,
    /// Bytes those records occupy; anything after is a torn or corrupt tail.
    pub valid_bytes: u64,
    pub last_enqueued_ms: Option<i64>,
}

/// Walks `data` from the start and stops at the first record that is incomplete, fails its
/// checksum or does not decode. Never panics, whatever `data` holds.
pub fn scan(data: &[u8]) -> Scan {
    let mut s = Scan::default();
    let mut pos = 0usize;
    while data.len() - pos >= HEADER {
        let mut hb = [0u8; HEADER];
        hb.copy_from_slice(&data[pos..pos + HEADER]);
        let h = header(&hb);
        if h.len > MAX_RECORD || data.len() - pos - HEADER < h.len {
            break;
        }
        let payload = &data[pos + HEADER..pos + HEADER + h.len];
        if !verify(&h, payload) {
            break;
        }
        let Ok(e) = codec::decode(payload, s.records, None) else {
            break;
        };
        s.last_enqueued_ms = Some(e.enqueued_ms);
        s.records += 1;
        pos += HEADER + h.len;
    }
    s.valid_bytes = pos as u64;
    s
}
