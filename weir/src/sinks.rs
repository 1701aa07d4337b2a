//! The sink kinds this binary writes to, for the engine and for checking rules files.

use serde_json::{Map, Value};
use weir_core::{EndpointCatalog, EndpointKind, OptionError};

/// Every endpoint kind the hub can write: the archive's and the brokers'.
struct Kinds;

impl EndpointCatalog for Kinds {
    fn kinds(&self) -> Vec<&'static str> {
        let mut k = weir_storage::Catalog.kinds();
        k.extend(weir_brokers::Catalog.kinds());
        k
    }

    fn endpoint(
        &self,
        kind: &str,
        options: &Map<String, Value>,
    ) -> Result<EndpointKind, OptionError> {
        if weir_brokers::Catalog.kinds().contains(&kind) {
            weir_brokers::Catalog.endpoint(kind, options)
        } else {
            weir_storage::Catalog.endpoint(kind, options)
        }
    }
}

/// Every endpoint kind the hub can write (rules files are checked against it).
pub fn catalog() -> &'static dyn EndpointCatalog {
    &Kinds
}
