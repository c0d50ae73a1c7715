//! `GET /v1/stream`: the feed as Server-Sent Events, for browsers (`EventSource`) and `curl -N`.
//!
//! Each stream is a [`Relay`](crate::relay::Relay) stream: the backfill from `since`, then live,
//! with `pricesub`'s guarantees. Events:
//!
//! - `btc/USD`, `btc/EUR` (the MQTT topic): data is the tick's exact payload; the `id` is the
//!   stream's position per currency, `USD=2026-11-24T01:40:05Z,EUR=2026-11-24T01:40:00Z`, which
//!   a reconnecting `EventSource` sends back as `Last-Event-ID` so the new stream starts right
//!   after it;
//! - `gap`: a recorded gap, as on `pricefeed/gaps` (again, later, while it grows);
//! - `status`: the `pricefeed/status` payload;
//! - `live`: the backfill is done;
//! - `end`: the server ends the stream (shutting down, client too slow, feed unavailable); the
//!   client reconnects and resumes.
//!
//! Comment lines every `heartbeat` keep proxies from closing an idle stream.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use pricesub::FeedEvent;
use ticks::{Currency, Timedate};

use crate::error::ApiError;
use crate::query::parameters;
use crate::relay::{DEFAULT_HEARTBEAT, OpenError, StreamEnd, StreamRequest};
use crate::state::ApiState;

/// What a browser waits before reconnecting a stream that ended (the `retry` field): long enough
/// not to hammer a server that is restarting, short enough that a display hardly notices.
const RETRY: Duration = Duration::from_secs(1);

/// The SSE and CORS flags, of `pricefeed` and `history-api`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Browsers (SSE and CORS)")]
pub struct StreamArgs {
    /// Server-Sent Events streams (GET /v1/stream) open at once; one more gets 503 with
    /// Retry-After.
    #[arg(long, env = "PRICEFEED_SSE_MAX_STREAMS", default_value_t = 1_000)]
    pub sse_max_streams: usize,

    /// Live events held for an SSE client that reads slowly; past it, its stream ends with an
    /// `end` event (`slow_consumer`) and the browser resumes from where it was.
    #[arg(long, env = "PRICEFEED_SSE_STREAM_BUFFER", default_value_t = 1_024)]
    pub sse_stream_buffer: usize,

    /// Interval of the comment lines that keep an idle SSE stream open through proxies.
    #[arg(long, env = "PRICEFEED_SSE_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sse_heartbeat: Duration,

    /// Let pages of this origin (https://example.org) read the API from a browser (CORS);
    /// repeat it for several, or `*` for any. None by default.
    #[arg(long, env = "PRICEFEED_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
}

impl Default for StreamArgs {
    fn default() -> StreamArgs {
        let limits = crate::relay::StreamLimits::default();
        StreamArgs {
            sse_max_streams: limits.max_streams,
            sse_stream_buffer: limits.buffer,
            sse_heartbeat: DEFAULT_HEARTBEAT,
            cors_origin: Vec::new(),
        }
    }
}

impl StreamArgs {
    /// The relay's limits these flags set.
    pub fn limits(&self) -> crate::relay::StreamLimits {
        crate::relay::StreamLimits {
            max_streams: self.sse_max_streams,
            buffer: self.sse_stream_buffer,
        }
    }
}

/// `GET /v1/stream`.
pub(crate) async fn stream(
    State(state): State<Arc<ApiState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let [since, currency] = parameters(uri.query().unwrap_or(""), ["since", "currency"])?;
    let currencies = match currency.as_deref() {
        None => Currency::ALL.to_vec(),
        Some("") => return Err(ApiError::bad("currency", "currency is empty")),
        Some(list) => {
            Currency::parse_list(list).map_err(|e| ApiError::bad("currency", e.to_string()))?
        }
    };
    let since = match since.as_deref() {
        None => None,
        Some("") => return Err(ApiError::bad("since", "since is empty")),
        Some(text) => {
            Some(Timedate::parse_user(text).map_err(|e| ApiError::bad("since", e.to_string()))?)
        }
    };
    let mut resume_after = match headers.get("last-event-id") {
        None => BTreeMap::new(),
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::bad("Last-Event-ID", "Last-Event-ID is not visible ASCII")
            })?;
            parse_position(text).map_err(|why| ApiError::bad("Last-Event-ID", why))?
        }
    };
    // A position of a currency this stream does not carry is no business of it.
    resume_after.retain(|c, _| currencies.contains(c));

    let Some(relay) = &state.streams else {
        return Err(ApiError::StreamUnavailable(
            "this server does not follow a live feed; a standalone history-api streams only with --broker",
        ));
    };
    if relay.shutting_down() {
        // A stream that ends at once, as the open ones do, rather than a 503: an `EventSource`
        // given an error status stops for good, while one whose stream ends reconnects.
        let events = [
            Event::default().retry(RETRY),
            end_event(&StreamEnd::ShuttingDown),
        ]
        .map(Ok::<_, Infallible>);
        return Ok(stream_response(
            Sse::new(futures_util::stream::iter(events)).into_response(),
        ));
    }
    let events = match relay.open(StreamRequest {
        currencies,
        since,
        resume_after: resume_after.clone(),
    }) {
        Ok(events) => events,
        Err(OpenError::TooMany { max }) => {
            state.metrics.stream_refused();
            return Err(ApiError::TooManyStreams { max });
        }
        Err(OpenError::Subscribe(e)) => return Err(ApiError::Internal(e.to_string())),
    };
    let open = OpenStream::new(state.metrics.clone());
    let mut position = resume_after;
    let retry = futures_util::stream::once(std::future::ready(Event::default().retry(RETRY)));
    let events = events.map(move |item| {
        let _open = &open;
        match item {
            Ok(event) => event_of(event, &mut position),
            Err(end) => end_event(&end),
        }
    });
    let body = retry.chain(events).map(Ok::<_, Infallible>);
    let response = Sse::new(body)
        .keep_alive(KeepAlive::new().interval(state.stream_heartbeat).text(""))
        .into_response();
    Ok(stream_response(response))
}

