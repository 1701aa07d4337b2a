//! Settings for the Parquet sink.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ParquetConfig {
    /// `<data-dir>/archive`; each endpoint writes under `<root>/<endpoint>/`.
    pub root: PathBuf,
    /// Partition template used when an endpoint declares none.
    pub default_path: String,
    /// Finalise a file after this many rows.
    pub max_rows: usize,
    /// Finalise a file once roughly this many bytes are written.
    pub max_bytes: usize,
    /// Finalise a file this long after it was opened, so data becomes visible.
    pub max_age: Duration,
    /// zstd level, 1..=22.
    pub zstd_level: i32,
    /// Rows buffered in memory before they are encoded into the open file.
    pub batch_rows: usize,
    /// A row group is flushed to disk at this size: the memory an open file may hold.
    pub row_group_bytes: usize,
}

impl ParquetConfig {
    pub fn new(root: PathBuf) -> Self {
        ParquetConfig {
            root,
            default_path: "date={date}/hour={hour}".into(),
            max_rows: 1_000_000,
            max_bytes: 128 * 1024 * 1024,
            max_age: Duration::from_secs(60),
            zstd_level: 1,
            batch_rows: 8192,
            row_group_bytes: 32 * 1024 * 1024,
        }
    }
}
