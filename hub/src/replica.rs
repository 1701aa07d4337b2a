//! This process's registry as a replica of the cluster's (decision 039): the engine hands
//! it every process's registry changes in offset order, and what changed for a device
//! connected here is acted on as if the change had been made here: a connection the
//! device's record no longer admits is closed, and a desired-properties change is sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use weir_core::{Event, Replica, ReplicaError};
use weir_storage::Replaced;

use crate::Hub;

/// How often "applied up to here" is saved while nothing changes: each save syncs the
/// registry's file, and a later one only shortens the replay after a restart.
const SAVE_EVERY: Duration = Duration::from_secs(1);

pub struct RegistryReplica {
    hub: Hub,
    /// The last saved position and when it was saved.
    saved: Mutex<(u64, Instant)>,
}

impl RegistryReplica {
    pub fn new(hub: Hub) -> RegistryReplica {
        let through = hub.registry().replica_through();
        RegistryReplica {
            hub,
            saved: Mutex::new((through, Instant::now())),
        }
    }
}

impl Replica for RegistryReplica {
    fn applied(&self) -> u64 {
        self.hub.registry().replica_through()
    }

    fn apply(&self, changes: &[Arc<Event>], through: u64) -> Result<u64, ReplicaError> {
        let mut saved = self.saved.lock().map_err(|e| ReplicaError(e.to_string()))?;
        if changes.is_empty() && (through <= saved.0 || saved.1.elapsed() < SAVE_EVERY) {
            return Ok(saved.0);
        }
        let bodies: Vec<(u64, &[u8])> = changes
            .iter()
            .map(|e| (e.offset, e.body.as_ref()))
            .collect();
        let applied = self
            .hub
            .registry()
            .apply_replicated(&bodies, through)
            .map_err(|e| ReplicaError(e.to_string()))?;
        *saved = (through, Instant::now());
        drop(saved);
        for r in applied.devices {
            self.act_on(&r);
        }
        for ca in applied.withdrawn_cas {
            self.hub.withdraw_ca(&ca);
        }
        Ok(through)
    }

    fn deliver(&self, message: &Event) {
        self.hub.cluster_message(&message.device_id, &message.body);
    }
}

impl RegistryReplica {
    fn act_on(&self, r: &Replaced) {
        // Deleted (or deleted and created again) elsewhere: its messages here go with it.
        if let Some(before) = &r.before
            && r.now
                .as_ref()
                .is_none_or(|n| n.generation_id != before.generation_id)
        {
            self.hub.purge_c2d_of(&r.device_id, &before.generation_id);
        }
        if self.hub.revalidate(&r.device_id) {
            return;
        }
        let (Some(before), Some(now)) = (&r.before, &r.now) else {
            return;
        };
        if now.desired.values != before.desired.values {
            let patch = merge_diff(&before.desired.values, &now.desired.values);
            self.hub.push_desired(&r.device_id, now, &patch);
        }
    }
}

/// The JSON merge patch (RFC 7386) that turns `before` into `now`: what a device that
/// holds `before` needs to hold `now`.
fn merge_diff(before: &Value, now: &Value) -> Value {
    let (Value::Object(b), Value::Object(n)) = (before, now) else {
        return now.clone();
    };
    let mut patch = Map::new();
    for (k, v) in n {
        match b.get(k) {
            Some(old) if old == v => {}
            Some(old) if old.is_object() && v.is_object() => {
                patch.insert(k.clone(), merge_diff(old, v));
            }
            _ => {
                patch.insert(k.clone(), v.clone());
            }
        }
    }
    for k in b.keys().filter(|k| !n.contains_key(*k)) {
        patch.insert(k.clone(), Value::Null);
    }
    Value::Object(patch)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::merge_diff;

    #[test]
    fn the_diff_of_two_documents_is_the_patch_between_them() {
        let before = json!({"a": 1, "b": {"x": 1, "y": 2}, "gone": true});
        let now = json!({"a": 1, "b": {"x": 3, "y": 2}, "new": [1]});
        assert_eq!(
            merge_diff(&before, &now),
            json!({"b": {"x": 3}, "new": [1], "gone": null})
        );
    }
}
