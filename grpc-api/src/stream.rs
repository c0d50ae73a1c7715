//! `Subscribe`: each stream is one [`history_api::relay`] stream (a `pricesub` subscription to
//! this process's own feed), its events translated one for one.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};

use history_api::relay::{OpenError, Relay, StreamEnd, StreamRequest};
use pricesub::FeedEvent;
use ticks::{Currency, Gap, Tick, Timedate};
use tonic::Status;

use crate::pb;

/// A stream as the client reads it: the events, then the status that ended it, if the server
/// ended it.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// Validates the request and starts its stream on `relay`.
pub(crate) fn open(relay: &Relay, request: pb::SubscribeRequest) -> Result<EventStream, Status> {
    let currencies = parse_currencies(&request.currencies)?;
    let since = request.since.as_deref().map(parse_since).transpose()?;
    let stream = relay
        .open(StreamRequest {
            currencies,
            since,
            resume_after: Default::default(),
        })
        .map_err(|e| match e {
            OpenError::TooMany { .. } => Status::resource_exhausted(e.to_string()),
            OpenError::Subscribe(e) => Status::internal(e.to_string()),
        })?;
    Ok(Box::pin(stream.filter_map(|item| {
        std::future::ready(match item {
            Ok(event) => event_message(event).map(Ok),
            Err(end) => Some(Err(end_status(&end))),
        })
    })))
}

/// The status a stream the server ended ends with.
fn end_status(end: &StreamEnd) -> Status {
    match end {
        StreamEnd::ShuttingDown => {
            Status::unavailable("the server is shutting down; subscribe again with since")
        }
        StreamEnd::SlowConsumer { buffer } => Status::resource_exhausted(format!(
            "the client fell {buffer} events behind; subscribe again with since"
        )),
        StreamEnd::FeedUnavailable(why) => {
            Status::unavailable(format!("the feed is unavailable: {why}"))
        }
    }
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

/// The message of an event; none for the feed's status, which this protocol does not carry.
pub(crate) fn event_message(event: FeedEvent) -> Option<pb::Event> {
    let event = match event {
        FeedEvent::Tick(tick) => pb::event::Event::Tick(tick_message(&tick)),
        FeedEvent::Gap(gap) => pb::event::Event::Gap(gap_message(&gap)),
        FeedEvent::Live => pb::event::Event::Status(pb::Status {
            state: pb::status::State::Live.into(),
        }),
        FeedEvent::Status(_) => return None,
    };
    Some(pb::Event { event: Some(event) })
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
