//! The relay the SSE and gRPC streams share, against an in-process feed: a client that stops
//! reading once its stream is live is cut off after its buffer, with the reason last.

mod common;

use std::time::Duration;

use common::TestFeed;
use futures_util::StreamExt;
use history_api::relay::{FeedAccess, Relay, StreamEnd, StreamLimits, StreamRequest};
use pricesub::FeedEvent;
use ticks::Currency;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_its_buffer() {
    let feed = TestFeed::embedded().await;
    let buffer = 3;
    let relay = Relay::new(
        FeedAccess::local(
            format!("mqtt://{}", feed.mqtt).parse().unwrap(),
            feed.http,
            None,
        ),
        StreamLimits {
            max_streams: 1,
            buffer,
        },
        CancellationToken::new(),
        "relay-test",
    );
    let mut stream = relay
        .open(StreamRequest {
            currencies: Currency::ALL.to_vec(),
            since: None,
            resume_after: Default::default(),
        })
        .unwrap();
    // Read until live, then stop reading while ticks keep coming (two every 100 ms).
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the stream turns live in time")
            .expect("the stream goes on");
        if event == Ok(FeedEvent::Live) {
            break;
        }
    }
    assert_eq!(relay.open_streams(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut after = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the stream ends in time")
    {
        after.push(item);
        assert!(
            after.len() <= buffer + 50,
            "still streaming {} events after live: not cut off",
            after.len()
        );
    }
    let (end, events) = after.split_last().expect("something after live");
    assert_eq!(end, &Err(StreamEnd::SlowConsumer { buffer }), "{after:?}");
    assert!(
        events.len() <= buffer && events.iter().all(Result::is_ok),
        "at most the buffer before the end: {after:?}"
    );
    // The stream's place is free again once it is dropped.
    drop(stream);
    let reopened = relay.open(StreamRequest {
        currencies: vec![Currency::USD],
        since: None,
        resume_after: Default::default(),
    });
    assert!(reopened.is_ok(), "the place is free again");
    feed.stop().await;
}
