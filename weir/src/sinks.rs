//! The sink kinds this binary writes to, for the engine and for checking rules files.

use weir_core::EndpointCatalog;

/// Every endpoint kind the hub can write (rules files are checked against it).
pub fn catalog() -> &'static dyn EndpointCatalog {
    &weir_storage::Catalog
}
