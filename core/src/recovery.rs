//! How one worker's endpoint gets through a failure: retries with backoff, a catch-up
//! from the ingest log, and, for an endpoint with a dead-letter endpoint, a hand-off of
//! what waited longer than it may.
//!
//! Every sink kind keeps one [`Recovery`] per endpoint and asks it what to do next; the
//! sink only knows how to write and where its commit points are. The states:
//!
//! ```text
//!   Live --write fails--> Failed --backoff over--> Resuming --replay reached the input--> Live
//!                           ^                          |
//!                           +-------write fails--------+
//! ```
//!
//! While `Failed`, an endpoint with `dead_letter` and `max_retry_secs` asks for
//! dead-letter passes: every delivery it has not committed whose event was enqueued more
//! than `max_retry_secs` ago is handed to the dead-letter endpoint (through the ingest log)
//! and then counts as committed. Without a dead-letter endpoint the log keeps everything.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::endpoint::{DeadLetterPolicy, Delivery};
use crate::feed::{device_hash, partition_of};
use crate::health::{EndpointState, WorkerHealth};
use crate::sink::{DeadLetterPass, ReplayRequest};
use crate::time::now_ms;

/// The first retry after a failure waits this long; each further failure doubles it.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// After a dead-letter pass found nothing old enough, the next one waits this long.
const PASS_IDLE: Duration = Duration::from_millis(500);

/// The wait before retry number `attempts` (1, 2, 4 … 30 s).
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Writing live deliveries.
    Live,
    /// Writing failed; deliveries are dropped (they stay in the log) until `retry_at`.
    Failed { attempts: u32, retry_at: Instant },
    /// Rewriting what was dropped, from the log; `replayed` is how far it has come. Until
    /// the target took something (`proven`) a retry has not shown that the problem is gone.
    Resuming {
        attempts: u32,
        replayed: u64,
        proven: bool,
    },
}

/// What the endpoint needs from the engine next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Nothing,
    /// The replay caught up: the endpoint is live again (report its health).
    Caught,
    /// Replay these offsets, to retry or to hand them to the dead-letter endpoint.
    Request(ReplayRequest),
}

#[derive(Debug, Clone)]
pub struct Recovery {
    phase: Phase,
    /// When the current outage began (ms since the epoch).
    since_ms: Option<i64>,
    /// No dead-letter pass before this: the last one found nothing old enough.
    pass_after: Option<Instant>,
    last_error: Option<(String, i64)>,
    failures: u64,
    dead_lettered: u64,
    /// Live again after a replay, but the target has not taken anything yet: the attempts
    /// so far, which a new failure continues from (so the backoff keeps growing and the
    /// outage clock keeps running against a target that accepts and then fails).
    probation: u32,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            phase: Phase::Live,
            since_ms: None,
            pass_after: None,
            last_error: None,
            failures: 0,
            dead_lettered: 0,
            probation: 0,
        }
    }
}

impl Recovery {
    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    /// Writing failed: deliveries wait in the log until a retry after a backoff.
    pub fn fail(&mut self, error: String) {
        let attempts = self.attempts() + 1;
        self.phase = Phase::Failed {
            attempts,
            retry_at: Instant::now() + backoff(attempts),
        };
        self.since_ms.get_or_insert_with(now_ms);
        self.failures += 1;
        self.last_error = Some((error, now_ms()));
    }

    /// The target took something: the problem is gone. True when this changes the health
    /// (from unhealthy to degraded while resuming, from degraded to healthy once live).
    pub fn prove(&mut self) -> bool {
        match &mut self.phase {
            Phase::Resuming { proven, .. } if !*proven => {
                *proven = true;
                true
            }
            Phase::Live if self.probation > 0 => {
                self.probation = 0;
                self.since_ms = None;
                true
            }
            _ => false,
        }
    }

    /// Retry now, whatever the backoff (a clean stop gives failed endpoints a last chance).
    pub fn retry_now(&mut self) {
        if let Phase::Failed { retry_at, .. } = &mut self.phase {
            *retry_at = Instant::now();
        }
    }

    /// Every delivery below the returned offset has been written, given that the input is
    /// complete below `frontier`: what a commit may claim. `None` while failed.
    pub fn complete_below(&self, frontier: u64) -> Option<u64> {
        match self.phase {
            Phase::Live => Some(frontier),
            Phase::Resuming { replayed, .. } => Some(replayed),
            Phase::Failed { .. } => None,
        }
    }

    /// The attempts made so far in the current outage.
    pub fn attempts(&self) -> u32 {
        match self.phase {
            Phase::Live => self.probation,
            Phase::Failed { attempts, .. } | Phase::Resuming { attempts, .. } => attempts,
        }
    }

