//! Device twins: desired and reported properties with versions and `$metadata`, changed by
//! JSON merge patches (RFC 7396), as IoT Hub keeps them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The property carrying a device's whole tags after a change (`null` once it is deleted),
/// on the twin-change and lifecycle events that change them: the engine's device context
/// is built from these (decision 028).
pub const TAGS_PROPERTY: &str = "weir-tags";
/// The property carrying the tags before that change.
pub const TAGS_BEFORE_PROPERTY: &str = "weir-tags-before";

/// The most a twin section (desired or reported, without metadata) may hold, as in IoT Hub.
pub const MAX_SECTION_BYTES: usize = 32 * 1024;

/// How deeply objects may nest in tags, desired or reported properties, as in IoT Hub:
/// `{"one": {"two": ... {"ten": {"property": 1}}}}` is the deepest allowed.
pub const MAX_DEPTH: usize = 10;

/// Why a twin change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwinError {
    #[error("the patch must be a JSON object")]
    NotAnObject,
    #[error("the {section} properties would be {size} bytes; the limit is {MAX_SECTION_BYTES}")]
    TooLarge { section: &'static str, size: usize },
    #[error("property names may not start with '$' or contain '.', ' ' or '$' ({0:?})")]
    BadName(String),
    #[error("the {section} nest objects {depth} deep; the limit is {MAX_DEPTH}")]
    TooDeep { section: &'static str, depth: usize },
}

/// How many objects nest inside `v` along its deepest path (`{"a": 1}` is 0, `{"a": {}}`
/// is 1). Iterative, so a hostile document cannot exhaust the stack.
pub fn object_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        if let Value::Object(m) = v {
            deepest = deepest.max(d);
            stack.extend(m.values().filter(|c| c.is_object()).map(|c| (c, d + 1)));
        }
    }
    deepest
}

/// Refuses a document (tags, or properties) that nests deeper than IoT Hub allows.
pub fn check_depth(v: &Value, section: &'static str) -> Result<(), TwinError> {
    match object_depth(v) {
        depth if depth > MAX_DEPTH => Err(TwinError::TooDeep { section, depth }),
        _ => Ok(()),
    }
}

/// Desired or reported properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub version: u64,
    /// A JSON object of the properties.
    pub values: Value,
    /// Mirrors `values` with `$lastUpdated` (and, for desired, `$lastUpdatedVersion`).
    pub metadata: Value,
}

impl Default for Section {
    fn default() -> Self {
        Section {
            version: 1,
            values: json!({}),
            metadata: json!({}),
        }
    }
}

fn check_names(v: &Value) -> Result<(), TwinError> {
    if let Value::Object(m) = v {
        for (k, child) in m {
            if k.starts_with('$') || k.contains(['.', ' ']) {
                return Err(TwinError::BadName(k.clone()));
            }
            check_names(child)?;
        }
    }
    Ok(())
}

/// Applies a merge patch to `target`: objects merge, `null` deletes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Marks every property `patch` touches as updated at `now` (and version `version`).
fn touch(meta: &mut Value, patch: &Value, now: &str, version: Option<u64>) {
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let Value::Object(m) = meta else { return };
    m.insert("$lastUpdated".into(), json!(now));
    if let Some(v) = version {
        m.insert("$lastUpdatedVersion".into(), json!(v));
    }
    let Value::Object(p) = patch else { return };
    for (k, v) in p {
        if v.is_null() {
            m.remove(k);
        } else if v.is_object() {
            touch(m.entry(k.clone()).or_insert(Value::Null), v, now, version);
        } else {
            let mut leaf = Map::new();
            leaf.insert("$lastUpdated".into(), json!(now));
            if let Some(ver) = version {
                leaf.insert("$lastUpdatedVersion".into(), json!(ver));
            }
            m.insert(k.clone(), Value::Object(leaf));
        }
    }
}

impl Section {
    /// Applies a merge patch; `versioned_metadata` is true for desired properties.
    pub fn patch(
        &mut self,
        patch: &Value,
        now: &str,
        versioned_metadata: bool,
        name: &'static str,
    ) -> Result<(), TwinError> {
        if !patch.is_object() {
            return Err(TwinError::NotAnObject);
        }
        check_depth(patch, name)?;
        check_names(patch)?;
        let mut values = self.values.clone();
        merge(&mut values, patch);
        check_depth(&values, name)?;
        let size = values.to_string().len();
        if size > MAX_SECTION_BYTES {
            return Err(TwinError::TooLarge {
                section: name,
                size,
            });
        }
        self.values = values;
        self.version += 1;
        touch(
            &mut self.metadata,
            patch,
            now,
            versioned_metadata.then_some(self.version),
        );
        Ok(())
    }

