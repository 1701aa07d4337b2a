//! Rate limits for log lines that outsiders can trigger (refused connections, protocol
//! violations): a flood of bad clients must not become a flood of log lines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    state: Mutex<Window>,
}

impl LogLimiter {
    /// At most `per_window` lines per `window`.
    pub fn new(per_window: u32, window: Duration) -> LogLimiter {
        LogLimiter {
            per_window,
            window,
            state: Mutex::new(Window {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when this line may be logged, `n` being how many were dropped since the
    /// last one that was; `None` when it must be dropped.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().ok()?;
        if s.started.elapsed() >= self.window {
            s.started = Instant::now();
            s.logged = 0;
        }
        if s.logged >= self.per_window {
            s.suppressed += 1;
            return None;
        }
        s.logged += 1;
        Some(std::mem::take(&mut s.suppressed))
    }
}

impl Default for LogLimiter {
    /// Ten lines per ten seconds.
    fn default() -> Self {
        LogLimiter::new(10, Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_few_through_per_window_and_counts_the_rest() {
        let l = LogLimiter::new(2, Duration::from_millis(50));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            l.allow(),
            Some(2),
            "the next line says how many were dropped"
        );
    }
}
