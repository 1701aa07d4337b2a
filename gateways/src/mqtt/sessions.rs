//! One connection per device id: a new connection closes the old one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use weir_core::DeviceId;

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<DeviceId, (u64, Arc<Notify>)>>,
    next: AtomicU64,
}

/// A registered connection; `kicked` fires when another connection takes its place.
pub struct Registration {
    pub id: u64,
    pub kicked: Arc<Notify>,
}

impl Sessions {
    pub fn register(&self, device: &DeviceId) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let kicked = Arc::new(Notify::new());
        if let Ok(mut live) = self.live.lock()
            && let Some((_, old)) = live.insert(device.clone(), (id, Arc::clone(&kicked)))
        {
            old.notify_one();
        }
        Registration { id, kicked }
    }

    pub fn unregister(&self, device: &DeviceId, id: u64) {
        if let Ok(mut live) = self.live.lock()
            && live.get(device).is_some_and(|(cur, _)| *cur == id)
        {
            live.remove(device);
        }
    }

    pub fn is_connected(&self, device: &str) -> bool {
        self.live.lock().is_ok_and(|l| l.contains_key(device))
    }

    pub fn connected(&self) -> usize {
        self.live.lock().map_or(0, |l| l.len())
    }
}
