//! [`FeedInfo`]: how the publisher writing a store runs, kept in the store so that a separate
//! history server reports the feed as it is.

use ticks::Interval;

/// How the feed writing a store runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedInfo {
    pub interval: Interval,
    /// Prices come from the demo random walk.
    pub demo: bool,
}
