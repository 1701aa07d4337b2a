use serde_json::json;
use weir_core::EventSource;

use super::super::{DeviceUpsert, Registry};

/// A registry of process `process` in a cluster, in its own directory.
fn registry(process: usize) -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().expect("tmp");
    let r = Registry::open(&dir.path().join("registry.redb")).expect("open");
    r.replicate_as(process);
    (dir, r)
}

fn put(r: &Registry, id: &str, tags: serde_json::Value) {
    r.upsert(
        DeviceUpsert {
            device_id: id.into(),
            tags: Some(tags),
            ..DeviceUpsert::default()
        },
        None,
        |_| Vec::new(),
    )
    .expect("upsert");
}

/// The bodies of the `Registry` events `r` staged since the last call, as the log would
/// carry them.
fn sent(r: &Registry) -> Vec<Vec<u8>> {
    let staged = r.outbox(1000).expect("outbox");
    let seqs: Vec<u64> = staged.iter().map(|(s, _)| *s).collect();
    r.outbox_done(&seqs).expect("done");
    staged
        .into_iter()
        .filter(|(_, e)| e.source == EventSource::Registry)
        .map(|(_, e)| e.body.to_vec())
        .collect()
}

fn apply(r: &Registry, changes: &[Vec<u8>], through: u64) -> usize {
    let bodies: Vec<&[u8]> = changes.iter().map(Vec::as_slice).collect();
    r.apply_replicated(&bodies, through).expect("apply").len()
}

fn tags(r: &Registry, id: &str) -> Option<serde_json::Value> {
    r.list(None)
        .into_iter()
        .find(|d| d.device_id == id)
        .map(|d| d.tags.clone())
}

#[test]
fn a_device_made_on_one_process_is_the_same_record_on_another() {
    let (_a_dir, a) = registry(0);
    let (_b_dir, b) = registry(1);
    put(&a, "d1", json!({"site": "north"}));
    let changes = sent(&a);
    assert_eq!(changes.len(), 1);
    assert_eq!(apply(&b, &changes, 10), 1);
    assert_eq!(
        a.list(None),
        b.list(None),
        "the whole record, keys included"
    );
    assert_eq!(b.replica_through(), 10);
    // The maker's own change comes back through its log: nothing to do.
    assert_eq!(apply(&a, &changes, 10), 0);
}

#[test]
fn a_deletion_reaches_the_other_process() {
    let (_a_dir, a) = registry(0);
    let (_b_dir, b) = registry(1);
    put(&a, "d1", json!({}));
    apply(&b, &sent(&a), 5);
    a.delete("d1", None, |_| Vec::new()).expect("delete");
    assert_eq!(apply(&b, &sent(&a), 9), 1);
    assert!(b.is_empty());
}

#[test]
fn concurrent_changes_end_the_same_on_both_processes() {
    let (_a_dir, a) = registry(0);
    let (_b_dir, b) = registry(1);
    put(&a, "d1", json!({"v": 0}));
    let first = sent(&a);
    apply(&a, &first, 1);
    apply(&b, &first, 1);
    // Both change the device before either sees the other's change; A's has the lower
    // offset, so B's is the last in every log order.
    put(&a, "d1", json!({"v": "a"}));
    put(&b, "d1", json!({"v": "b"}));
    let mut both = sent(&a);
    both.extend(sent(&b));
    apply(&a, &both, 3);
    apply(&b, &both, 3);
    assert_eq!(tags(&a, "d1"), Some(json!({"v": "b"})));
    assert_eq!(a.list(None), b.list(None));
}

#[test]
fn a_later_own_change_is_not_undone_by_an_earlier_one() {
    let (_a_dir, a) = registry(0);
    put(&a, "d1", json!({"v": 1}));
    put(&a, "d1", json!({"v": 2}));
    let changes = sent(&a);
    assert_eq!(changes.len(), 2);
    // The first comes back while the second is still on its way.
    apply(&a, &changes[..1], 1);
    assert_eq!(tags(&a, "d1"), Some(json!({"v": 2})));
    apply(&a, &changes[1..], 2);
    assert_eq!(tags(&a, "d1"), Some(json!({"v": 2})));
}

#[test]
fn garbage_is_skipped_and_the_rest_applied() {
    let (_a_dir, a) = registry(0);
    let (_b_dir, b) = registry(1);
    put(&a, "d1", json!({}));
    let mut changes = vec![b"{not json".to_vec()];
    changes.extend(sent(&a));
    assert_eq!(apply(&b, &changes, 4), 1);
    assert_eq!(b.len(), 1);
}

#[test]
fn a_registry_alone_writes_no_copies() {
    let dir = tempfile::tempdir().expect("tmp");
    let r = Registry::open(&dir.path().join("registry.redb")).expect("open");
    put(&r, "d1", json!({}));
    assert!(sent(&r).is_empty());
}
