//! Storage: the device registry (redb) and the Parquet archive sink.

pub mod c2d;
pub mod commit;
pub mod dps;
pub mod fsutil;
pub mod log;
pub mod outbox;
pub mod parquet;
pub mod registry;
pub mod secret;

pub use parquet::{ParquetConfig, ParquetSinkFactory};

/// The endpoint kinds this crate's sinks write, for checking rules files.
#[derive(Debug, Default, Clone, Copy)]
pub struct Catalog;

impl weir_core::EndpointCatalog for Catalog {
    fn kinds(&self) -> Vec<&'static str> {
        vec![parquet::KIND]
    }

    fn endpoint(
        &self,
        kind: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<weir_core::EndpointKind, weir_core::OptionError> {
        match kind {
            parquet::KIND => parquet::options::options(options),
            other => Err(weir_core::OptionError::new(
                None,
                format!("unknown endpoint type {other:?}"),
                None,
            )),
        }
    }
}
pub use registry::{
    Applied, AuthType, CaInfo, CaRecord, DeviceUpsert, Registry, RegistryError, Replaced,
};
