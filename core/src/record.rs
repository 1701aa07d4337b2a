//! Framing of log records: what a segment file is a sequence of.
//!
//! ```text
//! u32 payload length | u32 CRC-32 of (hash ‖ payload) | u64 device hash | payload
//! ```
//!
//! The payload is an [`crate::codec`]-encoded event. The device hash in the header lets a
//! reader skip other partitions without decoding.
//!
//! A record's offset is not stored: it is the segment's base plus one per record before
//! it, unless a **clock record** (device hash [`CLOCK_HASH`], payload: the next record's
//! offset and the step between offsets, `u64` each) says otherwise. A single process never
//! writes one; a process of a cluster writes one where its offsets jump with the clock
//! (decision 037), so offsets of every process are comparable and never collide.

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

/// The device hash of a clock record. xxh3 gives it to one device id in 2^64.
pub const CLOCK_HASH: u64 = u64::MAX;
const CLOCK_LEN: usize = 16;

/// Appends a clock record: the next record has offset `next`, later ones `stride` apart.
pub fn frame_clock(next: u64, stride: u64, out: &mut Vec<u8>) {
    let mut payload = [0u8; CLOCK_LEN];
    payload[..8].copy_from_slice(&next.to_le_bytes());
    payload[8..].copy_from_slice(&stride.to_le_bytes());
    frame(CLOCK_HASH, &payload, out);
}

/// Where the next record of a segment sits in offset space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The offset of the next event record.
    pub next: u64,
    /// How far apart consecutive records' offsets are.
    pub stride: u64,
}

impl Position {
    /// The start of a segment named `base`.
    pub fn start(base: u64) -> Position {
        Position {
            next: base,
            stride: 1,
        }
    }

    /// Takes a (checksum-verified) record: a clock record moves the position and yields
    /// nothing; an event record yields its offset. `None` also for a malformed clock record.
    pub fn take(&mut self, h: &Header, payload: &[u8]) -> Option<u64> {
        if h.hash == CLOCK_HASH {
            if let Some((next, stride)) = clock(payload) {
                *self = Position { next, stride };
            }
            return None;
        }
        Some(self.skip())
    }

    /// Passes an event record without reading it; returns its offset.
    pub fn skip(&mut self) -> u64 {
        let at = self.next;
        self.next = self.next.saturating_add(self.stride);
        at
    }
}

impl Default for Position {
    fn default() -> Position {
        Position::start(0)
    }
}

/// The contents of a clock record's payload.
pub fn clock(payload: &[u8]) -> Option<(u64, u64)> {
    if payload.len() != CLOCK_LEN {
        return None;
    }
    let next = u64::from_le_bytes(payload[..8].try_into().ok()?);
    let stride = u64::from_le_bytes(payload[8..].try_into().ok()?);
    (stride > 0).then_some((next, stride))
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
    /// Where a record after the valid ones would sit.
    pub end: Position,
}

/// Walks `data` (a segment named `base`) from the start and stops at the first record
/// that is incomplete, fails its checksum or does not decode. Never panics, whatever `data` holds.
pub fn scan(data: &[u8], base: u64) -> Scan {
    let mut s = Scan {
        end: Position::start(base),
        ..Scan::default()
    };
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
        if h.hash == CLOCK_HASH {
            if clock(payload).is_none() {
                break;
            }
            s.end.take(&h, payload);
        } else {
            let Ok(e) = codec::decode(payload, s.end.next, None) else {
                break;
            };
            s.end.skip();
            s.last_enqueued_ms = Some(e.enqueued_ms);
            s.records += 1;
        }
        pos += HEADER + h.len;
    }
    s.valid_bytes = pos as u64;
    s
}
