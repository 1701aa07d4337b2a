//! Segment files and record framing.
//!
//! A segment is `<base offset, 20 digits>.log`, a sequence of records framed as
//! `weir_core::record` describes.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use weir_core::record::{
    HEADER, Header, MAX_RECORD, Position, frame, frame_clock, header, verify,
};

pub fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

pub fn parse_name(p: &Path) -> Option<u64> {
    let name = p.file_name()?.to_str()?;
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
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
    /// Where the next record would sit.
    pub end: Position,
}

/// Reads the segment named `base` and finds where its valid records end.
pub fn scan(path: &Path, base: u64) -> io::Result<Scan> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let s = weir_core::record::scan(&data, base);
    Ok(Scan {
        records: s.records,
        valid_bytes: s.valid_bytes,
        file_bytes: data.len() as u64,
        last_enqueued_ms: s.last_enqueued_ms,
        end: s.end,
    })
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
