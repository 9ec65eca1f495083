//! The time the hub's edge reads. The hub's core and its rules take `now` as an argument; the
//! HTTP API, the web console and the housekeeping loop read it from the hub's [`Clock`]
//! (`HubConfig::clock`): the system's in production, a [`ManualClock`] in tests, which then move
//! time forward instead of sleeping until the seconds differ.

use std::sync::atomic::{AtomicI64, Ordering};

/// Where the hub's edge reads the time (Unix seconds).
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        unix_now()
    }
}

/// The system's time in Unix seconds (0 before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or(0)
}

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock that reads `start` until moved.
    pub fn starting_at(start: i64) -> ManualClock {
        ManualClock {
            now: AtomicI64::new(start),
        }
    }

    /// Moves the clock forward by `seconds`.
    pub fn advance(&self, seconds: i64) {
        self.now.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::starting_at(1_000);
        assert_eq!((clock.now(), clock.now()), (1_000, 1_000));
        clock.advance(5);
        assert_eq!(clock.now(), 1_005);
    }

    #[test]
    fn the_system_clock_is_after_2024() {
        assert!(SystemClock.now() > 1_700_000_000);
    }
}
