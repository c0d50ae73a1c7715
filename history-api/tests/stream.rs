//! `GET /v1/stream` answers that need no feed: a server without one, and one shutting down.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::{get, state, store_with};
use history_api::app;
use history_api::relay::{FeedAccess, Relay, StreamLimits};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn without_a_feed_the_stream_is_unavailable() {
    let app = app(state(store_with(3).await));
    let answer = get(&app, "/v1/stream").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"], "stream_unavailable");
}

/// A browser's EventSource given an error status stops for good; a stream that ends, it
/// reconnects. So a server shutting down ends a new stream at once, as it ends the open ones.
#[tokio::test]
async fn a_server_shutting_down_ends_a_new_stream_at_once_with_end() {
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        // Never asked: a stream opened while shutting down does not subscribe.
        FeedAccess::local(
            "mqtt://127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:1".parse().unwrap(),
            None,
        ),
        StreamLimits::default(),
        shutdown.clone(),
        "test",
    );
    let state = state(store_with(3).await)
        .with_streams(Arc::new(relay), history_api::relay::DEFAULT_HEARTBEAT);
    let app = app(state);
    shutdown.cancel();
    let answer = get(&app, "/v1/stream?since=0").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), "text/event-stream");
    assert_eq!(answer.header("cache-control"), "no-store");
    let text = answer.text();
    assert!(text.starts_with("retry: 1000\n"), "{text}");
    assert!(
        text.contains("event: end\ndata: {\"message\":")
            && text.contains("\"reason\":\"shutting_down\""),
        "{text}"
    );
}
