//! [`Relay`]: the live feed for the streaming transports (SSE here, gRPC in `grpc-api`). Each
//! stream is one [`pricesub::subscribe`] against this process's own broker and history API, so a
//! stream gets the hand-off `pricesub` proves (subscribe, buffer, backfill, drain) and no second
//! copy of it. This module only bounds what the streams take: how many are open, and how far a
//! client may fall behind once its stream is live.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt, stream};
use pricesub::{FeedEvent, SubscriberConfig, Subscription};
use ticks::{BrokerUrl, Currency, Timedate};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How often a stream with nothing to send says it is alive (SSE comment lines) unless
/// configured: under the 30–60 s idle timeouts of common proxies and load balancers.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// What the streams may take.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Streams open at once; one more is refused ([`OpenError::TooMany`]).
    pub max_streams: usize,
    /// Live events waiting for a client that reads too slowly; past it, its stream ends
    /// ([`StreamEnd::SlowConsumer`]) instead of growing without bound. (The backfill before the
    /// stream turns live is finite, and waits for the client instead.)
    pub buffer: usize,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits {
            max_streams: 1_000,
            buffer: 1_024,
        }
    }
}

/// Where a stream subscribes: this process's broker and history API (over loopback).
#[derive(Debug, Clone)]
pub struct FeedAccess {
    pub broker: BrokerUrl,
    /// The history API's base URL, `http://127.0.0.1:8080`.
    pub history: String,
    /// For a broker that does not let anonymous clients read.
    pub credentials: Option<(String, String)>,
}

impl FeedAccess {
    /// The broker at `broker`, and the history API listening at `http` (an unspecified address
    /// is reached on loopback).
    pub fn local(
        broker: BrokerUrl,
        http: std::net::SocketAddr,
        credentials: Option<(String, String)>,
    ) -> FeedAccess {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let ip = match http.ip() {
            ip if !ip.is_unspecified() => ip,
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        FeedAccess {
            broker,
            history: format!("http://{}", std::net::SocketAddr::new(ip, http.port())),
            credentials,
        }
    }
}

/// What a client asks to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    pub currencies: Vec<Currency>,
    /// Replay from this time (inclusive) first; none: live only.
    pub since: Option<Timedate>,
    /// Per currency, the last tick the client already has (a resumed stream): the stream goes on
    /// right after it, whatever `since` says for that currency.
    pub resume_after: BTreeMap<Currency, Timedate>,
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("this server serves {max} streams at once; retry later")]
    TooMany { max: usize },
    #[error("cannot follow the feed: {0}")]
    Subscribe(#[from] pricesub::SubscribeError),
}

/// Why the server ended a stream. Every case is worth reconnecting after (with the stream's
/// position, so nothing is lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server is shutting down.
    ShuttingDown,
    /// The client fell this many live events behind.
    SlowConsumer { buffer: usize },
    /// This process's own broker or history API could not be followed.
    FeedUnavailable(String),
}

impl StreamEnd {
    /// A short machine-readable name: `shutting_down`, `slow_consumer`, `feed_unavailable`.
    pub fn reason(&self) -> &'static str {
        match self {
            StreamEnd::ShuttingDown => "shutting_down",
            StreamEnd::SlowConsumer { .. } => "slow_consumer",
            StreamEnd::FeedUnavailable(_) => "feed_unavailable",
        }
    }
}

impl std::fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamEnd::ShuttingDown => {
                f.write_str("the server is shutting down; reconnect from where the stream stopped")
            }
            StreamEnd::SlowConsumer { buffer } => write!(
                f,
                "the client fell {buffer} events behind; reconnect from where the stream stopped"
            ),
            StreamEnd::FeedUnavailable(why) => write!(f, "the feed is unavailable: {why}"),
        }
    }
}

/// One open stream as its transport reads it: the events, then, if the server ended the stream,
/// why. The stream holds its place among the open streams until it is dropped.
pub type RelayStream = std::pin::Pin<Box<dyn Stream<Item = Result<FeedEvent, StreamEnd>> + Send>>;

/// The open streams and what each may take.
pub struct Relay {
    feed: FeedAccess,
    limits: StreamLimits,
    open: Arc<Semaphore>,
    shutdown: CancellationToken,
    client_id: String,
}

