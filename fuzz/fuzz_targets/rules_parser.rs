//! The routing query language and rule files on arbitrary text: errors, never panics, and
//! every diagnostic renders.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use weir_rules::{SourceFile, compile::compile_str, load_sources};

/// A catalog with one kind that refuses options whose value is not a string, so option
/// errors (and their spans) are exercised too.
struct Kinds;

impl weir_core::EndpointCatalog for Kinds {
    fn kinds(&self) -> Vec<&'static str> {
        vec!["parquet"]
    }
    fn endpoint(
        &self,
        _kind: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<weir_core::EndpointKind, weir_core::OptionError> {
        match options.iter().find(|(_, v)| !v.is_string()) {
            Some((k, _)) => Err(weir_core::OptionError::new(Some(k), "not a string", None)),
            None => Ok(weir_core::EndpointKind::Parquet(Default::default())),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(e) = weir_rules::parse::parse(s) {
        // Printing and parsing again gives the same tree.
        let again = weir_rules::parse::parse(&e.to_string()).expect("printed expressions parse");
        assert_eq!(again.to_string(), e.to_string());
    }
    let _ = compile_str(s);
    let files = [SourceFile {
        name: "fuzz.toml".into(),
        path: "fuzz.toml".into(),
        text: Arc::from(s),
    }];
    if let Err(diags) = load_sources(&files, "hub", &Kinds) {
        for d in diags {
            let _ = d.render(false);
            let _ = d.to_string();
        }
    }
});
