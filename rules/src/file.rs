//! The on-disk shape of a rules file, as serde reads it, with source spans kept.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    #[serde(default)]
    pub endpoint: Vec<RawEndpoint>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    pub fallback: Option<Spanned<RawFallback>>,
    #[serde(default)]
    pub enrichment: Vec<RawEnrichment>,
    #[serde(default)]
    pub insight: Vec<RawInsight>,
}

/// An endpoint table: its name, type and typed columns, and every other key as an option
/// for the sink of that type to check.
#[derive(Debug)]
pub struct RawEndpoint {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    /// Column name → `"type:expression"`, in file order.
    pub columns: Ordered<Spanned<String>>,
    /// The endpoint that takes what this one could not deliver in time.
    pub dead_letter: Option<Spanned<String>>,
    pub max_retry_secs: Option<Spanned<i64>>,
    /// The sink's own options, in file order.
    pub options: Vec<(String, Spanned<toml::Value>)>,
}

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEndpoint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an endpoint table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEndpoint, A::Error> {
                let (mut name, mut kind, mut columns) = (None, None, None);
                let (mut dead_letter, mut max_retry_secs) = (None, None);
                let mut options = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "name" => name = Some(map.next_value()?),
                        "type" => kind = Some(map.next_value()?),
                        "columns" => columns = Some(map.next_value()?),
                        "dead_letter" => dead_letter = Some(map.next_value()?),
                        "max_retry_secs" => max_retry_secs = Some(map.next_value()?),
                        _ => options.push((key, map.next_value()?)),
                    }
                }
                Ok(RawEndpoint {
                    name: name.ok_or_else(|| serde::de::Error::missing_field("name"))?,
                    kind: kind.ok_or_else(|| serde::de::Error::missing_field("type"))?,
                    columns: columns.unwrap_or_default(),
                    dead_letter,
                    max_retry_secs,
                    options,
                })
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    pub source: Option<Spanned<String>>,
    pub condition: Option<Spanned<String>>,
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// 0..=9; what an edge drops first when its store-and-forward budget is full.
    pub priority: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFallback {
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnrichment {
    pub key: Spanned<String>,
    pub value: Spanned<String>,
    pub endpoints: Spanned<Vec<Spanned<String>>>,
}

/// An `[[insight]]` table; which keys apply depends on its `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInsight {
    pub name: Spanned<String>,
    pub kind: Option<Spanned<String>>,
    pub source: Option<Spanned<String>>,
    pub condition: Option<Spanned<String>>,
    pub time: Option<Spanned<String>>,
    #[serde(default)]
    pub group_by: Ordered<Spanned<String>>,
    pub window: Option<Spanned<String>>,
    pub allowed_lateness: Option<Spanned<String>>,
    #[serde(default)]
    pub aggregates: Ordered<Spanned<String>>,
    pub value: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    pub threshold: Option<Spanned<f64>>,
    pub baseline: Option<Spanned<String>>,
    pub after: Option<Spanned<String>>,
    pub late: Option<Spanned<String>>,
}

fn yes() -> bool {
    true
}

/// A TOML table read as a list of entries in file order.
#[derive(Debug)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V2(PhantomData))
    }
}
