use super::*;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;
use timely::dataflow::operators::{Input, Probe};
use weir_core::DeviceId;

fn change(device: &str, offset: u64, before: Option<&str>, after: &str) -> Arc<Event> {
    let mut e = Event::telemetry(DeviceId::parse(device).expect("id"), 0, bytes::Bytes::new());
    e.source = EventSource::TwinChangeEvents;
    e.auth_method = AuthMethod::Internal;
    e.offset = offset;
    e.properties.push((TAGS_PROPERTY.into(), after.into()));
    if let Some(b) = before {
        e.properties.push((TAGS_BEFORE_PROPERTY.into(), b.into()));
    }
    Arc::new(e)
}

fn site(t: &Tags) -> Option<String> {
    match t {
        Tags::Known(v) => v.get("site").and_then(|s| s.as_str()).map(str::to_owned),
        Tags::Registry => Some("registry".into()),
    }
}

/// Feeds `changes` through the arrangement and answers `asks` (then compacts to
/// `compact` and answers `after`).
fn lookups(
    seed: Seed,
    changes: Vec<Arc<Event>>,
    asks: &'static [(&'static str, u64)],
    compact: u64,
    after: &'static [(&'static str, u64)],
) -> (Vec<Option<String>>, Vec<Option<String>>) {
    let seed = Arc::new(seed);
    timely::execute_directly(move |worker| {
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<Arc<Event>>>>::new();
        let (trace, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let arranged = arrange(scope.input_from(&mut input));
            let probe = arranged.stream.clone().probe().0;
            (arranged.trace, probe)
        });
        for c in &changes {
            input.send(Arc::clone(c));
        }
        input.advance_to(30);
        while probe.less_than(input.time()) {
            worker.step();
        }
        let mut lookup = Lookup::new(trace, Arc::clone(&seed));
        let first = lookup.tags(asks).iter().map(site).collect();
        lookup.done_below(compact);
        let second = lookup.tags(after).iter().map(site).collect();
        (first, second)
    })
}

/// Devices at sites, and `bare`, a device without tags.
fn seeded(pairs: &[(&str, &str)]) -> Seed {
    Seed::Known {
        tags: pairs
            .iter()
            .map(|(d, s)| ((*d).to_owned(), Arc::new(serde_json::json!({ "site": s }))))
            .collect(),
        empty: [weir_core::feed::device_hash("bare")].into(),
    }
}

#[test]
fn tags_are_read_as_of_an_offset_from_the_seed_on() {
    let a = r#"{"site":"A"}"#;
    let b = r#"{"site":"B"}"#;
    // A telemetry event from a device is no change, whatever its properties say.
    let mut forged = (*change("e", 15, None, b)).clone();
    forged.auth_method = AuthMethod::Sas;
    forged.source = EventSource::DeviceMessages;
    let (got, after) = lookups(
        seeded(&[("d", "A"), ("e", "E")]),
        vec![
            change("d", 10, Some(a), b),
            change("d", 20, Some(b), "null"),
            Arc::new(forged),
        ],
        &[
            ("d", 5),
            ("d", 10),
            ("d", 19),
            ("d", 25),
            ("e", 16),
            ("bare", 3),
            ("new", 3),
        ],
        20,
        &[("d", 20), ("d", 29)],
    );
    assert_eq!(
        got,
        vec![
            Some("A".into()),
            Some("B".into()),
            Some("B".into()),
            None,
            Some("E".into()),
            None,
            Some("registry".into())
        ],
        "the seed before the first change; then each change; deleted: no tags; a device \
         created since the start: the registry's until its creation is arranged"
    );
    assert_eq!(
        after,
        vec![None, None],
        "compaction keeps what is at or after 20"
    );
}

#[test]
fn a_device_deleted_and_created_again_has_only_its_new_tags() {
    let a = r#"{"site":"A"}"#;
    let c = r#"{"site":"C"}"#;
    let (got, _) = lookups(
        seeded(&[("d", "A")]),
        vec![
            change("d", 10, Some(a), "null"),
            change("d", 12, Some("null"), c),
        ],
        &[("d", 11), ("d", 12), ("d", 13)],
        0,
        &[],
    );
    assert_eq!(got, vec![None, Some("C".into()), Some("C".into())]);
}

#[test]
fn without_a_seed_unchanged_devices_read_the_registry() {
    let (got, _) = lookups(
        Seed::Registry,
        vec![change("d", 10, Some(r#"{"site":"A"}"#), r#"{"site":"B"}"#)],
        &[("d", 9), ("d", 10), ("x", 10)],
        0,
        &[],
    );
    assert_eq!(
        got,
        vec![
            Some("registry".into()),
            Some("B".into()),
            Some("registry".into())
        ]
    );
}
