//! Logging setup and rate limiting for per-packet warnings.
//!
//! Guests control how often a bad packet arrives, so a per-packet warning must never flood the
//! log: [`RateLimiter`] lets through a burst and then one line per interval, and says how many
//! lines it held back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber. `level` (from `--log-level` or the config file)
/// wins over `RUST_LOG`; with neither, the level is `info`.
pub fn init(level: Option<&str>) {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // A second init (tests start many daemons in one process) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Lets `burst` events through per `interval`, and counts the rest.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    burst: u64,
    origin: Instant,
    window_start_ms: AtomicU64,
    in_window: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimiter {
    /// A limiter that passes `burst` events per `interval`.
    pub fn new(burst: u64, interval: Duration) -> Self {
        RateLimiter {
            interval,
            burst,
            origin: Instant::now(),
            window_start_ms: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// The default for per-packet warnings: 10 lines per 5 seconds.
    pub fn per_packet() -> Self {
        Self::new(10, Duration::from_secs(5))
    }

    /// Whether to log this event. When it returns `Some(n)`, log, and mention that `n` earlier
    /// events were suppressed.
    pub fn check(&self) -> Option<u64> {
        let now_ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let interval_ms = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        if now_ms.saturating_sub(start) >= interval_ms
            && self
                .window_start_ms
                .compare_exchange(start, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < self.burst {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Logs a warning through a [`RateLimiter`].
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.check() {
            if suppressed > 0 {
                tracing::warn!(suppressed, $($arg)+);
            } else {
                tracing::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_silence_then_report() {
        let rl = RateLimiter::new(3, Duration::from_millis(50));
        let passed = (0..10).filter(|_| rl.check().is_some()).count();
        assert_eq!(passed, 3);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            rl.check(),
            Some(7),
            "the next window reports what was held back"
        );
    }
}