/// The headers every stream answer carries.
fn stream_response(mut response: Response) -> Response {
    let headers = response.headers_mut();
    // Every event is new: nothing in between may keep or replay it.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx buffers proxied answers unless told not to, which would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Counts an open stream in the metrics while it lives.
struct OpenStream(Arc<crate::metrics::Metrics>);

impl OpenStream {
    fn new(metrics: Arc<crate::metrics::Metrics>) -> OpenStream {
        metrics.stream_open(true);
        OpenStream(metrics)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stream_open(false);
    }
}

fn event_of(event: FeedEvent, position: &mut BTreeMap<Currency, Timedate>) -> Event {
    match event {
        FeedEvent::Tick(tick) => {
            position.insert(tick.currency, tick.timedate);
            Event::default()
                .event(tick.currency.topic())
                .id(position_text(position))
                .data(tick.payload())
        }
        FeedEvent::Gap(gap) => Event::default().event("gap").data(gap.payload()),
        FeedEvent::Live => Event::default().event("live").data("{}"),
        FeedEvent::Status(status) => Event::default().event("status").data(status),
    }
}

fn end_event(end: &StreamEnd) -> Event {
    let data = serde_json::json!({ "reason": end.reason(), "message": end.to_string() });
    Event::default().event("end").data(data.to_string())
}

/// `USD=2026-11-24T01:40:05Z,EUR=2026-11-24T01:40:00Z`, currencies in [`Currency::ALL`] order.
fn position_text(position: &BTreeMap<Currency, Timedate>) -> String {
    let mut text = String::new();
    for currency in Currency::ALL {
        if let Some(at) = position.get(&currency) {
            if !text.is_empty() {
                text.push(',');
            }
            text.push_str(currency.code());
            text.push('=');
            text.push_str(&at.to_string());
        }
    }
    text
}

/// Reads a position written by [`position_text`]. Empty means no position (a browser sends
/// none before the first event with an id, but a client may send an empty one).
fn parse_position(text: &str) -> Result<BTreeMap<Currency, Timedate>, String> {
    let mut position = BTreeMap::new();
    for entry in text.split(',').filter(|e| !e.trim().is_empty()) {
        let (code, at) = entry.trim().split_once('=').ok_or_else(|| {
            format!(
                "Last-Event-ID {text:?} is not a stream position such as USD=2026-11-24T01:40:05Z,EUR=2026-11-24T01:40:05Z"
            )
        })?;
        let currency = Currency::parse_list(code)
            .ok()
            .filter(|c| c.len() == 1)
            .map(|c| c[0])
            .ok_or_else(|| format!("Last-Event-ID names an unknown currency {code:?}"))?;
        let at = at
            .parse::<Timedate>()
            .map_err(|e| format!("Last-Event-ID: {code}: {e}"))?;
        if position.insert(currency, at).is_some() {
            return Err(format!("Last-Event-ID names {code} twice"));
        }
    }
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_reads_back_as_written() {
        let mut position = BTreeMap::new();
        assert_eq!(position_text(&position), "");
        position.insert(Currency::EUR, "2026-11-24T01:40:00Z".parse().unwrap());
        assert_eq!(position_text(&position), "EUR=2026-11-24T01:40:00Z");
        position.insert(Currency::USD, "2026-11-24T01:40:05.250Z".parse().unwrap());
        let text = position_text(&position);
        assert_eq!(
            text,
            "USD=2026-11-24T01:40:05.250Z,EUR=2026-11-24T01:40:00Z"
        );
        assert_eq!(parse_position(&text).unwrap(), position);
        assert_eq!(parse_position("").unwrap(), BTreeMap::new());
    }

    #[test]
    fn a_bad_position_says_what_is_wrong() {
        for (bad, says) in [
            ("USD", "not a stream position"),
            ("GBP=2026-11-24T01:40:00Z", "unknown currency"),
            ("USD=yesterday", "USD"),
            ("USD=2026-11-24T01:40:00Z,USD=2026-11-24T01:40:05Z", "twice"),
            ("USD,EUR=2026-11-24T01:40:00Z", "not a stream position"),
        ] {
            let error = parse_position(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
