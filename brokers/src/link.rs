//! The connection of one endpoint in one worker to its broker: a task on the hub's tokio
//! runtime that publishes what the sink hands it and reports, in order, what the broker
//! has confirmed.
//!
//! The sink and the task share [`Progress`]: the offsets handed over and not yet confirmed,
//! oldest first, and the error that ended the task. A task confirms in the order it was
//! handed messages, so the oldest unconfirmed offset is what the endpoint may commit below.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

/// Unconfirmed messages per endpoint and worker.
pub const MAX_IN_FLIGHT: usize = 4096;

/// One message for the broker, with the log offset of the event it carries.
pub struct Outgoing<M> {
    pub offset: u64,
    pub message: M,
}

#[derive(Default)]
struct State {
    unconfirmed: VecDeque<u64>,
    confirmed: u64,
    error: Option<String>,
}

/// What the sink and the task both see.
#[derive(Default)]
pub struct Progress(Mutex<State>);

impl Progress {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        self.0.lock().ok().map(|mut s| f(&mut s))
    }

    /// The oldest offset not yet confirmed.
    pub fn oldest_unconfirmed(&self) -> Option<u64> {
        self.with(|s| s.unconfirmed.front().copied()).flatten()
    }

    pub fn unconfirmed(&self) -> usize {
        self.with(|s| s.unconfirmed.len()).unwrap_or(0)
    }

    /// Messages the broker has confirmed so far.
    pub fn confirmed(&self) -> u64 {
        self.with(|s| s.confirmed).unwrap_or(0)
    }

    /// Why the task ended, if it did.
    pub fn error(&self) -> Option<String> {
        self.with(|s| s.error.clone()).flatten()
    }

    /// The broker confirmed the oldest message handed over (the task calls this in order).
    pub fn confirm_oldest(&self) {
        self.with(|s| {
            s.unconfirmed.pop_front();
            s.confirmed += 1;
        });
    }

    pub(crate) fn fail(&self, e: String) {
        self.with(|s| s.error.get_or_insert(e).clone());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Broker(String),
    #[error("the broker confirmed nothing for {0:?}")]
    Stalled(Duration),
}

/// The sink's handle on the task; dropping it ends the task.
pub struct Link<M> {
    tx: mpsc::Sender<Outgoing<M>>,
    pub progress: Arc<Progress>,
    /// Finished once the task's error, if any, is in `progress`.
    task: tokio::task::JoinHandle<()>,
}

impl<M: Send + 'static> Link<M> {
    /// Starts `run` on `rt`; whatever error ends it is kept in the progress for the sink.
    pub fn spawn<F, Fut>(rt: &tokio::runtime::Handle, endpoint: String, run: F) -> Link<M>
    where
        F: FnOnce(mpsc::Receiver<Outgoing<M>>, Arc<Progress>) -> Fut,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let progress = Arc::new(Progress::default());
        let task = run(rx, Arc::clone(&progress));
        let p = Arc::clone(&progress);
        let task = rt.spawn(async move {
            if let Err(e) = task.await {
                tracing::debug!(endpoint, error = %e, "broker link ended");
                p.fail(e);
            }
        });
        Link { tx, progress, task }
    }

    /// Why the task ended. Its channel closes as its future finishes, a moment before the
    /// error is recorded, so a sender that saw the channel closed waits (at most a second)
    /// for the task to finish rather than report a bare "closed".
    fn ended_error(&self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !self.task.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.progress
            .error()
            .unwrap_or_else(|| "the broker connection closed".into())
    }

    /// Hands `m` to the task, waiting (this is the worker thread) while it has
    /// [`MAX_IN_FLIGHT`] messages unconfirmed, at most `patience`.
    pub fn send(&self, m: Outgoing<M>, patience: Duration) -> Result<(), LinkError> {
        let offset = m.offset;
        self.progress.with(|s| s.unconfirmed.push_back(offset));
        let mut m = m;
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(e) = self.progress.error() {
                return Err(LinkError::Broker(e));
            }
            match self.tx.try_send(m) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(LinkError::Broker(self.ended_error()));
                }
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(LinkError::Stalled(patience));
                    }
                    m = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Waits up to `limit` until everything handed over is confirmed (or the link failed).
    pub fn drain(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.progress.unconfirmed() > 0
            && self.progress.error().is_none()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_that_sees_the_channel_closed_reports_why_the_task_ended() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("runtime");
        // The receiver is gone well before the error is recorded: the widest form of the
        // race between a closing channel and the task's result.
        let link: Link<u32> = Link::spawn(rt.handle(), "e".into(), |rx, _| async move {
            drop(rx);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err("HTTP 500 from the receiver".to_string())
        });
        std::thread::sleep(Duration::from_millis(5));
        let e = link
            .send(
                Outgoing {
                    offset: 1,
                    message: 7,
                },
                Duration::from_secs(1),
            )
            .expect_err("the task has ended");
        assert_eq!(e.to_string(), "HTTP 500 from the receiver");
    }
}