impl Relay {
    /// Streams on `feed` within `limits`; cancelling `shutdown` ends every open stream with
    /// [`StreamEnd::ShuttingDown`]. `client_id` prefixes the MQTT client ids of the streams.
    pub fn new(
        feed: FeedAccess,
        limits: StreamLimits,
        shutdown: CancellationToken,
        client_id: &str,
    ) -> Relay {
        Relay {
            open: Arc::new(Semaphore::new(limits.max_streams)),
            feed,
            limits,
            shutdown,
            client_id: client_id.into(),
        }
    }

    pub fn limits(&self) -> StreamLimits {
        self.limits
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.limits.max_streams - self.open.available_permits()
    }

    /// Whether the server is shutting down (a stream opened now would end at once).
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Starts a stream, or refuses it when [`StreamLimits::max_streams`] are open.
    pub fn open(&self, request: StreamRequest) -> Result<RelayStream, OpenError> {
        let permit = self
            .open
            .clone()
            .try_acquire_owned()
            .map_err(|_| OpenError::TooMany {
                max: self.limits.max_streams,
            })?;
        let mut config = SubscriberConfig::new(vec![self.feed.broker.clone()]);
        config.history = vec![self.feed.history.clone()];
        config.currencies = request.currencies;
        config.since = request.since;
        config.resume_after = request.resume_after;
        config.client_id = self.client_id.clone();
        config.credentials = self.feed.credentials.clone();
        // Our own broker and history API are up or this process is going down: no need to wait
        // for a network to come up.
        config.start_within = Duration::from_secs(10);
        let subscription = pricesub::subscribe(config)?;
        let (tx, rx) = mpsc::channel(self.limits.buffer.max(1));
        let (end_tx, end_rx) = oneshot::channel();
        tokio::spawn(
            Forward {
                tx,
                end: end_tx,
                _permit: permit,
                buffer: self.limits.buffer,
            }
            .run(subscription, self.shutdown.clone()),
        );
        // The ending comes after every event already buffered, and never needs room in the
        // buffer.
        let events = tokio_stream_from(rx).map(Ok);
        let end = stream::once(end_rx).filter_map(|end| std::future::ready(end.ok().map(Err)));
        Ok(Box::pin(events.chain(end)))
    }
}

/// The receiver as a stream (what `tokio-stream`'s wrapper does, without the dependency).
fn tokio_stream_from(rx: mpsc::Receiver<FeedEvent>) -> impl Stream<Item = FeedEvent> + Send {
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
}

/// Moves one subscription's events to its client.
struct Forward {
    tx: mpsc::Sender<FeedEvent>,
    /// Why the stream ends, when the server ends it.
    end: oneshot::Sender<StreamEnd>,
    _permit: OwnedSemaphorePermit,
    buffer: usize,
}

impl Forward {
    /// Until the client goes, the subscription fails, the client falls `buffer` live events
    /// behind, or the server shuts down. Before the subscription turns live (the backfill, which
    /// is finite) a slow client is waited for; after, it is not, so a stalled client costs a
    /// bounded buffer, not a growing one.
    async fn run(self, mut subscription: Subscription, shutdown: CancellationToken) {
        let Forward {
            tx,
            end,
            _permit,
            buffer,
        } = self;
        let mut live = false;
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = end.send(StreamEnd::ShuttingDown);
                    return;
                }
                () = tx.closed() => return,
                event = subscription.next() => event,
            };
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "stream ended: the feed is unavailable");
                    let _ = end.send(StreamEnd::FeedUnavailable(e.to_string()));
                    return;
                }
                None => {
                    let _ = end.send(StreamEnd::FeedUnavailable(
                        "the feed subscription ended".into(),
                    ));
                    return;
                }
            };
            live |= event == FeedEvent::Live;
            if live {
                match tx.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::debug!(buffer, "stream ended: the client reads too slowly");
                        let _ = end.send(StreamEnd::SlowConsumer { buffer });
                        return;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            } else {
                tokio::select! {
                    sent = tx.send(event) => if sent.is_err() { return },
                    () = shutdown.cancelled() => {
                        let _ = end.send(StreamEnd::ShuttingDown);
                        return;
                    }
                }
            }
        }
    }
}
