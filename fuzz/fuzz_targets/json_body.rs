//! The lazily split message body against serde_json's full parse: whatever a device sends,
//! a `$body` path must read the same value either way (by name, or from the slot a rule
//! set numbered its field), and a body serde_json accepts must not be rejected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weir_rules::ast::Seg;
use weir_rules::body::{FieldTable, LazyBody};
use weir_rules::eval::walk;
use weir_rules::value::Val;

fn expected<'a>(doc: &'a Value, path: &[Seg]) -> Val<'a> {
    walk(doc, path).map_or(Val::Undef, Val::from_json)
}

fuzz_target!(|data: &[u8]| {
    let lazy = LazyBody::parse(data, &FieldTable::default());
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        // The split accepts a little more than serde_json's full parse: a lone surrogate
        // escape inside a string value, and nesting deeper than serde_json's 128 levels.
        return;
    };
    let Some(lazy) = lazy else {
        panic!("serde_json accepts the body but the lazy split does not");
    };
    let Value::Object(map) = &doc else {
        assert_eq!(lazy.get(&[Seg::Index(0)]), expected(&doc, &[Seg::Index(0)]));
        return;
    };
    // Each key, and its upper-case spelling (matched ignoring case), gets a slot.
    let mut fields = FieldTable::default();
    let names: Vec<String> = map
        .keys()
        .flat_map(|k| [k.clone(), k.to_ascii_uppercase()])
        .collect();
    let slots: Vec<Option<usize>> = names.iter().map(|n| fields.slot(n)).collect();
    let Some(slotted) = LazyBody::parse(data, &fields) else {
        panic!("serde_json accepts the body but the slotted split does not");
    };
    for (name, slot) in names.iter().zip(slots) {
        let path = [Seg::Field(name.clone())];
        let want = expected(&doc, &path);
        match slot {
            Some(slot) => assert_eq!(slotted.get_field(slot, &path), want, "slot of {name:?}"),
            None => assert_eq!(slotted.get(&path), want, "{name:?} without a slot"),
        }
    }
    for (key, value) in map {
        let path = [Seg::Field(key.clone())];
        assert_eq!(lazy.get(&path), expected(&doc, &path), "key {key:?}");
        if let Value::Object(inner) = value {
            for k2 in inner.keys() {
                let path = [Seg::Field(key.clone()), Seg::Field(k2.clone())];
                assert_eq!(lazy.get(&path), expected(&doc, &path));
            }
        }
    }
});
