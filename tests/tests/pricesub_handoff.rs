//! The hand-off from backfill to live: ticks published before, during and after the history
//! request are each delivered exactly once, in order.

mod common;

use std::time::Duration;

use common::{Delivered, TestFeed, assert_matches_history, subscriber};
use pricesub::subscribe;
use ticks::Timedate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_then_live_is_exactly_the_stored_sequence() {
    let feed = TestFeed::embedded().await;
    let since = feed.started;
    // Let history build up so the backfill is real work while ticks keep coming every 100 ms.
    feed.wait_for_tick_at(since.saturating_add(Duration::from_millis(1500)))
        .await;

    // Subscribers starting at staggered offsets within a slot, so some start their backfill
    // right as a tick is stored and published.
    let mut runs = Vec::new();
    for i in 0..8u64 {
        let (mqtt, http) = (feed.mqtt, feed.http);
        runs.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 37)).await;
            let mut sub = subscribe(subscriber(mqtt, http, Some(since))).unwrap();
            let mut delivered = Delivered::default();
            let until = tokio::time::Instant::now() + Duration::from_millis(2500);
            while let Ok(Some(event)) = tokio::time::timeout_at(until, sub.next()).await {
                delivered.push(event.unwrap());
            }
            delivered
        }));
    }
    for (i, run) in runs.into_iter().enumerate() {
        let delivered = run.await.unwrap();
        assert!(
            delivered.count() > 30,
            "subscriber {i} got {} ticks",
            delivered.count()
        );
        assert_matches_history(&feed, since, &delivered, &format!("subscriber {i}")).await;
    }
    feed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_since_the_retained_tick_then_live_and_no_duplicates() {
    let feed = TestFeed::embedded().await;
    feed.wait_for_tick_at(feed.started.saturating_add(Duration::from_millis(300)))
        .await;
    let mut sub = subscribe(subscriber(feed.mqtt, feed.http, None)).unwrap();
    let mut delivered = Delivered::default();
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(event)) = tokio::time::timeout_at(until, sub.next()).await {
        delivered.push(event.unwrap());
    }
    let first = delivered
        .ticks
        .values()
        .map(|t| t[0].timedate)
        .min()
        .unwrap();
    assert!(first < Timedate::now());
    assert_matches_history(&feed, first, &delivered, "live only").await;
    feed.stop().await;
}

#[tokio::test]
async fn an_unreachable_history_server_is_an_error_not_a_stall() {
    let feed = TestFeed::embedded().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let mut sub = subscribe(subscriber(feed.mqtt, dead_addr, Some(feed.started))).unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("an answer within 20 s")
        .expect("an event");
    let err = event.expect_err("must be an error");
    assert!(
        err.to_string()
            .starts_with("cannot backfill: no history server answered"),
        "{err}"
    );
    feed.stop().await;
}