    pub fn state(&self) -> EndpointState {
        match self.phase {
            Phase::Live if self.probation == 0 => EndpointState::Healthy,
            Phase::Live | Phase::Resuming { proven: true, .. } => EndpointState::Degraded,
            Phase::Resuming { .. } | Phase::Failed { .. } => EndpointState::Unhealthy,
        }
    }

    /// What this worker reports about the endpoint, which has committed up to `committed`.
    pub fn health(&self, committed: u64) -> WorkerHealth {
        WorkerHealth {
            state: self.state(),
            committed,
            last_error: self.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_ms: self.last_error.as_ref().map(|(_, t)| *t),
            failures: self.failures,
            dead_lettered: self.dead_lettered,
        }
    }

    /// Decides the next step of endpoint `name`, whose commit points start at
    /// `committed_min`, when every delivery below `watermark` has arrived.
    pub fn next(
        &mut self,
        name: &str,
        committed_min: u64,
        watermark: u64,
        policy: Option<&DeadLetterPolicy>,
        now: Instant,
    ) -> Next {
        let request = |from: u64, dead_letter| {
            Next::Request(ReplayRequest {
                endpoint: Arc::from(name),
                from,
                to: watermark.max(from),
                dead_letter,
            })
        };
        match self.phase {
            Phase::Live => Next::Nothing,
            Phase::Resuming { replayed, .. } if replayed >= watermark => {
                self.go_live();
                Next::Caught
            }
            Phase::Resuming { replayed, .. } => request(replayed, None),
            Phase::Failed { attempts, retry_at } => {
                if let Some(pass) = self.pass_due(policy, committed_min, watermark, now) {
                    return request(committed_min, Some(pass));
                }
                if retry_at > now {
                    return Next::Nothing;
                }
                // Partitions may be at different offsets (after a change of worker count):
                // replay from the lowest; the rest is skipped as committed.
                self.phase = Phase::Resuming {
                    attempts,
                    replayed: committed_min,
                    proven: false,
                };
                request(committed_min, None)
            }
        }
    }

    fn pass_due(
        &self,
        policy: Option<&DeadLetterPolicy>,
        committed_min: u64,
        watermark: u64,
        now: Instant,
    ) -> Option<DeadLetterPass> {
        let policy = policy?;
        let before_ms = now_ms() - i64::try_from(policy.max_retry.as_millis()).ok()?;
        let outage_long_enough = self.since_ms.is_some_and(|s| s <= before_ms);
        let idle = self.pass_after.is_some_and(|t| t > now);
        (outage_long_enough && !idle && committed_min < watermark).then(|| DeadLetterPass {
            target: Arc::clone(&policy.endpoint),
            before_ms,
            reason: self
                .last_error
                .as_ref()
                .map_or_else(|| "endpoint failed".to_owned(), |(e, _)| e.clone()),
        })
    }

    /// A replay chunk for a retry reached `through`. True when that made the endpoint live.
    pub fn replayed(&mut self, through: u64, watermark: u64) -> bool {
        let Phase::Resuming { replayed, .. } = &mut self.phase else {
            return false;
        };
        if through < *replayed {
            return false;
        }
        *replayed = through;
        // Nothing can arrive between this chunk and here: if it reached everything seen,
        // the endpoint is live for what comes next. (Checking only before the next chunk
        // would never succeed under steady load.)
        if through >= watermark {
            self.go_live();
            return true;
        }
        false
    }

    /// A dead-letter pass handed `count` deliveries to the dead-letter endpoint; `moved`
    /// says whether it got anywhere (when not, the next pass waits a little).
    pub fn dead_lettered(&mut self, count: u64, moved: bool) {
        self.dead_lettered += count;
        self.pass_after = (!moved).then(|| Instant::now() + PASS_IDLE);
    }

    /// How far the replay of a retry has come; `None` when not resuming (a chunk that
    /// arrives then, or one below this, is stale).
    pub fn replayed_to(&self) -> Option<u64> {
        match self.phase {
            Phase::Resuming { replayed, .. } => Some(replayed),
            _ => None,
        }
    }

    fn go_live(&mut self) {
        let (attempts, proven) = match self.phase {
            Phase::Resuming {
                attempts, proven, ..
            } => (attempts, proven),
            _ => (0, true),
        };
        self.phase = Phase::Live;
        self.pass_after = None;
        self.probation = if proven { 0 } else { attempts };
        if proven {
            self.since_ms = None;
        }
    }
}

