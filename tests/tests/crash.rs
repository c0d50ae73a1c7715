//! Invariant 2: a publisher killed at any instant leaves a store that opens and answers, and every
//! tick it published is in it.

use std::time::Duration;

use history_store::HistoryStore;
use testkit::{FeedProcess, TickSubscriber};
use ticks::{Currency, Tick, Timedate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_write_leaves_a_readable_store_holding_every_published_tick() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let mut rng = fastrand::Rng::new();
    let mut published: Vec<Tick> = Vec::new();
    for round in 0..4 {
        let feed = FeedProcess::start(&db, &["--source", "demo", "--interval", "100ms"]).await;
        let mut sub = TickSubscriber::connect(feed.mqtt, "witness", "btc/+").await;
        // Kill at a random instant within a slot, while ticks are being stored and published.
        tokio::time::sleep(Duration::from_millis(700 + rng.u64(0..100))).await;
        let mut process = feed.process;
        process.child.start_kill().unwrap();
        process.child.wait().await.unwrap();
        while let Some(m) = sub.next(Duration::from_millis(300)).await {
            published.push(Tick::from_message(&m.topic, m.payload.as_bytes()).unwrap());
        }
        let store = HistoryStore::open(&db).unwrap_or_else(|e| panic!("round {round}: {e}"));
        for tick in &published {
            let (currency, timedate) = (tick.currency, tick.timedate);
            let found = store
                .read(move |s| s.ticks_since(currency, timedate, 1))
                .await
                .unwrap();
            assert_eq!(
                found.first(),
                Some(tick),
                "round {round}: published tick missing from the store"
            );
        }
        let usd = store
            .read(move |s| {
                s.ticks_since(
                    Currency::USD,
                    Timedate::from_unix_millis(0).unwrap(),
                    1_000_000,
                )
            })
            .await
            .unwrap();
        assert!(!usd.is_empty());
    }
    assert!(published.len() > 20, "{} ticks seen", published.len());
}
