//! A rate limit for log lines that an outsider can cause over and over (a refused peer
//! connection, an unreachable owner per request): a few lines per window, then silence, and the
//! next line written says how many were left out.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Allows `per_window` log lines per window at one call site (a `static`); see [`LogLimiter::allow`].
///
/// ```
/// use infergate_metrics::LogLimiter;
/// static LIMIT: LogLimiter = LogLimiter::new(5, std::time::Duration::from_secs(1));
/// if let Some(suppressed) = LIMIT.allow() {
///     // tracing::warn!(suppressed, "peer connection refused");
///     let _ = suppressed;
/// }
/// ```
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u64,
    window_ms: u64,
    /// Start of the current window, milliseconds on the process clock.
    window_start: AtomicU64,
    /// Lines asked for in the current window.
    used: AtomicU64,
    /// Lines left out since the last one written.
    suppressed: AtomicU64,
}

/// Milliseconds since the first use of any limiter (a monotonic clock).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl LogLimiter {
    /// At most `per_window` lines per `window`.
    pub const fn new(per_window: u32, window: Duration) -> Self {
        LogLimiter {
            per_window: per_window as u64,
            window_ms: window.as_millis() as u64,
            window_start: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now: `Some(n)` with the number of lines left out since the
    /// last one written (log it with the line), or `None` (leave the line out; it is counted).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(now_ms())
    }

    fn allow_at(&self, now: u64) -> Option<u64> {
        let start = self.window_start.load(Ordering::Acquire);
        if now.saturating_sub(start) >= self.window_ms
            && self
                .window_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.used.store(0, Ordering::Release);
        }
        if self.used.fetch_add(1, Ordering::AcqRel) < self.per_window {
            Some(self.suppressed.swap(0, Ordering::AcqRel))
        } else {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gets_a_few_lines_per_window_and_the_next_line_counts_the_rest() {
        let l = LogLimiter::new(3, Duration::from_millis(1000));
        let first: Vec<Option<u64>> = (0..100).map(|_| l.allow_at(10)).collect();
        assert_eq!(&first[..3], &[Some(0), Some(0), Some(0)]);
        assert!(first[3..].iter().all(Option::is_none));
        // Still the same window.
        assert_eq!(l.allow_at(900), None);
        // The next window: the first line carries the 98 left out.
        assert_eq!(l.allow_at(1010), Some(98));
        assert_eq!(l.allow_at(1011), Some(0));
    }
}
