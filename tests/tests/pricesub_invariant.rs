//! Invariant 1 under failure: for random schedules of dropped connections, broker restarts and
//! history outages, everything pricesub delivered equals what history holds for the same range, in
//! order, without repeats. The seed is printed; set PRICESUB_TEST_SEED to replay a schedule.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Delivered, TestFeed, assert_matches_history, subscriber};
use pricesub::subscribe;
use publisher::BrokerMode;
use testkit::{Mosquitto, Proxy};

fn seed() -> u64 {
    std::env::var("PRICESUB_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_equals_history_under_random_failures() {
    let seed = seed();
    eprintln!("PRICESUB_TEST_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    let mut mosquitto = Mosquitto::start().await;
    let feed = TestFeed::start(
        BrokerMode::External {
            url: format!("mqtt://127.0.0.1:{}", mosquitto.port)
                .parse()
                .unwrap(),
        },
        Some(mosquitto.password.clone()),
    )
    .await;
    feed.wait_for_tick_at(feed.started.saturating_add(Duration::from_millis(500)))
        .await;
    let mqtt_proxy = Proxy::start(mosquitto.addr()).await;
    let http_proxy = Proxy::start(feed.http).await;

    let since = feed.started;
    let mut sub = subscribe(subscriber(
        mqtt_proxy.addr(),
        http_proxy.addr(),
        Some(since),
    ))
    .unwrap();
    let delivered = Arc::new(Mutex::new(Delivered::default()));
    let sink = delivered.clone();
    let collector = tokio::spawn(async move {
        while let Some(event) = sub.next().await {
            match event {
                Ok(e) => sink.lock().unwrap().push(e),
                Err(e) => panic!("the subscription ended: {e}"),
            }
        }
    });

    let mut schedule = Vec::new();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1200))).await;
        match rng.u8(0..3) {
            0 => {
                schedule.push("drop client connection");
                mqtt_proxy.cut();
            }
            1 => {
                let pause = rng.u64(300..1500);
                schedule.push("history down + drop connection");
                http_proxy.set_refusing(true);
                mqtt_proxy.cut();
                tokio::time::sleep(Duration::from_millis(pause)).await;
                http_proxy.set_refusing(false);
            }
            _ => {
                schedule.push("broker restart");
                mosquitto.restart().await;
            }
        }
    }
    eprintln!("schedule: {schedule:?}");
    // Quiet now: the subscriber must catch up (its backoff is at most 10 s) to the live feed.
    let quiet_from = ticks::Timedate::now();
    testkit::wait_until(
        Duration::from_secs(40),
        "pricesub to catch up after the failures",
        || {
            let delivered = delivered.clone();
            async move {
                let last = delivered.lock().unwrap().last();
                last.len() == 2 && last.values().all(|t| *t > quiet_from)
            }
        },
    )
    .await;
    assert!(
        !collector.is_finished(),
        "the subscription is still running"
    );
    collector.abort();
    let delivered = std::mem::take(&mut *delivered.lock().unwrap());
    assert!(
        delivered.count() > 50,
        "only {} ticks delivered",
        delivered.count()
    );
    assert_matches_history(
        &feed,
        since,
        &delivered,
        &format!("seed {seed}, schedule {schedule:?}"),
    )
    .await;
    feed.stop().await;
}
