//! The hand-off from backfill to live: ticks published before, during and after the history
//! request are each delivered exactly once, in order.

mod common;

use std::time::Duration;

use common::{Delivered, TestFeed, assert_matches_history, subscriber};
use pricesub::subscribe;
use testkit::Proxy;
use ticks::Timedate;

/// Collects what a subscription delivers for `run_for`.
async fn collect(sub: &mut pricesub::Subscription, run_for: Duration) -> Delivered {
    let mut delivered = Delivered::default();
    let until = tokio::time::Instant::now() + run_for;
    while let Ok(Some(event)) = tokio::time::timeout_at(until, sub.next()).await {
        delivered.push(event.unwrap());
    }
    delivered
}

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
            collect(&mut sub, Duration::from_millis(2500)).await
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
    let delivered = collect(&mut sub, Duration::from_millis(1500)).await;
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
    let mut config = subscriber(feed.mqtt, dead_addr, Some(feed.started));
    config.start_within = Duration::from_secs(1);
    let mut sub = subscribe(config).unwrap();
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

/// A history server that is behind its broker: its first `behind` answers have the real answer's
/// ticks taken out (a replica whose recorder has not stored them yet), then it answers truly.
/// Counted in requests, not time, so that the test does not depend on the machine's speed.
async fn lagging_history(real: std::net::SocketAddr, behind: usize) -> std::net::SocketAddr {
    use axum::extract::RawQuery;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/v1/ticks",
        axum::routing::get(move |RawQuery(query): RawQuery| {
            let answered = answered.clone();
            async move {
                let path = format!("/v1/ticks?{}", query.unwrap_or_default());
                let mut page: serde_json::Value =
                    serde_json::from_str(&http_get(real, &path).await).unwrap();
                if answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < behind {
                    for ticks in page["ticks"].as_object_mut().unwrap().values_mut() {
                        *ticks = serde_json::json!([]);
                    }
                    page.as_object_mut().unwrap().remove("next_cursor");
                }
                axum::Json(page)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// One HTTP/1.0 GET; the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    body.to_string()
}

/// A history server that is busy: its first `busy` answers are `429` with `Retry-After: 2` (as
/// the history API's rate limit answers), then it answers as `real` does. Returns its address and
/// when each request arrived.
async fn busy_history(
    real: std::net::SocketAddr,
    busy: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
) {
    use axum::extract::RawQuery;
    use axum::response::IntoResponse;
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let app = axum::Router::new().route(
        "/v1/ticks",
        axum::routing::get(move |RawQuery(query): RawQuery| {
            let seen = seen.clone();
            async move {
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(tokio::time::Instant::now());
                    seen.len()
                };
                if n <= busy {
                    return (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "2"), ("content-type", "application/json")],
                        r#"{"error":"rate_limited","message":"too many requests"}"#,
                    )
                        .into_response();
                }
                let path = format!("/v1/ticks?{}", query.unwrap_or_default());
                (
                    [("content-type", "application/json")],
                    http_get(real, &path).await,
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, arrivals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_history_server_is_asked_again_after_its_retry_after() {
    let feed = TestFeed::embedded().await;
    let since = feed.started;
    feed.wait_for_tick_at(since.saturating_add(Duration::from_millis(500)))
        .await;
    let (history, arrivals) = busy_history(feed.http, 2).await;
    // At start-up too: a 429 is the server asking for time, not a refusal of our question.
    let mut sub = subscribe(subscriber(feed.mqtt, history, Some(since))).unwrap();
    let delivered = collect(&mut sub, Duration::from_secs(8)).await;
    assert!(delivered.count() > 20, "{} ticks", delivered.count());
    assert_matches_history(&feed, since, &delivered, "after two 429s").await;
    let arrivals = arrivals.lock().unwrap().clone();
    assert!(arrivals.len() >= 3, "{} requests", arrivals.len());
    for (i, pair) in arrivals[..3].windows(2).enumerate() {
        let waited = pair[1] - pair[0];
        assert!(
            waited >= Duration::from_secs(2),
            "request {} came {waited:?} after a 429 that asked for 2 s",
            i + 2
        );
    }
    feed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_for_every_backfill_try_still_loses_nothing() {
    let feed = TestFeed::embedded().await;
    let since = feed.started;
    feed.wait_for_tick_at(since.saturating_add(Duration::from_millis(1000)))
        .await;
    // Behind for as many answers as the backfill asks (20): whether the backfill gives up after
    // all of them or accepts the first (no live tick buffered yet to compare with), the first
    // live tick must not jump over the ticks from `since` on, which history then holds.
    let history = lagging_history(feed.http, 20).await;
    let mut sub = subscribe(subscriber(feed.mqtt, history, Some(since))).unwrap();
    let delivered = collect(&mut sub, Duration::from_secs(10)).await;
    assert!(delivered.count() > 30, "{} ticks", delivered.count());
    assert_matches_history(&feed, since, &delivered, "behind for 20 answers").await;
    feed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_link_that_drops_every_connection_each_new_try_comes_at_once_and_nothing_is_lost() {
    let feed = TestFeed::embedded().await;
    // Every connection is cut after 2 s, and one connect in five is refused.
    let link = Proxy::start(feed.mqtt).await;
    link.refuse_every(5);
    let mut sub = subscribe(subscriber(link.addr(), feed.http, Some(feed.started))).unwrap();
    let cutter = {
        let link_cuts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let cuts = link_cuts.clone();
        let link = std::sync::Arc::new(link);
        let cutting = link.clone();
        let task = tokio::spawn(async move {
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                cutting.cut();
                cuts.lock().unwrap().push(tokio::time::Instant::now());
            }
        });
        (task, link_cuts, link)
    };
    let delivered = collect(&mut sub, Duration::from_secs(18)).await;
    let (task, cuts, link) = cutter;
    task.await.unwrap();
    assert_matches_history(&feed, feed.started, &delivered, "a cutting link").await;
    // Each connection proved itself (subscribed, backfilled, live) before it was cut, so the next
    // try waits the shortest backoff (200-300 ms; a refused connect adds one more step), not a
    // backoff doubling with every cut (which passes 3 s by the fifth).
    let accepted = link.accepted_at();
    let cuts = cuts.lock().unwrap().clone();
    let waits: Vec<Duration> = cuts
        .iter()
        .filter_map(|cut| accepted.iter().find(|a| *a > cut).map(|a| *a - *cut))
        .collect();
    assert!(waits.len() >= 7, "reconnected after the cuts: {waits:?}");
    let longest = waits.iter().max().unwrap();
    assert!(
        *longest < Duration::from_millis(2500),
        "the longest wait for a new connection after a cut was {longest:?}: {waits:?}"
    );
    feed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_start_up_a_broker_and_a_history_server_that_refuse_for_a_while_are_waited_for() {
    let feed = TestFeed::embedded().await;
    let broker = Proxy::start(feed.mqtt).await;
    let history = Proxy::start(feed.http).await;
    broker.set_refusing(true);
    history.set_refusing(true);
    let mut config = subscriber(broker.addr(), history.addr(), Some(feed.started));
    config.start_within = Duration::from_secs(20);
    let mut sub = subscribe(config).unwrap();
    // The network comes up: first the broker, then the history server.
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.set_refusing(false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    history.set_refusing(false);
    let delivered = collect(&mut sub, Duration::from_secs(4)).await;
    assert!(delivered.count() > 20, "{} ticks", delivered.count());
    assert_matches_history(
        &feed,
        feed.started,
        &delivered,
        "started before the network",
    )
    .await;
    feed.stop().await;
}

/// A proxy in front of a broker that passes everything but drops chosen live PUBLISHes on their
/// way to the client, as a broker does when it sheds a delivery: by topic, the 1-based counts of
/// the live (not retained) publishes to drop.
struct DroppingProxy {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    dropped: std::sync::Arc<std::sync::Mutex<Vec<Dropped>>>,
}

/// A PUBLISH the proxy dropped: which ("btc/USD #5"), at what QoS, and its tick's `timedate`.
#[derive(Debug, Clone)]
struct Dropped {
    what: String,
    qos: u8,
    timedate: String,
}

impl DroppingProxy {
    async fn start(broker: std::net::SocketAddr, drop: &[(&str, &[usize])]) -> DroppingProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let dropped = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let drop: std::collections::HashMap<String, Vec<usize>> = drop
            .iter()
            .map(|(topic, counts)| (topic.to_string(), counts.to_vec()))
            .collect();
        let (count, log) = (accepted.clone(), dropped.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let upstream = tokio::net::TcpStream::connect(broker).await.unwrap();
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut broker_rx, mut broker_tx) = upstream.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rx, &mut broker_tx).await;
                });
                let (drop, log) = (drop.clone(), log.clone());
                tokio::spawn(async move {
                    let mut seen: std::collections::HashMap<String, usize> = Default::default();
                    let mut buf: Vec<u8> = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Pass on every whole packet in the buffer, but the ones to drop.
                        while let Some((header, len)) = frame(&buf) {
                            let packet: Vec<u8> = buf.drain(..header + len).collect();
                            let live_publish = packet[0] >> 4 == 3 && packet[0] & 1 == 0;
                            if live_publish {
                                let n = usize::from(u16::from_be_bytes([
                                    packet[header],
                                    packet[header + 1],
                                ]));
                                let topic =
                                    String::from_utf8_lossy(&packet[header + 2..header + 2 + n])
                                        .into_owned();
                                let k = seen.entry(topic.clone()).or_default();
                                *k += 1;
                                if drop.get(&topic).is_some_and(|c| c.contains(k)) {
                                    let qos = (packet[0] >> 1) & 3;
                                    let id = if qos > 0 { 2 } else { 0 };
                                    let payload: serde_json::Value =
                                        serde_json::from_slice(&packet[header + 2 + n + id..])
                                            .unwrap();
                                    log.lock().unwrap().push(Dropped {
                                        what: format!("{topic} #{k}"),
                                        qos,
                                        timedate: payload["timedate"].as_str().unwrap().into(),
                                    });
                                    continue;
                                }
                            }
                            if client_tx.write_all(&packet).await.is_err() {
                                return;
                            }
                        }
                        match broker_rx.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        DroppingProxy {
            addr,
            accepted,
            dropped,
        }
    }
}

/// An MQTT packet at the start of `buf`, if whole: its fixed header's length and the rest's.
fn frame(buf: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 1..5 {
        let byte = *buf.get(i)?;
        len |= usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            return (buf.len() >= 1 + i + len).then_some((1 + i, len));
        }
    }
    panic!("a malformed remaining length from the broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_ticks_the_broker_drops_are_filled_from_history_on_the_same_connection() {
    let feed = TestFeed::embedded().await;
    feed.wait_for_tick_at(feed.started.saturating_add(Duration::from_millis(500)))
        .await;
    // Two in a row of one currency, one of the other: each a hole the next live tick reveals.
    let proxy = DroppingProxy::start(feed.mqtt, &[("btc/USD", &[5, 6]), ("btc/EUR", &[8])]).await;
    let mut sub = subscribe(subscriber(proxy.addr, feed.http, Some(feed.started))).unwrap();
    let delivered = collect(&mut sub, Duration::from_millis(2500)).await;
    let dropped = proxy.dropped.lock().unwrap().clone();
    assert_eq!(
        dropped.iter().map(|d| d.what.as_str()).collect::<Vec<_>>(),
        ["btc/USD #5", "btc/USD #6", "btc/EUR #8"],
        "the proxy dropped what it was told to"
    );
    assert!(
        dropped.iter().all(|d| d.qos == 0),
        "the subscriber's deliveries come at QoS 0: {dropped:?}"
    );
    assert_eq!(
        proxy.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "filled without a reconnect"
    );
    assert!(delivered.count() > 30, "{} ticks", delivered.count());
    for d in &dropped {
        let currency = if d.what.starts_with("btc/USD") {
            ticks::Currency::USD
        } else {
            ticks::Currency::EUR
        };
        assert!(
            delivered.ticks[&currency]
                .iter()
                .any(|t| t.timedate.to_string() == d.timedate),
            "the dropped {d:?} was delivered"
        );
    }
    assert_matches_history(&feed, feed.started, &delivered, "with dropped deliveries").await;
    feed.stop().await;
}
