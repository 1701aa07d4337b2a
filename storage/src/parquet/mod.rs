//! The Parquet archive: one directory per endpoint, Hive partitions by enqueued hour.
//!
//! Each engine worker owns its files, so no locking is needed and file names carry the
//! worker index. A file is written under a hidden `.…inprogress` name and renamed to
//! `….parquet` only after its footer is written and synced, so readers globbing
//! `**/*.parquet` never see a partial file.

mod batch;
mod commit;
mod config;
mod factory;
mod file;
pub mod options;
mod path;
mod sink;
mod state;

pub use config::ParquetConfig;
pub use factory::{ArchiveMetrics, ArchiveRecovery, KIND, ParquetSinkFactory};
pub use path::partition_dir;
pub use sink::ParquetSink;
