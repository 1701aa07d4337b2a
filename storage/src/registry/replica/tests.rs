use serde_json::json;
use weir_core::{DeviceDirectory, EventSource};

use super::super::certs::test_info;
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

/// Applies `changes` at offsets `at`, `at + 1`, …; returns how many records changed.
fn apply(r: &Registry, changes: &[Vec<u8>], at: u64) -> usize {
    let offsets: Vec<(u64, &[u8])> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| (at + i as u64, c.as_slice()))
        .collect();
    r.apply_replicated(&offsets, at + changes.len() as u64)
        .expect("apply")
        .devices
        .len()
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
    assert_eq!(b.replica_through(), 11);
    // The maker's own change comes back through its log: nothing to do.
    assert_eq!(apply(&a, &changes, 10), 0);
}

#[test]
fn a_deletion_reaches_the_other_process_and_a_late_copy_does_not_undo_it() {
    let (_a_dir, a) = registry(0);
    let (_b_dir, b) = registry(1);
    put(&a, "d1", json!({}));
    let created = sent(&a);
    apply(&b, &created, 5);
    a.delete("d1", None, |_| Vec::new()).expect("delete");
    assert_eq!(apply(&b, &sent(&a), 9), 1);
    assert!(b.is_empty());
    // A copy of the creation appended again later (an outbox moved twice).
    assert_eq!(apply(&b, &created, 20), 0);
    assert!(b.is_empty());
    assert_eq!(apply(&a, &created, 20), 0);
    assert!(a.is_empty());
}

#[test]
fn a_creation_and_deletion_in_one_batch_leave_no_device() {
    let (_a_dir, a) = registry(0);
    let (_b_dir, b) = registry(1);
    put(&a, "d1", json!({}));
    a.delete("d1", None, |_| Vec::new()).expect("delete");
    let both = sent(&a);
    assert_eq!(both.len(), 2);
    apply(&b, &both, 3);
    assert!(b.is_empty());
    // A device created again afterwards is a new incarnation: it is taken.
    put(&a, "d1", json!({"again": true}));
    assert_eq!(apply(&b, &sent(&a), 10), 1);
    assert_eq!(tags(&b, "d1"), Some(json!({"again": true})));
}

#[test]
fn concurrent_changes_end_the_same_on_both_processes_in_any_order() {
    let (_a_dir, a) = registry(0);
    let (_b_dir, b) = registry(1);
    put(&a, "d1", json!({"v": 0}));
    let first = sent(&a);
    apply(&a, &first, 1);
    apply(&b, &first, 1);
    // Both change the device before either sees the other's change.
    put(&a, "d1", json!({"v": "a"}));
    put(&b, "d1", json!({"v": "b"}));
    let (from_a, from_b) = (sent(&a), sent(&b));
    apply(&a, &[from_a.clone(), from_b.clone()].concat(), 3);
    apply(&b, &[from_b, from_a].concat(), 3);
    assert_eq!(a.list(None), b.list(None));
}

#[test]
fn an_older_copy_never_replaces_a_newer_record() {
    let (_a_dir, a) = registry(0);
    let (_b_dir, b) = registry(1);
    put(&a, "d1", json!({"v": 1}));
    let old = sent(&a);
    put(&a, "d1", json!({"v": 2}));
    let new = sent(&a);
    apply(&b, &[old.clone(), new].concat(), 1);
    assert_eq!(tags(&b, "d1"), Some(json!({"v": 2})));
    // The first change appended again after the second (an outbox moved twice).
    assert_eq!(apply(&b, &old, 10), 0);
    assert_eq!(tags(&b, "d1"), Some(json!({"v": 2})));
    assert_eq!(tags(&a, "d1"), Some(json!({"v": 2})));
    assert_eq!(apply(&a, &old, 10), 0, "nor on the process that made it");
}

