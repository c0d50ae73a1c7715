//! Subscribe to the BTC price feed with nothing missing and nothing twice: the `pricesub` command
//! and its Rust SDK.
//!
//! [`subscribe`] gives a stream of [`FeedEvent`]s: every tick of the chosen currencies, in
//! timedate order per currency, each exactly once, and the gaps the server recorded, live as the
//! publisher records them (`pricefeed/gaps`) or from history as they are reached. With a `since`,
//! it first replays history from that time. Across lost connections it reconnects (to the next
//! broker, with capped, jittered backoff) and backfills from the last tick it delivered, so a
//! consumer never sees the outage except as a pause.
//!
//! # Why the hand-off is gapless
//!
//! The publisher stores a tick *before* it publishes it. The client subscribes and waits for the
//! SUBACK, buffering whatever arrives, and only then asks history for everything since the last
//! tick it delivered. A tick published before the SUBACK was stored before the history request, so
//! the backfill has it; a tick published after the SUBACK is in the buffer. The union covers
//! everything, and a tick is delivered only if it is newer than the last one delivered for its
//! currency, which removes the overlap. A live tick that skips ahead of the expected next slot (a
//! publish the broker dropped) triggers a history fetch of the hole before it is delivered, unless
//! a gap already reported explains it.
//!
//! One assumption does not hold everywhere: in a cluster, a standby node's history is written by a
//! recorder that is itself a subscriber, so for a moment its history can lack a tick its broker
//! already delivered. An answer that does not reach the first tick buffered (or, for a hole, the
//! live tick after it), with no gap explaining the difference, is therefore asked again, of the
//! next history server when there are several, for a few seconds.
//!
//! # Layout
//!
//! - [`subscribe`] and [`Subscription`] (here): the SDK's entry point.
//! - `follower`: the state machine behind a subscription (connect, buffer, backfill, drain,
//!   follow, reconnect).
//! - `config`: [`SubscriberConfig`] and its defaults, [`parse_since`].
//! - `event`: [`FeedEvent`] and [`SubscribeError`], what a subscription delivers.
//! - [`history`]: the history API client (paging, failover).
//! - `main.rs`: the command: flags, printing lines, exit codes.

mod config;
mod event;
mod follower;
pub mod history;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::config::{
    BadSince, DEFAULT_HISTORY_PORT, DEFAULT_HISTORY_TIMEOUT, DEFAULT_START_WITHIN,
    SubscriberConfig, default_history_url, parse_since,
};
use crate::event::Out;
pub use crate::event::{FeedEvent, SubscribeError};
use crate::follower::Follower;
pub use crate::history::{Backfill, HistoryClient, HistoryError, HistoryPage};

/// A running subscription. Dropping it stops it.
pub struct Subscription {
    rx: mpsc::Receiver<Out>,
    /// The rest of the batch received last.
    batch: std::vec::IntoIter<FeedEvent>,
    stop: CancellationToken,
}

impl Subscription {
    /// The next event; `None` once stopped. An `Err` is final. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<FeedEvent, SubscribeError>> {
        loop {
            if let Some(event) = self.batch.next() {
                return Some(Ok(event));
            }
            match self.rx.recv().await? {
                Out::One(event) => return Some(event),
                Out::Many(events) => self.batch = events.into_iter(),
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a subscription in the background.
pub fn subscribe(config: SubscriberConfig) -> Result<Subscription, SubscribeError> {
    if config.brokers.is_empty() {
        return Err(SubscribeError::Config("no broker given".into()));
    }
    if config.currencies.is_empty() {
        return Err(SubscribeError::Config("no currency given".into()));
    }
    if config.since.is_some() && config.history.is_empty() {
        return Err(SubscribeError::Config(
            "--since needs a history server (--history URL)".into(),
        ));
    }
    let history = HistoryClient::new(&config.history, config.history_timeout)?;
    let (tx, rx) = mpsc::channel(1024);
    let stop = CancellationToken::new();
    let mut follower = Follower::new(config, history, tx);
    let token = stop.clone();
    tokio::spawn(async move {
        if let Err(e) = follower.run(token).await {
            let _ = follower.tx.send(Out::One(Err(e))).await;
        }
    });
    Ok(Subscription {
        rx,
        batch: Vec::new().into_iter(),
        stop,
    })
}
