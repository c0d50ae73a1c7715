//! The wall clock the slot grid is read from.
//!
//! Production reads the system clock at every slot, so an NTP correction moves the next wake-up onto
//! the true grid. Tests run under tokio's paused time, where the system clock does not move; there
//! the wall clock is an anchor plus tokio's elapsed time, so the grid, sleeps and timeouts all
//! advance together and deterministically.

use std::time::Duration;

use ticks::Timedate;

/// Where "now" comes from.
#[derive(Debug, Clone)]
pub enum WallClock {
    System,
    /// `start` at the tokio instant `at`, advancing with tokio's (possibly paused) clock.
    Anchored {
        start: Timedate,
        at: tokio::time::Instant,
    },
}

impl WallClock {
    /// A clock that reads `start` now and follows tokio's time from here.
    pub fn anchored(start: Timedate) -> WallClock {
        WallClock::Anchored {
            start,
            at: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Timedate {
        match self {
            WallClock::System => Timedate::now(),
            WallClock::Anchored { start, at } => start.saturating_add(at.elapsed()),
        }
    }

    /// Sleeps until the wall clock reads `t` (returns at once if it already does).
    pub async fn sleep_until(&self, t: Timedate) {
        let wait = t.duration_since(self.now());
        if wait > Duration::ZERO {
            tokio::time::sleep(wait).await;
        }
    }

    /// The tokio instant at which the wall clock will read `t` (now, if it is past).
    pub fn instant_at(&self, t: Timedate) -> tokio::time::Instant {
        tokio::time::Instant::now() + t.duration_since(self.now())
    }
}