#[test]
fn a_replay_below_what_was_applied_is_skipped() {
    let (_a_dir, a) = registry(0);
    let (_b_dir, b) = registry(1);
    put(&a, "d1", json!({}));
    let created = sent(&a);
    apply(&b, &created, 5);
    b.delete("d1", None, |_| Vec::new()).expect("delete");
    sent(&b);
    // A restart reads the log from below 6 again: the creation is not applied again.
    assert_eq!(apply(&b, &created, 5), 0);
    assert!(b.is_empty());
    assert_eq!(b.replica_through(), 6, "the position never moves back");
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

#[test]
fn a_ca_certificate_verified_on_one_process_authenticates_on_every_process() {
    let (_a_dir, a) = registry(0);
    let (_b_dir, b) = registry(1);
    a.put_ca("root", b"der", test_info("S1"), None)
        .expect("put");
    a.set_verification_code("root", "C0DE".into(), None)
        .expect("code");
    a.mark_ca_verified("root", "S1", "C0DE", None)
        .expect("verified");
    let changes = sent(&a);
    assert_eq!(changes.len(), 3, "added, coded, verified");
    let applied = b
        .apply_replicated(
            &changes
                .iter()
                .enumerate()
                .map(|(i, c)| (10 + i as u64, c.as_slice()))
                .collect::<Vec<_>>(),
            13,
        )
        .expect("apply");
    assert!(applied.devices.is_empty() && applied.withdrawn_cas.is_empty());
    assert_eq!(b.ca("root"), a.ca("root"), "the whole record");
    assert_eq!(b.verified_cas().len(), 1);
    assert_eq!(b.verified_cas()[0].name, "root");
    // The maker's own changes come back through its log: nothing to do.
    apply(&a, &changes, 10);
    assert_eq!(a.verified_cas().len(), 1);

    // Replaced by another certificate on b: a sees the verified one withdrawn.
    b.put_ca("root", b"der2", test_info("S2"), Some("*"))
        .expect("replace");
    let replaced = sent(&b);
    let applied = a
        .apply_replicated(&[(20, replaced[0].as_slice())], 21)
        .expect("apply");
    assert_eq!(applied.withdrawn_cas.len(), 1);
    assert_eq!(applied.withdrawn_cas[0].sha256, "S1");
    assert!(
        a.verified_cas().is_empty(),
        "the new certificate is not verified yet"
    );

    // Deleted on a; a late copy of b's earlier change does not bring it back.
    a.delete_ca("root", Some("*")).expect("delete");
    let deleted = sent(&a);
    apply(&b, &deleted, 30);
    assert!(b.ca("root").is_none());
    apply(&b, &replaced, 40);
    assert!(b.ca("root").is_none(), "a tombstone keeps it deleted");
    // Added again later: a new incarnation, which wins over the tombstone.
    std::thread::sleep(std::time::Duration::from_millis(5));
    a.put_ca("root", b"der3", test_info("S3"), None)
        .expect("again");
    apply(&b, &sent(&a), 50);
    assert_eq!(
        b.ca("root").map(|c| c.sha256.clone()).as_deref(),
        Some("S3")
    );
}

/// The provisioning service's changes leave through one process's registry outbox and
/// reach another's provisioning store through its registry, and a replay changes nothing.
#[test]
fn provisioning_changes_travel_with_the_registry_events() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::dps::{DpsStore, Kind};

    let linked = |r: &Registry, dir: &tempfile::TempDir, wakes: Arc<AtomicUsize>| {
        let store = Arc::new(
            DpsStore::open(&dir.path().join("dps.redb"), Some("0ne00000ABC")).expect("dps"),
        );
        r.replicate_provisioning(
            Arc::clone(&store),
            Box::new(move || {
                wakes.fetch_add(1, Ordering::Relaxed);
            }),
        );
        store
    };
    let (a_dir, a) = registry(0);
    let (b_dir, b) = registry(1);
    let wakes = Arc::new(AtomicUsize::new(0));
    let a_dps = linked(&a, &a_dir, Arc::clone(&wakes));
    let b_dps = linked(&b, &b_dir, Arc::default());
    let enrollment = serde_json::from_value(json!({
        "enrollmentGroupId": "line-7",
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "a", "secondaryKey": "b"}},
    }))
    .expect("enrollment");
    a_dps
        .put_enrollment(Kind::Group, "line-7", enrollment, None)
        .expect("put");
    assert_eq!(wakes.load(Ordering::Relaxed), 1, "the dispatcher is woken");
    let changes = sent(&a);
    assert_eq!(changes.len(), 1);
    assert!(
        a_dps.pending(10).expect("queue").is_empty(),
        "taken once staged"
    );
    assert_eq!(apply(&b, &changes, 0), 0, "no device changed");
    let on_b = b_dps.enrollment(Kind::Group, "line-7").expect("read");
    assert!(on_b.is_some_and(|e| e.enrollment_group_id.as_deref() == Some("line-7")));
    a_dps
        .delete_enrollment(Kind::Group, "line-7", None)
        .expect("delete");
    let deleted = sent(&a);
    apply(&b, &deleted, 1);
    assert!(
        b_dps
            .enrollment(Kind::Group, "line-7")
            .expect("read")
            .is_none()
    );
    // Read again from the log after a restart: below what was applied, skipped.
    apply(&b, &changes, 0);
    assert!(
        b_dps
            .enrollment(Kind::Group, "line-7")
            .expect("read")
            .is_none()
    );
}
