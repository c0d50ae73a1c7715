//! Invariant 2: a publisher killed at any instant leaves a store that opens and answers, and every
//! tick it published is in it.
//!
//! A crash loop: the feed is killed with SIGKILL at a random instant and started again on the same
//! store, with a subscriber watching, `PRICEFEED_CRASH_CYCLES` times (10 in `cargo test`, so in
//! CI). The soak, a few minutes:
//!
//!   PRICEFEED_CRASH_CYCLES=100 cargo test -p pricefeed-tests --test crash -- --nocapture
//!
//! A failure names its seed; `PRICEFEED_CRASH_SEED=<seed>` kills at the same instants again.

use std::time::Duration;

use history_store::HistoryStore;
use testkit::{FeedProcess, TickSubscriber};
use ticks::{Currency, Tick, Timedate};

/// Crash-loop cycles unless `PRICEFEED_CRASH_CYCLES` says otherwise.
const CYCLES: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_instants_leaves_a_readable_store_holding_every_published_tick() {
    let cycles: usize = std::env::var("PRICEFEED_CRASH_CYCLES")
        .ok()
        .map(|v| v.parse().expect("PRICEFEED_CRASH_CYCLES is a number"))
        .unwrap_or(CYCLES);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    // PRICEFEED_CRASH_SEED replays the kill instants of a run that failed.
    let seed = std::env::var("PRICEFEED_CRASH_SEED")
        .ok()
        .map(|v| v.parse().expect("PRICEFEED_CRASH_SEED is a number"))
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = std::time::Instant::now();
    let mut published: Vec<Tick> = Vec::new();
    for round in 0..cycles {
        let feed = FeedProcess::start(&db, &["--source", "demo", "--interval", "100ms"]).await;
        let mut sub = TickSubscriber::connect(feed.mqtt, "witness", "btc/+").await;
        // Kill at a random instant: right after start-up, or within any slot while ticks are
        // being stored and published (seed printed on failure, to replay the instants).
        tokio::time::sleep(Duration::from_millis(rng.u64(0..1500))).await;
        let mut process = feed.process;
        process.child.start_kill().unwrap();
        process.child.wait().await.unwrap();
        while let Some(m) = sub.next(Duration::from_millis(300)).await {
            published.push(Tick::from_message(&m.topic, m.payload.as_bytes()).unwrap());
        }
        let store = HistoryStore::open(&db).unwrap_or_else(|e| {
            panic!("round {round} (seed {seed}): the store does not open: {e}")
        });
        for tick in &published {
            let (currency, timedate) = (tick.currency, tick.timedate);
            let found = store
                .read(move |s| s.ticks_since(currency, timedate, 1))
                .await
                .unwrap();
            assert_eq!(
                found.first(),
                Some(tick),
                "round {round} (seed {seed}): published tick missing from the store"
            );
        }
        // It answers a whole read, and what it holds is in order, one tick per slot.
        let usd = store
            .read(move |s| {
                s.ticks_since(
                    Currency::USD,
                    Timedate::from_unix_millis(0).unwrap(),
                    1_000_000,
                )
            })
            .await
            .unwrap_or_else(|e| {
                panic!("round {round} (seed {seed}): the store does not answer: {e}")
            });
        assert!(
            usd.windows(2).all(|w| w[0].timedate < w[1].timedate),
            "round {round} (seed {seed}): stored ticks out of order or twice"
        );
    }
    assert!(published.len() > cycles, "{} ticks seen", published.len());
    eprintln!(
        "crash loop: {cycles} SIGKILLs in {:.0?}, {} published ticks seen, every one stored (seed {seed})",
        started.elapsed(),
        published.len()
    );
}
