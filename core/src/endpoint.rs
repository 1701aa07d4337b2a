//! What a rule set tells a sink about an endpoint, and what it hands the sink per event.

use std::sync::Arc;

use crate::event::Event;

/// The type of a typed column declared on an endpoint (`"double:$body.temp"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Double,
    Int64,
    String,
    Bool,
    /// Milliseconds since the epoch, UTC; from a number or an RFC 3339 string.
    Timestamp,
}

impl ColumnType {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "double" | "float64" | "float" => Some(ColumnType::Double),
            "int64" | "long" | "bigint" | "int" => Some(ColumnType::Int64),
            "string" | "utf8" | "varchar" => Some(ColumnType::String),
            "bool" | "boolean" => Some(ColumnType::Bool),
            "timestamp" => Some(ColumnType::Timestamp),
            _ => None,
        }
    }

    pub const NAMES: &'static str = "double, int64, string, bool, timestamp";
}

/// One typed column of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnSpec {
    pub name: String,
    pub ty: ColumnType,
}

/// The value of a typed column for one delivery. `Null` when the expression was undefined
/// or of the wrong type.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValue {
    Null,
    Double(f64),
    Int64(i64),
    String(String),
    Bool(bool),
    Timestamp(i64),
}

/// Where an endpoint writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    /// Hive-partitioned Parquet files under the archive directory.
    Parquet {
        /// Relative path template for the partition directory, e.g.
        /// `date={date}/hour={hour}`; `None` means that default.
        path: Option<String>,
    },
}

impl EndpointKind {
    /// The sink kind that writes this endpoint.
    pub fn sink(&self) -> &'static str {
        match self {
            EndpointKind::Parquet { .. } => "parquet",
        }
    }
}

/// An endpoint as declared in the rules files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub name: Arc<str>,
    pub kind: EndpointKind,
    pub columns: Vec<ColumnSpec>,
}

/// One event on its way into one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub event: Arc<Event>,
    /// Enrichments for this endpoint, appended to the application properties on write.
    pub enrichments: Vec<(String, String)>,
    /// One value per column of the endpoint, in declaration order.
    pub columns: Vec<ColumnValue>,
    /// The version of the rule set that routed the event (see `weir rules check`).
    pub rules_version: Arc<str>,
}
