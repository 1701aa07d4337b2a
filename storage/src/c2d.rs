//! Cloud-to-device messages: a persistent queue per device, and the feedback services read.
//!
//! IoT Hub keeps at most 50 messages per device, each with an expiry; a message leaves the
//! queue when the device acknowledges it (MQTT PUBACK), when it expires, or when the queue
//! is purged. Depending on the `ack` the sender asked for, that outcome becomes a feedback
//! record, which services read, lock and complete (`/messages/serviceBound/feedback`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Messages by `"{device}/{seq:020}"`, so one device's queue is a key range in order.
const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("c2d_messages");
const FEEDBACK: TableDefinition<u64, &[u8]> = TableDefinition::new("c2d_feedback");
/// Feedback owed to the process a message was sent through, by this store's sequence
/// number, kept until that process's log has it.
const FEEDBACK_OUT: TableDefinition<u64, &[u8]> = TableDefinition::new("c2d_feedback_out");

/// The most messages waiting for one device.
pub const MAX_PENDING: usize = 50;

/// Feedback nobody collects is dropped after this long, as IoT Hub's feedback queue does
/// (`cloudToDevice.feedback.ttlAsIso8601`, default PT1H).
pub const FEEDBACK_TTL_MS: i64 = 3_600_000;
/// And beyond this many records, the oldest go first, whatever their age.
pub const MAX_FEEDBACK: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum C2dError {
    #[error("device {0} already has {MAX_PENDING} messages waiting")]
    QueueFull(String),
    #[error("cloud-to-device store error: {0}")]
    Storage(String),
}

fn storage<E: std::fmt::Display>(e: E) -> C2dError {
    C2dError::Storage(e.to_string())
}

/// Which outcomes the sender wants feedback for (`iothub-ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    #[default]
    None,
    Positive,
    Negative,
    Full,
}

impl AckMode {
    pub fn parse(s: &str) -> Option<AckMode> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Some(AckMode::None),
            "positive" => Some(AckMode::Positive),
            "negative" => Some(AckMode::Negative),
            "full" => Some(AckMode::Full),
            _ => None,
        }
    }

    fn wants(self, success: bool) -> bool {
        match self {
            AckMode::None => false,
            AckMode::Positive => success,
            AckMode::Negative => !success,
            AckMode::Full => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct C2dMessage {
    /// Store-wide sequence number; also the lock the device acknowledges.
    pub seq: u64,
    pub device_id: String,
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub properties: Vec<(String, String)>,
    /// Base64 of the payload.
    pub body: String,
    pub enqueued_ms: i64,
    pub expiry_ms: i64,
    pub ack: AckMode,
    pub deliveries: u32,
    /// In a cluster, the process the message was sent through when it was moved here
    /// (its queue follows the device): that process's readers get its feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<u32>,
}

impl C2dMessage {
    pub fn payload(&self) -> Vec<u8> {
        STANDARD.decode(&self.body).unwrap_or_default()
    }

    pub fn encode_body(body: &[u8]) -> String {
        STANDARD.encode(body)
    }
}

/// One feedback record, in IoT Hub's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Feedback {
    pub original_message_id: String,
    pub enqueued_time_utc: String,
    pub status_code: String,
    pub description: String,
    pub device_id: String,
    pub device_generation_id: String,
}

/// Feedback for another process of a cluster: the one message `to` was sent through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwedFeedback {
    pub to: u32,
    pub feedback: Feedback,
}

/// A feedback record as stored: when it was recorded, for its time to live.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredFeedback {
    #[serde(default)]
    recorded_ms: i64,
    #[serde(flatten)]
    feedback: Feedback,
}

pub struct C2dStore {
    db: Database,
    next: AtomicU64,
    /// Messages waiting, over all devices: lets a cluster skip looking for a device's
    /// queue when nothing waits at all (every connect elsewhere would otherwise read it).
    waiting: AtomicU64,
    /// Feedback handed out under a lock token and not yet completed.
    locks: Mutex<HashMap<String, (Instant, Vec<u64>)>>,
}

/// How long a feedback batch stays locked before it is handed out again.
const LOCK_FOR: Duration = Duration::from_secs(60);

