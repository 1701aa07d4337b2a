//! An edge's store-and-forward queue for its hub (`<data_dir>/upstream.redb`), within a
//! byte budget.
//!
//! The upstream endpoint moves what its routes send it from the ingest log into here (so
//! the log is not held back by an unreachable hub) and the link forwards from here in the
//! order things were put in, removing what the hub acknowledged. Past the budget, the
//! oldest messages of the lowest priority go first; [`Outbox::victims`] says which and
//! sums them up per route and device for the drop ledger, which the caller writes before
//! it removes them: nothing leaves without a ledger entry.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use weir_core::Event;
use weir_core::codec;

/// Messages by the order they were put in.
const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox_pending");
/// The same messages by (priority, order): the drop order.
const BY_PRIORITY: TableDefinition<(u8, u64), u32> = TableDefinition::new("outbox_by_priority");

const CACHE_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("upstream store error: {0}")]
    Storage(String),
    #[error("damaged upstream store record {0}")]
    Damaged(u64),
}

fn storage<E: std::fmt::Display>(e: E) -> OutboxError {
    OutboxError::Storage(e.to_string())
}

/// A message to put in.
pub struct NewItem<'a> {
    pub offset: u64,
    pub priority: u8,
    pub route: &'a str,
    pub event: &'a Event,
}

/// A message in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub seq: u64,
    pub priority: u8,
    pub route: String,
    /// With its offset in the edge's log.
    pub event: Event,
}

/// What a budget pass drops of one route and device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub route: String,
    pub device: String,
    pub priority: u8,
    pub count: u64,
    pub first_offset: u64,
    pub last_offset: u64,
    pub first_enqueued_ms: i64,
    pub last_enqueued_ms: i64,
}

/// The queue's size now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    pub messages: u64,
    pub bytes: u64,
}

pub struct Outbox {
    db: Database,
    budget: u64,
    bytes: AtomicU64,
    messages: AtomicU64,
    next: Mutex<u64>,
}

/// `offset | priority | route length | route | encoded event`
fn encode(item: &NewItem<'_>) -> Vec<u8> {
    let route = item.route.as_bytes();
    let len = u16::try_from(route.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(11 + route.len() + item.event.body.len() + 64);
    out.extend_from_slice(&item.offset.to_le_bytes());
    out.push(item.priority);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&route[..usize::from(len)]);
    codec::encode(item.event, &mut out);
    out
}

