//! Where devices were last seen connecting, when that was another process of the cluster.
//!
//! Every process holds an entry for nearly every device connected anywhere else: with six
//! processes, five entries for each connection it holds itself. So the table is built for
//! size. An entry is the device's 64-bit hash, kept in one sorted vector per process (the
//! process is the vector it is in): 8 bytes a device. A hash set per process cost 17–18
//! bytes a device, as its buckets are a power of two and it keeps one control byte each
//! (decision 040). Two devices with one hash (about one chance in 10^9 for 100 000
//! devices) would at worst send one's queued C2D messages to the other's process, where
//! they wait for it as on any process.
//!
//! Inserts come in bursts (a connect storm elsewhere), so they first go to a short
//! unsorted vector that is merged into the sorted one when full: one pass over the table
//! per [`PENDING`] inserts rather than a shift of half of it per insert. Lookups are rare:
//! only a device with C2D messages queued here needs one.

/// Inserts held unsorted before they are merged into a process's sorted vector.
const PENDING: usize = 1024;

#[derive(Default)]
pub(crate) struct Elsewhere {
    by_process: Vec<Devices>,
}

#[derive(Default)]
struct Devices {
    sorted: Vec<u64>,
    pending: Vec<u64>,
}

impl Devices {
    fn contains(&self, device: u64) -> bool {
        self.pending.contains(&device) || self.sorted.binary_search(&device).is_ok()
    }

    fn remove(&mut self, device: u64) -> bool {
        if let Some(i) = self.pending.iter().position(|d| *d == device) {
            self.pending.swap_remove(i);
            return true;
        }
        // A device that moved between processes: rare next to connects, so a shift of
        // the vector is fine.
        if let Ok(i) = self.sorted.binary_search(&device) {
            self.sorted.remove(i);
            return true;
        }
        false
    }

    fn insert(&mut self, device: u64) {
        self.pending.push(device);
        if self.pending.len() >= PENDING {
            self.merge();
        }
    }

    /// Merges the pending inserts into a new sorted vector of exactly the size needed.
    fn merge(&mut self) {
        self.pending.sort_unstable();
        let mut merged = Vec::with_capacity(self.sorted.len() + self.pending.len());
        merged.extend_from_slice(&self.sorted);
        merged.extend_from_slice(&self.pending);
        // Two sorted runs: the stable sort finds them and merges them in one pass.
        merged.sort();
        merged.dedup();
        self.sorted = merged;
        self.pending.clear();
    }
}

impl Elsewhere {
    /// `device` (its hash) connected to `process` last.
    pub(crate) fn insert(&mut self, device: u64, process: u32) {
        self.remove(device);
        let p = process as usize;
        if self.by_process.len() <= p {
            self.by_process.resize_with(p + 1, Devices::default);
        }
        self.by_process[p].insert(device);
    }

    /// `device` connected here (or is gone).
    pub(crate) fn remove(&mut self, device: u64) {
        for set in &mut self.by_process {
            if set.remove(device) {
                return;
            }
        }
    }

    /// The process `device` last connected to, when it is another one.
    pub(crate) fn get(&self, device: u64) -> Option<u32> {
        let p = self.by_process.iter().position(|s| s.contains(device))?;
        u32::try_from(p).ok()
    }

    /// Entries held (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_process
            .iter()
            .map(|d| d.sorted.len() + d.pending.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_elsewhere_on_the_process_it_last_connected_to() {
        let mut e = Elsewhere::default();
        assert_eq!(e.get(7), None);
        e.insert(7, 2);
        e.insert(8, 1);
        assert_eq!((e.get(7), e.get(8)), (Some(2), Some(1)));
        e.insert(7, 0);
        assert_eq!(e.get(7), Some(0), "moved: held once");
        assert_eq!(e.len(), 2);
        e.remove(7);
        assert_eq!((e.get(7), e.get(8)), (None, Some(1)));
    }

    #[test]
    fn merged_inserts_stay_sorted_and_findable_across_moves() {
        let mut e = Elsewhere::default();
        // A hash-like spread, several merges per process, and every device moving once.
        let device = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let n = (PENDING * 5) as u64;
        for i in 0..n {
            e.insert(device(i), (i % 3) as u32);
        }
        for i in (0..n).step_by(7) {
            e.insert(device(i), ((i + 1) % 3) as u32);
        }
        for i in (0..n).step_by(11) {
            e.remove(device(i));
        }
        for i in 0..n {
            let want = if i % 11 == 0 {
                None
            } else if i % 7 == 0 {
                Some(((i + 1) % 3) as u32)
            } else {
                Some((i % 3) as u32)
            };
            assert_eq!(e.get(device(i)), want, "device {i}");
        }
        assert_eq!(e.len() as u64, n - n.div_ceil(11));
        assert!(e.by_process.iter().all(|d| d.sorted.is_sorted()));
    }
}
