//! How a cluster node's history stays complete: it catches up from a peer's history, then records
//! everything the cluster publishes.
//!
//! Only the active node samples and stores ticks itself. Every node (the active one too, where it
//! changes nothing) runs a recorder: first a catch-up that copies, page by page, what a peer's
//! history API holds from this node's newest tick on ([`HistoryStore::fill`], so the stretch ends
//! up exactly the peer's, gaps included), then a `pricesub` subscription to its own broker whose
//! every tick and gap goes into the store. The subscription is the SDK's proven hand-off (subscribe,
//! buffer, backfill, drain), with peers' history APIs as its history, so what the broker delivered
//! while the recorder was away, or dropped, is fetched and recorded too. A node is caught up once
//! that subscription is live; only then may it become active.

use std::time::Duration;

use history_store::{HistoryStore, StoreError, Stretch};
use pricesub::{FeedEvent, HistoryClient, HistoryError, SubscriberConfig};
use ticks::{BrokerUrl, Currency, Timedate};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Ticks per page of the catch-up.
const CATCH_UP_PAGE: usize = 10_000;
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Why a catch-up stopped.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("no peer's history answered")]
    History(#[from] HistoryError),
    #[error("cannot write what a peer holds")]
    Store(#[from] StoreError),
}

/// Copies what `peers` hold from this store's newest tick of each currency on (that tick included:
/// a node killed between storing a tick and publishing it holds one the feed never published, and
/// the peer's answer replaces it). Returns how many ticks were new here.
pub async fn catch_up(store: &HistoryStore, peers: &HistoryClient) -> Result<usize, CatchUpError> {
    let mut new = 0;
    for currency in Currency::ALL {
        let mut since = store
            .latest(currency)
            .await?
            .map_or(Timedate::EPOCH, |t| t.timedate);
        loop {
            let mut page = peers.page(&[currency], since, CATCH_UP_PAGE).await?;
            let ticks = page.ticks.remove(&currency).unwrap_or_default();
            let cut = page.next_cursor.is_some();
            // A page the limit cut ends after its last tick; the last page reaches the peer's
            // newest tick and whatever gap is still open after it.
            let until = match ticks.last() {
                Some(last) if cut => after(last.timedate),
                _ => page
                    .latest
                    .map(after)
                    .into_iter()
                    .chain(page.gaps.iter().map(|g| g.until))
                    .fold(since, Timedate::max),
            };
            let gaps = page
                .gaps
                .into_iter()
                .filter(|g| g.currency == currency)
                .collect();
            new += store
                .fill(Stretch {
                    currency,
                    from: since,
                    until,
                    ticks,
                    gaps,
                })
                .await?;
            if !cut || until <= since {
                break;
            }
            since = until;
        }
    }
    Ok(new)
}

/// The instant just after `t`: the end of a stretch that includes a tick at `t`.
fn after(t: Timedate) -> Timedate {
    t.saturating_add(Duration::from_millis(1))
}

/// Records what the cluster publishes into this node's store.
pub struct Recorder {
    pub store: HistoryStore,
    /// This node's own broker.
    pub broker: BrokerUrl,
    /// The other nodes' history APIs, by node id.
    pub peers: Vec<(u64, String)>,
    /// The election: the leader's history is asked first.
    pub leadership: std::sync::Arc<dyn crate::leadership::Leadership>,
    pub history_timeout: Duration,
    /// Set while the recorder follows live with nothing missing.
    pub caught_up: watch::Sender<bool>,
    /// Holds each message this long before it is stored: a slow recorder, for tests.
    pub delay: Duration,
    /// Sent to the broker when subscribing: an operator's broker may refuse anonymous clients on
    /// the nodes' listener (EMQX does); the embedded one needs none.
    pub credentials: Option<broker_config::Credentials>,
}

impl Recorder {
    /// Catches up, then records, until `shutdown`; starts again after any failure.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut retry = RETRY_MIN;
        let mut first = true;
        loop {
            let ended = tokio::select! {
                ended = self.once(first) => ended,
                _ = shutdown.cancelled() => return,
            };
            self.caught_up.send_replace(false);
            match ended {
                Ok(()) => retry = RETRY_MIN,
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "the recorder stopped; starting again")
                }
            }
            first = false;
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = shutdown.cancelled() => return,
            }
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    /// The peers' history URLs, the leader's first: its history is the feed's.
    async fn peer_urls(&self) -> Vec<String> {
        let leader = self.leadership.leader().await;
        let mut peers = self.peers.clone();
        peers.sort_by_key(|(id, _)| (Some(*id) != leader, *id));
        peers.into_iter().map(|(_, url)| url).collect()
    }

    /// One catch-up and one subscription, until the subscription ends.
    async fn once(&self, first: bool) -> anyhow::Result<()> {
        let urls = self.peer_urls().await;
        let peers = HistoryClient::new(&urls, self.history_timeout)?;
        let started = std::time::Instant::now();
        let started_at = Timedate::now();
        let new = catch_up(&self.store, &peers).await?;
        if first || new > 0 {
            tracing::info!(
                new,
                seconds = started.elapsed().as_secs_f64(),
                "history caught up from a peer"
            );
        }
        let mut since: Option<Timedate> = None;
        for currency in Currency::ALL {
            if let Some(t) = self.store.latest(currency).await? {
                let from = after(t.timedate);
                since = Some(since.map_or(from, |s: Timedate| s.min(from)));
            }
        }
        let mut config = SubscriberConfig::new(vec![self.broker.clone()]);
        config.history = urls;
        config.history_timeout = self.history_timeout;
        // With nothing stored yet, from when the catch-up began: the subscription then asks
        // history at once, learns the feed's interval from the answer, and so fills from history
        // whatever its broker did not deliver before the first live tick. Live only, it could not
        // tell that the first tick it saw was not the feed's first (a node that has just joined
        // the cluster, before the routes to it are in place, can miss the first tick published).
        config.since = since.or(Some(started_at));
        config.client_id = "pricefeed-recorder".into();
        config.credentials = self
            .credentials
            .as_ref()
            .map(|c| (c.username.clone(), c.password.clone()));
        let mut subscription = pricesub::subscribe(config)?;
        // Stored in order, each `delay` after it arrived.
        let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, FeedEvent)>();
        let writer = async {
            while let Some((arrived, event)) = rx.recv().await {
                tokio::time::sleep_until(arrived + self.delay).await;
                match event {
                    FeedEvent::Tick(tick) => {
                        self.store.insert_tick(tick).await?;
                    }
                    FeedEvent::Gap(gap) => {
                        self.store.record_gap(gap).await?;
                    }
                    FeedEvent::Live => {
                        self.caught_up.send_replace(true);
                    }
                    FeedEvent::Status(_) => {}
                }
            }
            anyhow::Ok(())
        };
        // Owns the sender, so the writer ends when the subscription does.
        let reader = async move {
            while let Some(event) = subscription.next().await {
                let _ = tx.send((tokio::time::Instant::now(), event?));
            }
            anyhow::Ok(())
        };
        tokio::try_join!(reader, writer)?;
        Ok(())
    }
}