fn decode(seq: u64, v: &[u8]) -> Result<Item, OutboxError> {
    let bad = || OutboxError::Damaged(seq);
    let offset = u64::from_le_bytes(v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let priority = *v.get(8).ok_or_else(bad)?;
    let len = usize::from(u16::from_le_bytes(
        v.get(9..11)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    ));
    let route = std::str::from_utf8(v.get(11..11 + len).ok_or_else(bad)?).map_err(|_| bad())?;
    let event =
        codec::decode(v.get(11 + len..).ok_or_else(bad)?, offset, None).map_err(|_| bad())?;
    Ok(Item {
        seq,
        priority,
        route: route.to_owned(),
        event,
    })
}

impl Outbox {
    /// Opens (or creates) the queue at `path`, holding at most `budget` bytes.
    pub fn open(path: &Path, budget: u64) -> Result<Outbox, OutboxError> {
        // Appends and an in-order read need little cache; redb's default (1 GiB) made the
        // edge's RSS grow with its backlog.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(storage)?;
        let w = db.begin_write().map_err(storage)?;
        w.open_table(PENDING).map_err(storage)?;
        w.open_table(BY_PRIORITY).map_err(storage)?;
        w.commit().map_err(storage)?;
        let (mut bytes, mut messages, mut next) = (0u64, 0u64, 0u64);
        {
            let r = db.begin_read().map_err(storage)?;
            let t = r.open_table(PENDING).map_err(storage)?;
            for row in t.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                bytes += v.value().len() as u64;
                messages += 1;
                next = k.value() + 1;
            }
        }
        Ok(Outbox {
            db,
            budget,
            bytes: AtomicU64::new(bytes),
            messages: AtomicU64::new(messages),
            next: Mutex::new(next),
        })
    }

    pub fn backlog(&self) -> Backlog {
        Backlog {
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// The place of the newest message in the queue, if there is one.
    pub fn newest(&self) -> Result<Option<u64>, OutboxError> {
        let r = self.db.begin_read().map_err(storage)?;
        let t = r.open_table(PENDING).map_err(storage)?;
        Ok(t.last().map_err(storage)?.map(|(k, _)| k.value()))
    }

    pub fn over_budget(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > self.budget
    }

    /// Puts `items` in, durably, after everything already in.
    pub fn append(&self, items: &[NewItem<'_>]) -> Result<(), OutboxError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut next = self.next.lock().map_err(storage)?;
        let w = self.db.begin_write().map_err(storage)?;
        let mut added = 0u64;
        let mut seq = *next;
        {
            let mut pending = w.open_table(PENDING).map_err(storage)?;
            let mut by_priority = w.open_table(BY_PRIORITY).map_err(storage)?;
            for item in items {
                let v = encode(item);
                pending.insert(seq, v.as_slice()).map_err(storage)?;
                by_priority
                    .insert(
                        (item.priority, seq),
                        u32::try_from(v.len()).unwrap_or(u32::MAX),
                    )
                    .map_err(storage)?;
                added += v.len() as u64;
                seq += 1;
            }
        }
        w.commit().map_err(storage)?;
        *next = seq;
        self.bytes.fetch_add(added, Ordering::Relaxed);
        self.messages
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Up to `max` messages after `after` (everything when `None`), in the order put in.
    pub fn peek(&self, after: Option<u64>, max: usize) -> Result<Vec<Item>, OutboxError> {
        self.peek_until(after, u64::MAX, max)
    }

    /// [`Outbox::peek`], but only messages up to `last`.
    pub fn peek_until(
        &self,
        after: Option<u64>,
        last: u64,
        max: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        let r = self.db.begin_read().map_err(storage)?;
        let t = r.open_table(PENDING).map_err(storage)?;
        let from = after.map_or(0, |a| a + 1);
        let mut out = Vec::new();
        if from > last {
            return Ok(out);
        }
        for row in t.range(from..=last).map_err(storage)?.take(max) {
            let (k, v) = row.map_err(storage)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Removes messages the hub acknowledged. Not made durable on its own: a removal lost
    /// in a crash only sends a message again, which the hub's duplicate window drops, and
    /// that is not worth an fsync per acknowledgement.
    pub fn remove(&self, seqs: &[u64]) -> Result<(), OutboxError> {
        self.take_out(seqs, redb::Durability::None)
    }

    /// Removes messages a budget pass dropped, durably: what the ledger counts as dropped
    /// must not come back.
    pub fn discard(&self, seqs: &[u64]) -> Result<(), OutboxError> {
        self.take_out(seqs, redb::Durability::Immediate)
    }

    fn take_out(&self, seqs: &[u64], durability: redb::Durability) -> Result<(), OutboxError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut w = self.db.begin_write().map_err(storage)?;
        w.set_durability(durability).map_err(storage)?;
        let (mut freed, mut removed) = (0u64, 0u64);
        {
            let mut pending = w.open_table(PENDING).map_err(storage)?;
            let mut by_priority = w.open_table(BY_PRIORITY).map_err(storage)?;
            for &seq in seqs {
                let Some(v) = pending.remove(seq).map_err(storage)? else {
                    continue;
                };
                let priority = v.value().get(8).copied().unwrap_or(0);
                freed += v.value().len() as u64;
                removed += 1;
                drop(v);
                by_priority.remove((priority, seq)).map_err(storage)?;
            }
        }
        w.commit().map_err(storage)?;
        self.bytes.fetch_sub(
            freed.min(self.bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        self.messages.fetch_sub(
            removed.min(self.messages.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// What to drop to get back to `target` bytes: the oldest messages of the lowest
    /// priority first, as their sequence numbers and the ledger rows that record them.
    /// Nothing is removed: the caller writes the ledger, then calls [`Outbox::discard`].
    pub fn victims(&self, target: u64) -> Result<(Vec<u64>, Vec<Dropped>), OutboxError> {
        let excess = self.bytes.load(Ordering::Relaxed).saturating_sub(target);
        if excess == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let r = self.db.begin_read().map_err(storage)?;
        let by_priority = r.open_table(BY_PRIORITY).map_err(storage)?;
        let pending = r.open_table(PENDING).map_err(storage)?;
        let (mut seqs, mut rows): (Vec<u64>, Vec<Dropped>) = (Vec::new(), Vec::new());
        let mut freed = 0u64;
        for row in by_priority.iter().map_err(storage)? {
            if freed >= excess {
                break;
            }
            let (k, size) = row.map_err(storage)?;
            let (_, seq) = k.value();
            freed += u64::from(size.value());
            let Some(v) = pending.get(seq).map_err(storage)? else {
                continue;
            };
            let item = decode(seq, v.value())?;
            seqs.push(seq);
            let e = &item.event;
            match rows
                .iter_mut()
                .find(|d| d.route == item.route && d.device == e.device_id.as_str())
            {
                Some(d) => {
                    d.count += 1;
                    d.first_offset = d.first_offset.min(e.offset);
                    d.last_offset = d.last_offset.max(e.offset);
                    d.first_enqueued_ms = d.first_enqueued_ms.min(e.enqueued_ms);
                    d.last_enqueued_ms = d.last_enqueued_ms.max(e.enqueued_ms);
                }
                None => rows.push(Dropped {
                    route: item.route.clone(),
                    device: e.device_id.as_str().to_owned(),
                    priority: item.priority,
                    count: 1,
                    first_offset: e.offset,
                    last_offset: e.offset,
                    first_enqueued_ms: e.enqueued_ms,
                    last_enqueued_ms: e.enqueued_ms,
                }),
            }
        }
        Ok((seqs, rows))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use weir_core::DeviceId;

    use super::*;

    fn event(device: &str, offset: u64) -> Event {
        let mut e = Event::telemetry(
            DeviceId::parse(device).expect("id"),
            1000 + offset as i64,
            Bytes::from(vec![b'x'; 100]),
        );
        e.offset = offset;
        e
    }

    #[test]
    fn keeps_order_survives_reopen_and_drops_the_oldest_lowest_priority_first() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("upstream.redb");
        let events: Vec<Event> = (0..6)
            .map(|i| event(if i % 2 == 0 { "a" } else { "b" }, i))
            .collect();
        {
            let o = Outbox::open(&path, 10_000).expect("open");
            let items: Vec<NewItem<'_>> = events
                .iter()
                .map(|e| NewItem {
                    offset: e.offset,
                    priority: if e.offset < 3 { 8 } else { 1 },
                    route: if e.offset < 3 { "high" } else { "low" },
                    event: e,
                })
                .collect();
            o.append(&items).expect("append");
            assert_eq!(o.backlog().messages, 6);
        }
        let o = Outbox::open(&path, 10_000).expect("reopen");
        assert_eq!(o.backlog().messages, 6);
        let all = o.peek(None, 100).expect("peek");
        assert_eq!(
            all.iter().map(|i| i.event.offset).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5]
        );
        assert_eq!(all[1].event, events[1]);
        assert_eq!(o.newest().expect("newest"), Some(all[5].seq));
        let upto = |after, last| -> Vec<u64> {
            o.peek_until(after, last, 100)
                .expect("peek")
                .iter()
                .map(|i| i.event.offset)
                .collect()
        };
        assert_eq!(upto(None, all[2].seq), vec![0, 1, 2]);
        assert_eq!(upto(Some(all[0].seq), all[2].seq), vec![1, 2]);
        assert!(upto(Some(all[2].seq), all[2].seq).is_empty());
        assert_eq!(
            o.peek(Some(all[3].seq), 1).expect("peek")[0].event.offset,
            4
        );
        // One byte over: the oldest low-priority message goes, whatever its device.
        let drop_one = |o: &Outbox| {
            let (seqs, rows) = o.victims(o.backlog().bytes - 1).expect("victims");
            o.discard(&seqs).expect("discard");
            (seqs, rows)
        };
        let (seqs, rows) = drop_one(&o);
        assert_eq!(seqs, vec![all[3].seq]);
        assert_eq!(
            rows,
            vec![Dropped {
                route: "low".into(),
                device: "b".into(),
                priority: 1,
                count: 1,
                first_offset: 3,
                last_offset: 3,
                first_enqueued_ms: 1003,
                last_enqueued_ms: 1003,
            }]
        );
        assert_eq!(drop_one(&o).0, vec![all[4].seq]);
        assert_eq!(o.backlog().messages, 4);
        let left = |o: &Outbox| -> Vec<u64> {
            o.peek(None, 100)
                .expect("peek")
                .iter()
                .map(|i| i.event.offset)
                .collect()
        };
        assert_eq!(left(&o), vec![0, 1, 2, 5]);
        // Then the last low one, then the oldest high-priority ones.
        drop_one(&o);
        drop_one(&o);
        assert_eq!(left(&o), vec![1, 2]);
        // Many at once, summed per route and device.
        let (seqs, rows) = o.victims(0).expect("victims");
        assert_eq!((seqs.len(), rows.len()), (2, 2));
    }
}