    /// Replaces all properties (a service `PUT /twins`).
    pub fn replace(
        &mut self,
        values: &Value,
        now: &str,
        versioned_metadata: bool,
        name: &'static str,
    ) -> Result<(), TwinError> {
        if !values.is_object() {
            return Err(TwinError::NotAnObject);
        }
        check_depth(values, name)?;
        check_names(values)?;
        let size = values.to_string().len();
        if size > MAX_SECTION_BYTES {
            return Err(TwinError::TooLarge {
                section: name,
                size,
            });
        }
        self.values = values.clone();
        self.version += 1;
        self.metadata = json!({});
        touch(
            &mut self.metadata,
            values,
            now,
            versioned_metadata.then_some(self.version),
        );
        Ok(())
    }

    /// The section as devices see it: the values plus `$version`.
    pub fn for_device(&self) -> Value {
        let mut v = self.values.clone();
        if let Value::Object(m) = &mut v {
            m.insert("$version".into(), json!(self.version));
        }
        v
    }

    /// The section as the service API shows it: values, `$metadata` and `$version`.
    pub fn for_service(&self) -> Value {
        let mut v = self.for_device();
        if let Value::Object(m) = &mut v {
            m.insert("$metadata".into(), self.metadata.clone());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches_delete_with_null_and_track_versions() {
        let mut s = Section::default();
        s.patch(
            &json!({"fan": "on", "limits": {"max": 30, "min": 10}}),
            "t1",
            true,
            "desired",
        )
        .expect("patch");
        s.patch(
            &json!({"limits": {"min": null}, "mode": 2}),
            "t2",
            true,
            "desired",
        )
        .expect("patch");
        assert_eq!(s.version, 3);
        assert_eq!(
            s.values,
            json!({"fan": "on", "limits": {"max": 30}, "mode": 2})
        );
        assert_eq!(s.for_device()["$version"], json!(3));
        assert_eq!(s.metadata["mode"]["$lastUpdatedVersion"], json!(3));
        assert_eq!(s.metadata["fan"]["$lastUpdated"], json!("t1"));
        assert!(s.metadata["limits"].get("min").is_none());
        assert!(matches!(
            s.patch(&json!([1]), "t", true, "desired"),
            Err(TwinError::NotAnObject)
        ));
        assert!(matches!(
            s.patch(&json!({"$x": 1}), "t", true, "desired"),
            Err(TwinError::BadName(_))
        ));
        let big = json!({"blob": "x".repeat(MAX_SECTION_BYTES)});
        assert!(matches!(
            s.patch(&big, "t", true, "desired"),
            Err(TwinError::TooLarge { .. })
        ));
        assert_eq!(s.version, 3, "a refused patch changes nothing");
    }

    fn nested(levels: usize) -> Value {
        let mut v = json!({"property": "value"});
        for i in 0..levels {
            v = json!({ format!("l{i}"): v });
        }
        v
    }

    #[test]
    fn objects_nest_at_most_ten_deep() {
        assert_eq!(object_depth(&json!({"a": 1})), 0);
        assert_eq!(
            object_depth(&json!({"a": {"b": [1, {"c": 2}]}, "d": {}})),
            1
        );
        assert_eq!(object_depth(&nested(10)), 10);
        let mut s = Section::default();
        s.patch(&nested(10), "t", false, "reported")
            .expect("IoT Hub's deepest example is allowed");
        assert!(matches!(
            s.patch(&nested(11), "t", false, "reported"),
            Err(TwinError::TooDeep { depth: 11, .. })
        ));
        assert!(matches!(
            s.replace(&nested(125), "t", true, "desired"),
            Err(TwinError::TooDeep { depth: 125, .. })
        ));
        let mut s = Section::default();
        s.patch(&json!({"x": nested(9)}), "t", false, "reported")
            .expect("depth 10");
        let one_more = json!({"x": {"l8": {"l7": {"l6": {"l5": {"l4": {"l3": {"l2": {"l1": {"l0": {"more": {"k": 1}}}}}}}}}}}});
        assert!(s.patch(&one_more, "t", false, "reported").is_err());
        assert_eq!(s.version, 2);
    }
}