fn key(device: &str, seq: u64) -> String {
    format!("{device}/{seq:020}")
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl C2dStore {
    pub fn open(path: &Path) -> Result<C2dStore, C2dError> {
        crate::fsutil::private_db_file(path).map_err(storage)?;
        let db = Database::create(path).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(MESSAGES).map_err(storage)?;
        txn.open_table(FEEDBACK).map_err(storage)?;
        txn.open_table(FEEDBACK_OUT).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let mut next = 1;
        let mut waiting = 0;
        {
            let txn = db.begin_read().map_err(storage)?;
            for row in txn
                .open_table(MESSAGES)
                .map_err(storage)?
                .iter()
                .map_err(storage)?
            {
                let (_, v) = row.map_err(storage)?;
                waiting += 1;
                if let Ok(m) = serde_json::from_slice::<C2dMessage>(v.value()) {
                    next = next.max(m.seq + 1);
                }
            }
            for table in [FEEDBACK, FEEDBACK_OUT] {
                if let Some(row) = txn
                    .open_table(table)
                    .map_err(storage)?
                    .last()
                    .map_err(storage)?
                {
                    next = next.max(row.0.value() + 1);
                }
            }
        }
        Ok(C2dStore {
            db,
            next: AtomicU64::new(next),
            waiting: AtomicU64::new(waiting),
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn device_messages(&self, device: &str) -> Result<Vec<C2dMessage>, C2dError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(MESSAGES).map_err(storage)?;
        let (lo, hi) = (format!("{device}/"), format!("{device}0"));
        let mut out = Vec::new();
        for row in t.range(lo.as_str()..hi.as_str()).map_err(storage)? {
            let (_, v) = row.map_err(storage)?;
            out.push(serde_json::from_slice(v.value()).map_err(storage)?);
        }
        Ok(out)
    }

    /// The messages queued for `device`, oldest first.
    pub fn queued(&self, device: &str) -> Result<Vec<C2dMessage>, C2dError> {
        self.device_messages(device)
    }

    /// Queues messages another process moved here (a cluster's queue follows its device),
    /// except one already queued (a move seen twice), in one transaction; returns the
    /// `(seq, message id)` they had there, of those now queued here.
    pub fn take_in(&self, moved: Vec<C2dMessage>) -> Result<Vec<(u64, String)>, C2dError> {
        let mut taken = Vec::new();
        let mut added = 0;
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(MESSAGES).map_err(storage)?;
            for mut m in moved {
                let there = (m.seq, m.message_id.clone());
                match self.queue_in(&mut t, &mut m, true) {
                    Ok(true) => added += 1,
                    Ok(false) => {}
                    Err(C2dError::QueueFull(_)) => break,
                    Err(e) => return Err(e),
                }
                taken.push(there);
            }
        }
        txn.commit().map_err(storage)?;
        self.waiting.fetch_add(added, Ordering::Relaxed);
        Ok(taken)
    }

    /// Removes messages another process has taken in, without feedback: each only if its
    /// sequence number and message id both match (sequence numbers can be reused).
    pub fn moved_out(&self, device: &str, moved: &[(u64, String)]) -> Result<usize, C2dError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let mut n = 0;
        {
            let mut t = txn.open_table(MESSAGES).map_err(storage)?;
            for (seq, id) in moved {
                let k = key(device, *seq);
                let matches = match t.get(k.as_str()).map_err(storage)? {
                    Some(v) => serde_json::from_slice::<C2dMessage>(v.value())
                        .is_ok_and(|m| &m.message_id == id),
                    None => false,
                };
                if matches {
                    t.remove(k.as_str()).map_err(storage)?;
                    n += 1;
                }
            }
        }
        txn.commit().map_err(storage)?;
        self.taken_out(n as u64);
        Ok(n)
    }

    pub fn pending(&self, device: &str) -> usize {
        self.device_messages(device).map_or(0, |v| v.len())
    }

    /// Queues a message; its `seq` is assigned here. 403-worthy when the queue is full.
    /// The count and the insert are one transaction: concurrent senders cannot push a
    /// device's queue past the limit.
    pub fn enqueue(&self, mut m: C2dMessage) -> Result<C2dMessage, C2dError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(MESSAGES).map_err(storage)?;
            self.queue_in(&mut t, &mut m, false)?;
        }
        txn.commit().map_err(storage)?;
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Ok(m)
    }

    /// Puts `m` in the queue table under a new sequence number unless its device's queue
    /// is full (`QueueFull`) or, with `unless_known`, a message with its id is queued
    /// already (false).
    fn queue_in(
        &self,
        t: &mut redb::Table<&str, &[u8]>,
        m: &mut C2dMessage,
        unless_known: bool,
    ) -> Result<bool, C2dError> {
        let (lo, hi) = (format!("{}/", m.device_id), format!("{}0", m.device_id));
        let mut queued = 0;
        for row in t.range(lo.as_str()..hi.as_str()).map_err(storage)? {
            let (_, v) = row.map_err(storage)?;
            queued += 1;
            if unless_known
                && serde_json::from_slice::<C2dMessage>(v.value())
                    .is_ok_and(|q| q.message_id == m.message_id)
            {
                return Ok(false);
            }
        }
        if queued >= MAX_PENDING {
            return Err(C2dError::QueueFull(m.device_id.clone()));
        }
        m.seq = self.next.fetch_add(1, Ordering::Relaxed);
        let v = serde_json::to_vec(&*m).map_err(storage)?;
        t.insert(key(&m.device_id, m.seq).as_str(), v.as_slice())
            .map_err(storage)?;
        Ok(true)
    }

    /// True when no message waits for any device.
    pub fn nothing_waits(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) == 0
    }

    fn taken_out(&self, n: u64) {
        let _ = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_sub(n))
            });
    }

    /// Removes a message and records feedback for it when its sender asked for it.
    fn finish(&self, m: &C2dMessage, status: &str, generation: &str) -> Result<(), C2dError> {
        let success = status == "Success";
        let txn = self.db.begin_write().map_err(storage)?;
        let removed;
        {
            let mut t = txn.open_table(MESSAGES).map_err(storage)?;
            removed = t
                .remove(key(&m.device_id, m.seq).as_str())
                .map_err(storage)?
                .is_some();
            if m.ack.wants(success) {
                let f = StoredFeedback {
                    recorded_ms: weir_core::time::now_ms(),
                    feedback: Feedback {
                        original_message_id: m.message_id.clone(),
                        enqueued_time_utc: rfc3339(m.enqueued_ms),
                        status_code: status.into(),
                        description: status.into(),
                        device_id: m.device_id.clone(),
                        device_generation_id: generation.into(),
                    },
                };
                if let Some(to) = m.origin {
                    let owed = OwedFeedback {
                        to,
                        feedback: f.feedback,
                    };
                    let mut out = txn.open_table(FEEDBACK_OUT).map_err(storage)?;
                    let v = serde_json::to_vec(&owed).map_err(storage)?;
                    out.insert(m.seq, v.as_slice()).map_err(storage)?;
                } else {
                    let mut fb = txn.open_table(FEEDBACK).map_err(storage)?;
                    let v = serde_json::to_vec(&f).map_err(storage)?;
                    fb.insert(m.seq, v.as_slice()).map_err(storage)?;
                }
            }
        }
        txn.commit().map_err(storage)?;
        if removed {
            self.taken_out(1);
        }
        Ok(())
    }

    /// The oldest message for `device` that has not expired; expired ones are removed
    /// (with feedback) on the way.
    pub fn next_for(
        &self,
        device: &str,
        now_ms: i64,
        generation: &str,
    ) -> Result<Option<C2dMessage>, C2dError> {
        for m in self.device_messages(device)? {
            if m.expiry_ms <= now_ms {
                self.finish(&m, "Expired", generation)?;
                continue;
            }
            return Ok(Some(m));
        }
        Ok(None)
    }

    /// Marks a delivery attempt.
    pub fn delivering(&self, m: &C2dMessage) -> Result<(), C2dError> {
        let mut m = m.clone();
        m.deliveries += 1;
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(MESSAGES).map_err(storage)?;
            let k = key(&m.device_id, m.seq);
            if t.get(k.as_str()).map_err(storage)?.is_some() {
                let v = serde_json::to_vec(&m).map_err(storage)?;
                t.insert(k.as_str(), v.as_slice()).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    /// The device acknowledged message `seq`: it is done.
    pub fn complete(&self, device: &str, seq: u64, generation: &str) -> Result<bool, C2dError> {
        let found = self
            .device_messages(device)?
            .into_iter()
            .find(|m| m.seq == seq);
        match found {
            Some(m) => self.finish(&m, "Success", generation).map(|()| true),
            None => Ok(false),
        }
    }

    /// Removes every expired message of every device, recording feedback.
    pub fn expire(
        &self,
        now_ms: i64,
        generation_of: impl Fn(&str) -> String,
    ) -> Result<usize, C2dError> {
        let expired: Vec<C2dMessage> = {
            let txn = self.db.begin_read().map_err(storage)?;
            let t = txn.open_table(MESSAGES).map_err(storage)?;
            let mut v = Vec::new();
            for row in t.iter().map_err(storage)? {
                let (_, val) = row.map_err(storage)?;
                let m: C2dMessage = serde_json::from_slice(val.value()).map_err(storage)?;
                if m.expiry_ms <= now_ms {
                    v.push(m);
                }
            }
            v
        };
        for m in &expired {
            self.finish(m, "Expired", &generation_of(&m.device_id))?;
        }
        self.expire_feedback(now_ms)?;
        Ok(expired.len())
    }

    /// Drops feedback older than [`FEEDBACK_TTL_MS`] and, beyond [`MAX_FEEDBACK`] records,
    /// the oldest; returns how many went.
    pub fn expire_feedback(&self, now_ms: i64) -> Result<usize, C2dError> {
        let doomed: Vec<u64> = {
            let txn = self.db.begin_read().map_err(storage)?;
            let t = txn.open_table(FEEDBACK).map_err(storage)?;
            let total = redb::ReadableTableMetadata::len(&t).map_err(storage)? as usize;
            let mut excess = total.saturating_sub(MAX_FEEDBACK);
            let mut v = Vec::new();
            // Oldest first (keys are increasing sequence numbers); stop at the first one
            // that is neither too old nor over the cap.
            for row in t.iter().map_err(storage)? {
                let (k, val) = row.map_err(storage)?;
                let recorded = serde_json::from_slice::<StoredFeedback>(val.value())
                    .map_or(0, |f| f.recorded_ms);
                if excess == 0 && now_ms - recorded < FEEDBACK_TTL_MS {
                    break;
                }
                excess = excess.saturating_sub(1);
                v.push(k.value());
            }
            v
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(FEEDBACK).map_err(storage)?;
            for k in &doomed {
                t.remove(*k).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        if let Ok(mut locks) = self.locks.lock() {
            for (_, seqs) in locks.values_mut() {
                seqs.retain(|s| !doomed.contains(s));
            }
        }
        Ok(doomed.len())
    }

    /// Removes a device's queue; returns how many messages were dropped.
    pub fn purge(&self, device: &str, generation: &str) -> Result<usize, C2dError> {
        let all = self.device_messages(device)?;
        for m in &all {
            self.finish(m, "Purged", generation)?;
        }
        Ok(all.len())
    }

    /// Feedback records not locked by an earlier reader, under a new lock token.
    pub fn feedback(&self, max: usize) -> Result<Option<(String, Vec<Feedback>)>, C2dError> {
        let mut locks = self.locks.lock().map_err(storage)?;
        locks.retain(|_, (t, _)| t.elapsed() < LOCK_FOR);
        let locked: std::collections::HashSet<u64> = locks
            .values()
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(FEEDBACK).map_err(storage)?;
        let mut seqs = Vec::new();
        let mut out = Vec::new();
        for row in t.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            if locked.contains(&k.value()) {
                continue;
            }
            seqs.push(k.value());
            let stored: StoredFeedback = serde_json::from_slice(v.value()).map_err(storage)?;
            out.push(stored.feedback);
            if out.len() >= max {
                break;
            }
        }
        if out.is_empty() {
            return Ok(None);
        }
        let token = crate::secret::random_hex(16).map_err(storage)?;
        locks.insert(token.clone(), (Instant::now(), seqs));
        Ok(Some((token, out)))
    }

    /// Deletes the feedback handed out under `token`.
    pub fn complete_feedback(&self, token: &str) -> Result<bool, C2dError> {
        let Some((_, seqs)) = self.locks.lock().map_err(storage)?.remove(token) else {
            return Ok(false);
        };
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(FEEDBACK).map_err(storage)?;
            for s in seqs {
                t.remove(s).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(true)
    }

    /// Feedback owed to other processes, oldest first, by sequence number.
    pub fn owed_feedback(&self, max: usize) -> Result<Vec<(u64, OwedFeedback)>, C2dError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(FEEDBACK_OUT).map_err(storage)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(storage)?.take(max) {
            let (k, v) = row.map_err(storage)?;
            match serde_json::from_slice(v.value()) {
                Ok(owed) => out.push((k.value(), owed)),
                Err(e) => {
                    tracing::error!(seq = k.value(), error = %e, "unreadable feedback owed to another process; left in place")
                }
            }
        }
        Ok(out)
    }

    /// The owed feedback `seq` is in this process's log, on its way.
    pub fn feedback_sent(&self, seq: u64) -> Result<(), C2dError> {
        let txn = self.db.begin_write().map_err(storage)?;
        txn.open_table(FEEDBACK_OUT)
            .map_err(storage)?
            .remove(seq)
            .map_err(storage)?;
        txn.commit().map_err(storage)
    }

    /// Records feedback another process owed this one (for a message sent through here
    /// and completed there).
    pub fn record_feedback(&self, feedback: Feedback) -> Result<(), C2dError> {
        let f = StoredFeedback {
            recorded_ms: weir_core::time::now_ms(),
            feedback,
        };
        let v = serde_json::to_vec(&f).map_err(storage)?;
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let txn = self.db.begin_write().map_err(storage)?;
        txn.open_table(FEEDBACK)
            .map_err(storage)?
            .insert(seq, v.as_slice())
            .map_err(storage)?;
        txn.commit().map_err(storage)
    }

    /// Releases the feedback handed out under `token` so it is read again.
    pub fn abandon_feedback(&self, token: &str) -> bool {
        self.locks
            .lock()
            .is_ok_and(|mut l| l.remove(token).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(device: &str, id: &str, expiry_ms: i64, ack: AckMode) -> C2dMessage {
        C2dMessage {
            seq: 0,
            device_id: device.into(),
            message_id: id.into(),
            correlation_id: None,
            content_type: None,
            content_encoding: None,
            properties: vec![],
            body: C2dMessage::encode_body(b"hi"),
            enqueued_ms: 1000,
            expiry_ms,
            ack,
            deliveries: 0,
            origin: None,
        }
    }

    #[test]
    fn queues_in_order_limits_expires_and_gives_feedback() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = C2dStore::open(&dir.path().join("c2d.redb")).expect("open");
        let a = s.enqueue(msg("d1", "a", 5_000, AckMode::Full)).expect("a");
        let b = s
            .enqueue(msg("d1", "b", 50_000, AckMode::Positive))
            .expect("b");
        s.enqueue(msg("d10", "other", 50_000, AckMode::None))
            .expect("other device");
        assert!(b.seq > a.seq);
        assert_eq!(s.pending("d1"), 2);
        // At t=10s "a" has expired: it is skipped, with feedback.
        let next = s
            .next_for("d1", 10_000, "g")
            .expect("next")
            .expect("b is next");
        assert_eq!(next.message_id, "b");
        assert!(s.complete("d1", next.seq, "g").expect("complete"));
        assert_eq!(s.pending("d1"), 0);
        let (token, fb) = s.feedback(10).expect("fb").expect("some");
        let codes: Vec<(&str, &str)> = fb
            .iter()
            .map(|f| (f.original_message_id.as_str(), f.status_code.as_str()))
            .collect();
        assert_eq!(codes, vec![("a", "Expired"), ("b", "Success")]);
        assert!(
            s.feedback(10).expect("fb").is_none(),
            "locked feedback is not handed out twice"
        );
        assert!(s.complete_feedback(&token).expect("complete"));
        for i in 0..MAX_PENDING {
            s.enqueue(msg("full", &i.to_string(), 50_000, AckMode::None))
                .expect("room");
        }
        assert!(matches!(
            s.enqueue(msg("full", "x", 50_000, AckMode::None)),
            Err(C2dError::QueueFull(_))
        ));
        assert_eq!(s.purge("full", "g").expect("purge"), MAX_PENDING);
    }

    #[test]
    fn concurrent_senders_cannot_pass_the_queue_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = std::sync::Arc::new(C2dStore::open(&dir.path().join("c2d.redb")).expect("open"));
        let accepted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let s = std::sync::Arc::clone(&s);
                    scope.spawn(move || {
                        (0..20)
                            .filter(|i| {
                                s.enqueue(msg("busy", &format!("{t}-{i}"), i64::MAX, AckMode::None))
                                    .is_ok()
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        assert_eq!(accepted, MAX_PENDING);
        assert_eq!(s.pending("busy"), MAX_PENDING);
    }

    #[test]
    fn uncollected_feedback_expires_after_an_hour() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = C2dStore::open(&dir.path().join("c2d.redb")).expect("open");
        let m = s
            .enqueue(msg("d", "a", i64::MAX, AckMode::Full))
            .expect("a");
        s.complete("d", m.seq, "g").expect("complete");
        let now = weir_core::time::now_ms();
        assert_eq!(s.expire_feedback(now).expect("expire"), 0);
        assert!(s.feedback(10).expect("fb").is_some());
        assert_eq!(
            s.expire_feedback(now + FEEDBACK_TTL_MS + 1)
                .expect("expire"),
            1
        );
        assert!(s.feedback(10).expect("fb").is_none());
    }

    #[test]
    fn a_queue_moves_to_another_store_once_and_leaves_only_what_was_taken() {
        let dirs = [
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        ];
        let from = C2dStore::open(&dirs[0].path().join("c.redb")).expect("open");
        let to = C2dStore::open(&dirs[1].path().join("c.redb")).expect("open");
        assert!(from.nothing_waits() && to.nothing_waits());
        for id in ["a", "b"] {
            from.enqueue(msg("d1", id, i64::MAX, AckMode::Full))
                .expect("enqueue");
        }
        let queued = from.queued("d1").expect("queued");
        let taken = to.take_in(queued.clone()).expect("take in");
        assert_eq!(taken.len(), 2);
        // The same move seen again queues nothing twice.
        assert_eq!(to.take_in(queued).expect("again").len(), 2);
        assert_eq!(to.pending("d1"), 2);
        // A message queued at the source meanwhile is not dropped with the moved ones.
        from.enqueue(msg("d1", "c", i64::MAX, AckMode::Full))
            .expect("enqueue");
        let wrong_id = vec![(taken[0].0, "other".to_owned())];
        assert_eq!(from.moved_out("d1", &wrong_id).expect("moved"), 0);
        assert_eq!(from.moved_out("d1", &taken).expect("moved"), 2);
        let left: Vec<String> = from
            .queued("d1")
            .expect("queued")
            .into_iter()
            .map(|m| m.message_id)
            .collect();
        assert_eq!(left, vec!["c".to_owned()]);
        assert!(!from.nothing_waits(), "one left at the source");
        let ids: Vec<(u64, String)> = to
            .queued("d1")
            .expect("queued")
            .into_iter()
            .map(|m| (m.seq, m.message_id))
            .collect();
        assert_eq!(to.moved_out("d1", &ids).expect("moved"), 2);
        assert!(to.nothing_waits(), "the count follows removals");
        assert!(
            from.feedback(10).expect("feedback").is_none(),
            "a move is not a delivery"
        );
    }

    #[test]
    fn feedback_for_a_message_sent_through_another_process_is_owed_to_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = C2dStore::open(&dir.path().join("c2d.redb")).expect("open");
        let mut moved = msg("d1", "from-p0", i64::MAX, AckMode::Full);
        moved.origin = Some(0);
        let taken = s.take_in(vec![moved]).expect("take in");
        assert_eq!(taken.len(), 1);
        let queued = s.queued("d1").expect("queued");
        assert!(s.complete("d1", queued[0].seq, "gen").expect("complete"));
        assert!(
            s.feedback(10).expect("feedback").is_none(),
            "not this process's to hand out"
        );
        let owed = s.owed_feedback(10).expect("owed");
        assert_eq!(owed.len(), 1);
        assert_eq!(owed[0].1.to, 0);
        assert_eq!(owed[0].1.feedback.original_message_id, "from-p0");
        assert_eq!(owed[0].1.feedback.status_code, "Success");
        s.feedback_sent(owed[0].0).expect("sent");
        assert!(s.owed_feedback(10).expect("owed").is_empty());

        // On the process it was sent through, it is feedback like any other.
        s.record_feedback(owed[0].1.feedback.clone())
            .expect("record");
        let (_, got) = s.feedback(10).expect("feedback").expect("some");
        assert_eq!(got, vec![owed[0].1.feedback.clone()]);
    }
}
