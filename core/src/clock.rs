//! Time, as the shell reads it: one clock, injected. The core takes `now` as an argument and
//! reads no clock; the shell reads this one (the system clock in production, a manual clock
//! in tests, which advance it instead of waiting).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock time in Unix milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch (0 before 1970, which fails every check closed).
    fn now_ms(&self) -> u64;

    /// Whole seconds since the Unix epoch: the engine's `now`.
    fn now(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    /// A clock at `unix_secs`.
    pub fn at(unix_secs: u64) -> ManualClock {
        ManualClock {
            ms: AtomicU64::new(unix_secs.saturating_mul(1000)),
        }
    }

    /// A clock at the system clock's time now (then still).
    pub fn now_from_system() -> ManualClock {
        ManualClock {
            ms: AtomicU64::new(SystemClock.now_ms()),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let c = ManualClock::at(1_800_000_000);
        assert_eq!(c.now(), 1_800_000_000);
        c.advance(Duration::from_millis(1_500));
        assert_eq!((c.now(), c.now_ms()), (1_800_000_001, 1_800_000_001_500));
        let s = SystemClock;
        assert!(s.now() > 1_700_000_000);
    }
}
