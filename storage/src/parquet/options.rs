//! A Parquet endpoint's options in rules files, and their checks.
//!
//! ```toml
//! [[endpoint]]
//! name = "archive"
//! type = "parquet"
//! path = "site={site}/date={date}"   # optional partition template
//! ```

use serde_json::{Map, Value};
use weir_core::{EndpointKind, OptionError, ParquetOptions};

/// Placeholders a partition `path` template may use.
pub const PATH_PLACEHOLDERS: [&str; 5] = ["date", "hour", "year", "month", "day"];

const OPTIONS: [&str; 1] = ["path"];

/// Reads and checks a Parquet endpoint's options.
pub fn options(map: &Map<String, Value>) -> Result<EndpointKind, OptionError> {
    let mut out = ParquetOptions::default();
    for (key, value) in map {
        match key.as_str() {
            "path" => {
                let Value::String(t) = value else {
                    return Err(OptionError::new(Some(key), "path must be a string", None));
                };
                check_path_template(t).map_err(|m| {
                    OptionError::new(
                        Some(key),
                        m,
                        Some(format!(
                            "placeholders are {{{}}}",
                            PATH_PLACEHOLDERS.join("}, {")
                        )),
                    )
                })?;
                out.path = Some(t.clone());
            }
            other => {
                return Err(OptionError::new(
                    Some(key),
                    format!("unknown option `{other}` for a parquet endpoint"),
                    Some(format!(
                        "parquet endpoints take `{}` (and `columns`)",
                        OPTIONS.join("`, `")
                    )),
                ));
            }
        }
    }
    Ok(EndpointKind::Parquet(out))
}

/// Checks a partition path template such as `date={date}/hour={hour}`.
pub fn check_path_template(t: &str) -> Result<(), String> {
    if t.is_empty()
        || t.starts_with('/')
        || t.split('/').any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!(
            "path template {t:?} must be relative, without empty, '.' or '..' segments"
        ));
    }
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in path template {t:?}"))?;
        let name = &rest[open + 1..open + close];
        if !PATH_PLACEHOLDERS.contains(&name) {
            return Err(format!("unknown placeholder {{{name}}} in path template"));
        }
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("stray '}}' in path template {t:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_paths_and_refuses_other_options() {
        let ok: Map<String, Value> =
            serde_json::from_str(r#"{"path": "date={date}/h={hour}"}"#).expect("json");
        assert_eq!(
            options(&ok)
                .ok()
                .and_then(|k| k.parquet().and_then(|o| o.path.clone())),
            Some("date={date}/h={hour}".into())
        );
        let bad: Map<String, Value> =
            serde_json::from_str(r#"{"path": "x={nope}"}"#).expect("json");
        assert_eq!(options(&bad).err().and_then(|e| e.key), Some("path".into()));
        let other: Map<String, Value> = serde_json::from_str(r#"{"url": "x"}"#).expect("json");
        assert!(options(&other).is_err_and(|e| e.message.contains("unknown option `url`")));
        assert!(check_path_template("../x").is_err());
        assert!(check_path_template("a//b").is_err());
    }
}
