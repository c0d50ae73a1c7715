//! The wall clock the slot grid is read from.
//!
//! Production reads the system clock at every slot, so an NTP correction moves the next wake-up onto
//! the true grid. Tests run under tokio's paused time, where the system clock does not move; there
//! the wall clock is an anchor plus tokio's elapsed time, so the grid, sleeps and timeouts all
//! advance together and deterministically, and a test can step the wall clock as NTP or a VM resume
//! steps the system's.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ticks::Timedate;

/// Where "now" comes from.
#[derive(Debug, Clone)]
pub enum WallClock {
    System,
    /// `start` at the tokio instant `at`, advancing with tokio's (possibly paused) clock, plus
    /// the steps taken with [`WallClock::step`] (milliseconds, either way).
    Anchored {
        start: Timedate,
        at: tokio::time::Instant,
        stepped: Arc<AtomicI64>,
    },
}

impl WallClock {
    /// A clock that reads `start` now and follows tokio's time from here.
    pub fn anchored(start: Timedate) -> WallClock {
        WallClock::Anchored {
            start,
            at: tokio::time::Instant::now(),
            stepped: Arc::default(),
        }
    }

    pub fn now(&self) -> Timedate {
        match self {
            WallClock::System => Timedate::now(),
            WallClock::Anchored { start, at, stepped } => {
                let t = start.saturating_add(at.elapsed());
                let step = stepped.load(Ordering::SeqCst);
                let by = Duration::from_millis(step.unsigned_abs());
                if step >= 0 {
                    t.saturating_add(by)
                } else {
                    t.saturating_sub(by)
                }
            }
        }
    }

    /// Tests: steps an anchored clock by `millis` (negative: backwards), as an NTP step or a VM
    /// resume steps the system clock while monotonic time runs on. The system clock is not ours
    /// to step: there it does nothing.
    pub fn step(&self, millis: i64) {
        if let WallClock::Anchored { stepped, .. } = self {
            stepped.fetch_add(millis, Ordering::SeqCst);
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
