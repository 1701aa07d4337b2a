//! The cluster on the live page (decision 035): each process's report reaches the others
//! through the cluster's dataflow once a second, so the page of any process shows every
//! process. A report not renewed for a while means its process is down, or the cluster's
//! dataflow is (it stops while any process is away).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// This process's report, and the latest heard from every other process.
#[derive(Default)]
pub struct ClusterReports {
    local: OnceLock<Box<dyn Fn() -> Value + Send + Sync>>,
    peers: Mutex<BTreeMap<usize, Heard>>,
}

#[derive(Clone)]
pub struct Heard {
    /// When this process received it (its own clock).
    pub at_ms: i64,
    pub report: Value,
}

impl ClusterReports {
    /// What this process reports; set once the API state it reads from exists.
    pub fn set_local(&self, report: impl Fn() -> Value + Send + Sync + 'static) {
        let _ = self.local.set(Box::new(report));
    }

    pub fn peers(&self) -> BTreeMap<usize, Heard> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

impl weir_engine::cluster::Reports for ClusterReports {
    fn local(&self) -> String {
        self.local
            .get()
            .map(|f| f().to_string())
            .unwrap_or_default()
    }

    fn peer(&self, process: usize, report: String) {
        // Reports come from processes of this cluster; one that does not parse is dropped.
        let Ok(report) = serde_json::from_str::<Value>(&report) else {
            tracing::debug!(process, "unreadable cluster report dropped");
            return;
        };
        let heard = Heard {
            at_ms: weir_core::time::now_ms(),
            report,
        };
        if let Ok(mut p) = self.peers.lock() {
            p.insert(process, heard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_engine::cluster::Reports;

    #[test]
    fn the_latest_report_of_each_peer_is_kept_and_garbage_dropped() {
        let r = ClusterReports::default();
        assert_eq!(r.local(), "", "nothing to say before the API exists");
        r.set_local(|| serde_json::json!({ "messagesIn": 3 }));
        assert_eq!(r.local(), r#"{"messagesIn":3}"#);
        r.peer(1, r#"{"messagesIn":1}"#.into());
        r.peer(1, r#"{"messagesIn":2}"#.into());
        r.peer(2, "not json".into());
        let peers = r.peers();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[&1].report["messagesIn"], 2);
    }
}
