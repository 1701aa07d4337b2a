//! Segment files and record framing.
//!
//! A segment is `<base offset, 20 digits>.log`, a sequence of records:
//!
//! ```text
//! u32 payload length | u32 CRC-32 of (hash ‖ payload) | u64 device hash | payload
//! ```
//!
//! The device hash in the header lets a reader skip other partitions without decoding.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use weir_core::codec;

pub const HEADER: usize = 16;
/// No record is larger; a bigger length in a header means the header is garbage.
pub const MAX_RECORD: usize = 64 * 1024 * 1024;

pub fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

pub fn parse_name(p: &Path) -> Option<u64> {
    let name = p.file_name()?.to_str()?;
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

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

/// What a full scan of a segment found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Complete, valid records from the start.
    pub records: u64,
    /// Bytes those records occupy; everything after is the torn or corrupt tail.
    pub valid_bytes: u64,
    pub file_bytes: u64,
    pub last_enqueued_ms: Option<i64>,
}

/// Reads a segment from the start and stops at the first record that is incomplete,
/// fails its checksum or does not decode.
pub fn scan(path: &Path) -> io::Result<Scan> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut s = Scan {
        file_bytes: data.len() as u64,
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
        let Ok(e) = codec::decode(payload, 0, None) else {
            break;
        };
        s.last_enqueued_ms = Some(e.enqueued_ms);
        s.records += 1;
        pos += HEADER + h.len;
    }
    s.valid_bytes = pos as u64;
    Ok(s)
}

/// Segment files in `dir`, sorted by base offset.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| parse_name(&p).map(|b| (b, p)))
        .collect();
    v.sort();
    Ok(v)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
