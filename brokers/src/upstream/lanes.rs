//! Catch-up with live traffic flowing: what was queued when a connection to the hub
//! started is its **backlog**; what arrives after is **live**. Each lane is forwarded in
//! queue order; while both have messages waiting, the backlog gets `catchup_share` of
//! the sending slots and live messages the rest. With a share of 1 (the default) the
//! backlog goes first and every device's messages reach the hub in order; below 1, a
//! device's newest messages may reach the hub before its older backlog (each lane stays
//! in order, and the archive keeps when the edge took each message).
//! When one lane is empty, the other gets every slot: catching up is never slower than
//! it has to be.

use weir_storage::outbox::{Item, Outbox, OutboxError};

/// One lane's place in the queue.
#[derive(Debug, Default)]
struct Lane {
    /// The last entry sent from this lane on this connection.
    cursor: Option<u64>,
    /// Nothing was waiting after the cursor at the last look.
    drained: bool,
}

/// The two lanes of one connection.
#[derive(Debug)]
pub(crate) struct Lanes {
    /// The newest entry when the connection started: entries up to it are the backlog.
    boundary: Option<u64>,
    backlog: Lane,
    live: Lane,
    share: f64,
    /// Slots the backlog has earned and not used yet.
    credit: f64,
}

impl Lanes {
    pub(crate) fn new(boundary: Option<u64>, share: f64) -> Lanes {
        Lanes {
            boundary,
            backlog: Lane {
                cursor: None,
                drained: boundary.is_none(),
            },
            live: Lane {
                cursor: boundary,
                drained: false,
            },
            share: share.clamp(0.0, 1.0),
            credit: 0.0,
        }
    }

    /// Something new may be waiting: look again. (A drained backlog stays drained: nothing
    /// joins it.)
    pub(crate) fn wake(&mut self) {
        self.live.drained = false;
    }

    /// Up to `room` entries to send next, in the order to send them.
    pub(crate) fn next(&mut self, outbox: &Outbox, room: usize) -> Result<Vec<Item>, OutboxError> {
        let backlog = match self.boundary {
            Some(last) if !self.backlog.drained => {
                outbox.peek_until(self.backlog.cursor, last, room)?
            }
            _ => Vec::new(),
        };
        // With a full backlog the live lane gets at most its share of the slots: reading
        // (and decoding) more would be thrown away, at every fill of a catch-up.
        let live_room = if backlog.len() == room {
            ((1.0 - self.share) * room as f64).ceil() as usize + 1
        } else {
            room
        };
        let live = if self.live.drained {
            Vec::new()
        } else {
            outbox.peek(self.live.cursor, live_room.min(room))?
        };
        self.backlog.drained |= backlog.is_empty();
        self.live.drained = live.is_empty();
        Ok(self.merge(backlog, live, room))
    }

    /// Interleaves the two lanes' waiting entries by the share, moving the cursors past
    /// what is taken.
    fn merge(&mut self, backlog: Vec<Item>, live: Vec<Item>, room: usize) -> Vec<Item> {
        let mut out = Vec::with_capacity(room.min(backlog.len() + live.len()));
        let (mut b, mut l) = (backlog.into_iter().peekable(), live.into_iter().peekable());
        while out.len() < room {
            let from_backlog = match (b.peek().is_some(), l.peek().is_some()) {
                (false, false) => break,
                (true, false) => true,
                (false, true) => false,
                (true, true) => {
                    self.credit += self.share;
                    if self.credit >= 1.0 {
                        self.credit -= 1.0;
                        true
                    } else {
                        false
                    }
                }
            };
            let (lane, item) = if from_backlog {
                (&mut self.backlog, b.next())
            } else {
                (&mut self.live, l.next())
            };
            if let Some(item) = item {
                lane.cursor = Some(item.seq);
                out.push(item);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use weir_core::{DeviceId, Event};
    use weir_storage::outbox::NewItem;

    use super::*;

    fn outbox(n: u64) -> (tempfile::TempDir, Outbox) {
        let dir = tempfile::tempdir().expect("dir");
        let o = Outbox::open(&dir.path().join("q.redb"), 1 << 30).expect("open");
        append(&o, 0..n);
        (dir, o)
    }

    fn append(o: &Outbox, offsets: std::ops::Range<u64>) {
        let events: Vec<Event> = offsets
            .map(|i| {
                let mut e = Event::telemetry(DeviceId::parse("d").expect("id"), 0, Bytes::new());
                e.offset = i;
                e
            })
            .collect();
        let items: Vec<NewItem<'_>> = events
            .iter()
            .map(|e| NewItem {
                offset: e.offset,
                priority: 5,
                route: "r",
                event: e,
            })
            .collect();
        o.append(&items).expect("append");
    }

    fn offsets(items: &[Item]) -> Vec<u64> {
        items.iter().map(|i| i.event.offset).collect()
    }

    #[test]
    fn a_full_share_sends_the_backlog_first() {
        let (_d, o) = outbox(6);
        let mut lanes = Lanes::new(o.newest().expect("newest"), 1.0);
        append(&o, 100..103);
        lanes.wake();
        assert_eq!(offsets(&lanes.next(&o, 4).expect("next")), vec![0, 1, 2, 3]);
        assert_eq!(
            offsets(&lanes.next(&o, 10).expect("next")),
            vec![4, 5, 100, 101, 102]
        );
        assert!(lanes.next(&o, 10).expect("next").is_empty());
    }

    #[test]
    fn a_quarter_share_lets_live_messages_through_and_keeps_each_lane_in_order() {
        let (_d, o) = outbox(8);
        let mut lanes = Lanes::new(o.newest().expect("newest"), 0.25);
        append(&o, 100..106);
        lanes.wake();
        let sent = offsets(&lanes.next(&o, 8).expect("next"));
        assert_eq!(sent, vec![100, 101, 102, 0, 103, 104, 105, 1]);
        // The live lane is empty now: the backlog takes every slot.
        let rest = offsets(&lanes.next(&o, 10).expect("next"));
        assert_eq!(rest, vec![2, 3, 4, 5, 6, 7]);
        // New live messages after the backlog drained.
        append(&o, 200..202);
        lanes.wake();
        assert_eq!(offsets(&lanes.next(&o, 10).expect("next")), vec![200, 201]);
    }

    #[test]
    fn without_a_backlog_everything_is_live() {
        let (_d, o) = outbox(0);
        let mut lanes = Lanes::new(o.newest().expect("newest"), 0.5);
        append(&o, 0..3);
        lanes.wake();
        assert_eq!(offsets(&lanes.next(&o, 10).expect("next")), vec![0, 1, 2]);
    }
}