/// Keeps the deliveries of `batch` at or above their partition's commit point in
/// `committed` (indexed by partition): what an endpoint has not delivered.
pub fn retain_uncommitted(batch: &mut Vec<Delivery>, committed: &[u64]) {
    batch.retain(|d| {
        let p = partition_of(device_hash(d.event.device_id.as_str()));
        committed
            .get(usize::from(p))
            .is_none_or(|&c| d.event.offset >= c)
    });
}

/// One endpoint of a sink, as [`first_request`] sees it.
pub struct Candidate<'a> {
    pub name: &'a str,
    pub recovery: &'a mut Recovery,
    /// The lowest commit point over the worker's partitions.
    pub committed_min: u64,
    pub policy: Option<&'a DeadLetterPolicy>,
}

/// Asks a sink's endpoints, in turn, for their next step: the first request, and the names
/// of the endpoints whose phase changed on the way (to report their health).
pub fn first_request<'a>(
    endpoints: impl IntoIterator<Item = Candidate<'a>>,
    watermark: u64,
) -> (Option<ReplayRequest>, Vec<String>) {
    let now = Instant::now();
    let mut changed = Vec::new();
    for c in endpoints {
        let was = c.recovery.phase();
        match c
            .recovery
            .next(c.name, c.committed_min, watermark, c.policy, now)
        {
            Next::Nothing => {}
            Next::Caught => changed.push(c.name.to_owned()),
            Next::Request(r) => {
                if c.recovery.phase() != was {
                    changed.push(c.name.to_owned());
                }
                return (Some(r), changed);
            }
        }
    }
    (None, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let secs: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn a_failure_waits_retries_and_goes_live_when_the_replay_catches_up() {
        let mut r = Recovery::default();
        let now = Instant::now();
        assert_eq!(r.next("a", 10, 20, None, now), Next::Nothing);
        r.fail("down".into());
        assert_eq!(r.state(), EndpointState::Unhealthy);
        assert_eq!(r.complete_below(20), None);
        assert_eq!(r.next("a", 10, 20, None, now), Next::Nothing, "backoff");
        let later = now + Duration::from_secs(2);
        let Next::Request(req) = r.next("a", 10, 20, None, later) else {
            panic!("a retry is due");
        };
        assert_eq!((req.from, req.to, req.dead_letter), (10, 20, None));
        assert!(r.prove());
        assert_eq!(r.state(), EndpointState::Degraded);
        assert!(!r.replayed(15, 20));
        assert_eq!(r.complete_below(99), Some(15));
        assert!(r.replayed(25, 25));
        assert!(r.is_live());
        assert_eq!(r.state(), EndpointState::Healthy);
        assert_eq!(r.health(25).failures, 1);
    }

    #[test]
    fn a_target_that_takes_a_replay_and_then_fails_keeps_backing_off() {
        let mut r = Recovery::default();
        let mut now = Instant::now();
        for attempts in 1..=4 {
            r.fail("refused later".into());
            assert_eq!(r.attempts(), attempts);
            now += backoff(attempts) + Duration::from_millis(10);
            assert!(matches!(r.next("a", 0, 5, None, now), Next::Request(_)));
            assert!(
                r.replayed(5, 5),
                "the replay was handed over, not yet confirmed"
            );
            assert_eq!(r.state(), EndpointState::Degraded);
        }
        assert_eq!(backoff(r.attempts() + 1), Duration::from_secs(16));
        assert!(r.prove(), "confirmed at last");
        assert_eq!((r.state(), r.attempts()), (EndpointState::Healthy, 0));
    }

    #[test]
    fn a_long_outage_asks_for_dead_letter_passes_until_nothing_is_old_enough() {
        let policy = DeadLetterPolicy {
            endpoint: Arc::from("dlq"),
            max_retry: Duration::ZERO,
        };
        let mut r = Recovery::default();
        r.fail("HTTP 500".into());
        let now = Instant::now();
        let Next::Request(req) = r.next("a", 10, 20, Some(&policy), now) else {
            panic!("a pass is due");
        };
        let pass = req.dead_letter.expect("a dead-letter pass");
        assert_eq!((&*pass.target, pass.reason.as_str()), ("dlq", "HTTP 500"));
        assert_eq!((req.from, req.to), (10, 20));
        r.dead_lettered(4, false);
        assert_eq!(r.health(20).dead_lettered, 4);
        assert_eq!(
            r.next("a", 20, 20, Some(&policy), now),
            Next::Nothing,
            "nothing left, and the retry waits for its backoff"
        );
        let Next::Request(req) = r.next("a", 14, 20, Some(&policy), now + 2 * PASS_IDLE) else {
            panic!("a pass is due again");
        };
        assert!(req.dead_letter.is_some());
    }
}
