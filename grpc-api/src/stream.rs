//! `Subscribe`: each stream is one `pricesub` subscription to this process's own feed, its events
//! translated one for one into a bounded channel that the client reads.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt, stream};

use pricesub::{FeedEvent, SubscribeError, SubscriberConfig, Subscription};
use ticks::{BrokerUrl, Currency, Gap, Tick, Timedate};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::pb;

/// What the streams may take.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Streams open at once; one more is refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Live events waiting for a client that reads too slowly; past it, its stream ends with
    /// RESOURCE_EXHAUSTED instead of growing without bound. (The backfill before the stream turns
    /// live is finite, and waits for the client instead.)
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

/// A stream as the client reads it: the events, then the status that ended it, if the server
/// ended it.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// The open streams and what each may take.
pub(crate) struct Streams {
    pub(crate) feed: FeedAccess,
    pub(crate) limits: StreamLimits,
    pub(crate) open: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
}

impl Streams {
    pub(crate) fn new(
        feed: FeedAccess,
        limits: StreamLimits,
        shutdown: CancellationToken,
    ) -> Streams {
        Streams {
            open: Arc::new(Semaphore::new(limits.max_streams)),
            feed,
            limits,
            shutdown,
        }
    }

    /// Validates the request and starts its stream.
    pub(crate) fn open(&self, request: pb::SubscribeRequest) -> Result<EventStream, Status> {
        let currencies = parse_currencies(&request.currencies)?;
        let since = request.since.as_deref().map(parse_since).transpose()?;
        let permit = self.open.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this server serves {} streams at once; retry later",
                self.limits.max_streams
            ))
        })?;
        let mut config = SubscriberConfig::new(vec![self.feed.broker.clone()]);
        config.history = vec![self.feed.history.clone()];
        config.currencies = currencies;
        config.since = since;
        config.client_id = "pricefeed-grpc".into();
        config.credentials = self.feed.credentials.clone();
        // Our own broker and history API are up or this process is going down: no need to wait
        // for a network to come up.
        config.start_within = Duration::from_secs(10);
        let subscription =
            pricesub::subscribe(config).map_err(|e| Status::internal(e.to_string()))?;
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
        // The ending status comes after every event already buffered, and never needs room in
        // the buffer.
        let end = stream::once(end_rx).filter_map(|end| std::future::ready(end.ok().map(Err)));
        Ok(Box::pin(ReceiverStream::new(rx).chain(end)))
    }
}

/// Moves one subscription's events to its client.
struct Forward {
    tx: mpsc::Sender<Result<pb::Event, Status>>,
    /// The status the stream ends with, when the server ends it.
    end: oneshot::Sender<Status>,
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
        let shutting_down =
            || Status::unavailable("the server is shutting down; subscribe again with since");
        let mut live = false;
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = end.send(shutting_down());
                    return;
                }
                () = tx.closed() => return,
                event = subscription.next() => event,
            };
            let event = match event {
                Some(Ok(event)) => event,
                // The subscription could not reach this process's own broker or history API.
                Some(Err(e)) => {
                    let _ = end.send(feed_unavailable(&e));
                    return;
                }
                None => {
                    let _ = end.send(Status::unavailable("the feed subscription ended"));
                    return;
                }
            };
            live |= event == FeedEvent::Live;
            let message = Ok(event_message(event));
            if live {
                match tx.try_send(message) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::debug!(buffer, "gRPC stream ended: the client reads too slowly");
                        let _ = end.send(Status::resource_exhausted(format!(
                            "the client fell {buffer} events behind; subscribe again with since"
                        )));
                        return;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            } else {
                tokio::select! {
                    sent = tx.send(message) => if sent.is_err() { return },
                    () = shutdown.cancelled() => {
                        let _ = end.send(shutting_down());
                        return;
                    }
                }
            }
        }
    }
}

fn feed_unavailable(e: &SubscribeError) -> Status {
    tracing::warn!(error = %e, "gRPC stream ended: the feed is unavailable");
    Status::unavailable(format!("the feed is unavailable: {e}"))
}

/// The currencies asked for: each entry one code (or a comma list, or `both`); none means all.
fn parse_currencies(list: &[String]) -> Result<Vec<Currency>, Status> {
    if list.is_empty() {
        return Ok(Currency::ALL.to_vec());
    }
    let mut wanted = Vec::new();
    for entry in list {
        let parsed = Currency::parse_list(entry)
            .map_err(|e| Status::invalid_argument(format!("currencies: {e}")))?;
        wanted.extend(parsed);
    }
    wanted.sort();
    wanted.dedup();
    Ok(wanted)
}

/// `since` as the history API reads it: RFC 3339 or unix seconds.
fn parse_since(text: &str) -> Result<Timedate, Status> {
    Timedate::parse_user(text).map_err(|e| Status::invalid_argument(format!("since: {e}")))
}

pub(crate) fn event_message(event: FeedEvent) -> pb::Event {
    let event = match event {
        FeedEvent::Tick(tick) => pb::event::Event::Tick(tick_message(&tick)),
        FeedEvent::Gap(gap) => pb::event::Event::Gap(gap_message(&gap)),
        FeedEvent::Live => pb::event::Event::Status(pb::Status {
            state: pb::status::State::Live.into(),
        }),
    };
    pb::Event { event: Some(event) }
}

/// The tick with its timedate and price as the JSON payload writes them.
pub(crate) fn tick_message(tick: &Tick) -> pb::Tick {
    pb::Tick {
        currency: tick.currency.code().into(),
        timedate: tick.timedate.to_string(),
        price: tick.price.to_string(),
    }
}

pub(crate) fn gap_message(gap: &Gap) -> pb::Gap {
    pb::Gap {
        currency: gap.currency.code().into(),
        from: gap.from.to_string(),
        until: gap.until.to_string(),
        reason: gap.reason.as_str().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_keeps_the_payload_text() {
        let tick = Tick {
            currency: Currency::EUR,
            timedate: "2026-11-24T01:40:05Z".parse().unwrap(),
            price: "97001.50".parse().unwrap(),
        };
        let message = tick_message(&tick);
        assert_eq!(
            tick.payload(),
            r#"{"timedate":"2026-11-24T01:40:05Z","price":97001.5}"#
        );
        assert_eq!(message.currency, "EUR");
        assert_eq!(message.timedate, "2026-11-24T01:40:05Z");
        assert_eq!(message.price, "97001.5");
    }

    #[test]
    fn bad_arguments_are_invalid_and_name_their_field() {
        let bad = parse_currencies(&["USD".into(), "GBP".into()]).unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(
            bad.message().starts_with("currencies: "),
            "{}",
            bad.message()
        );
        let bad = parse_since("yesterday").unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(bad.message().starts_with("since: "), "{}", bad.message());
        assert_eq!(
            parse_currencies(&["eur".into(), "USD,EUR".into()]).unwrap(),
            Currency::ALL.to_vec()
        );
        assert_eq!(parse_currencies(&[]).unwrap(), Currency::ALL.to_vec());
        assert_eq!(
            parse_since("1795484405").unwrap().to_string(),
            "2026-11-24T01:40:05Z"
        );
    }
}
