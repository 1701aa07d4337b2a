//! Storage: the device registry (redb) and the Parquet archive sink.

pub mod c2d;
pub mod commit;
pub mod fsutil;
pub mod log;
pub mod parquet;
pub mod registry;
pub mod secret;

pub use parquet::{ParquetConfig, ParquetSinkFactory};
pub use registry::{DeviceUpsert, Registry, RegistryError};
