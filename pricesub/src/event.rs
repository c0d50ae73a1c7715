//! What a subscription delivers ([`FeedEvent`]) and what ends it ([`SubscribeError`]).

use ticks::{Gap, Tick};

use crate::history::HistoryError;

/// What the stream delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// The next tick of its currency.
    Tick(Tick),
    /// The server recorded no ticks for this span (source outage, publisher down). A gap still
    /// growing is reported again, with the same start and a later end.
    Gap(Gap),
    /// Everything up to the moment of (re)connecting has been delivered; what follows is live.
    /// Sent once per connection.
    Live,
    /// The feed's status as the publisher last announced it on `pricefeed/status`: its JSON
    /// payload as published (`{"state":"live",…}`, see the README). The status is retained, so
    /// one arrives soon after each (re)connection, then one per change. Not ordered with the
    /// ticks: it says how the feed stands now, not at a tick's time.
    Status(String),
}

/// What the follower hands the consumer: one event, or many at once (a backfill's ticks, one
/// channel message for hundreds of them).
pub(crate) enum Out {
    One(Result<FeedEvent, SubscribeError>),
    Many(Vec<FeedEvent>),
}

/// What ends a subscription.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("{0}")]
    Config(String),
    /// The message carries the history error's own (not as a `source`, so a chain printed with
    /// its causes does not say it twice).
    #[error("cannot backfill: {0}")]
    History(HistoryError),
    #[error("cannot subscribe at {broker}: {reason}")]
    Broker { broker: String, reason: String },
}

impl From<HistoryError> for SubscribeError {
    fn from(e: HistoryError) -> Self {
        SubscribeError::History(e)
    }
}
