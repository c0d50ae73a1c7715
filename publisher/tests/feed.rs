//! The whole feed in-process, in real time: fake price sources over real HTTP, the embedded broker,
//! a real MQTT subscriber, a real SQLite file.

use std::collections::HashSet;
use std::time::Duration;

use history_store::{FeedInfo, HistoryStore};
use price_sources::{SourceConfig, SourceKind};
use publisher::clock::WallClock;
use publisher::{BrokerMode, Config, Feed};
use testkit::{FixtureServer, Mode, Mosquitto, Received, TickSubscriber};
use ticks::{BrokerUrl, Currency, Interval, Tick, Timedate};
use tokio_util::sync::CancellationToken;

const INTERVAL_MS: u64 = 250;
const WAIT: Duration = Duration::from_secs(20);

fn config(db: &std::path::Path, sources: &[(SourceKind, &FixtureServer)]) -> Config {
    Config {
        interval: Interval::new(Duration::from_millis(INTERVAL_MS)).unwrap(),
        currencies: Currency::ALL.to_vec(),
        sources: sources
            .iter()
            .map(|(kind, server)| SourceConfig {
                kind: *kind,
                base_url: server.url(),
            })
            .collect(),
        request_timeout: Duration::from_millis(150),
        source_max_age: Duration::from_secs(300),
        max_move: None,
        db: db.to_path_buf(),
        broker: BrokerMode::Embedded {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_sessions: 1000,
            limits: Default::default(),
            ws_listen: None,
        },
        publisher_password: None,
        http_listen: "127.0.0.1:0".parse().unwrap(),
        http_limits: Default::default(),
        streams: Default::default(),
        clock: WallClock::System,
        cluster: None,
        elected: None,
        tls: None,
        grpc: None,
    }
}

struct Running {
    mqtt: std::net::SocketAddr,
    http: std::net::SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(config: Config) -> Running {
    let feed = Feed::build(config).await.unwrap();
    let mqtt = feed.mqtt_addr().unwrap_or_else(|| {
        let url = feed.broker_url();
        format!("{}:{}", url.host, url.port).parse().unwrap()
    });
    let http = feed.http_addr();
    let stop = CancellationToken::new();
    let task = tokio::spawn(feed.run(stop.clone()));
    Running {
        mqtt,
        http,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the feed stops within 15 s")
            .unwrap()
            .unwrap();
    }
}

/// Checks one message is an exact tick on the grid and returns it.
fn exact_tick(m: &Received) -> Tick {
    let tick =
        Tick::from_message(&m.topic, m.payload.as_bytes()).unwrap_or_else(|e| panic!("{m:?}: {e}"));
    assert_eq!(
        m.payload,
        tick.payload(),
        "keys exactly timedate, price, in that order"
    );
    assert!(m.payload.starts_with(r#"{"timedate":""#));
    let interval = Interval::new(Duration::from_millis(INTERVAL_MS)).unwrap();
    assert!(
        interval.is_slot_start(tick.timedate),
        "{} is on the grid",
        tick.timedate
    );
    tick
}

fn prices(ticks: &[Tick], currency: Currency) -> HashSet<String> {
    ticks
        .iter()
        .filter(|t| t.currency == currency)
        .map(|t| t.price.to_string())
        .collect()
}

/// Whether `pricefeed/status` says `down` before it falls silent for [`WAIT`].
async fn says_down(status: &mut TickSubscriber) -> bool {
    while let Some(m) = status.next(WAIT).await {
        if m.payload.contains(r#""state":"down""#) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_ticks_on_both_topics_one_per_slot_and_all_stored() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let feed = start(config(&db, &[(SourceKind::Kraken, &kraken)])).await;
    let mut sub = TickSubscriber::connect(feed.mqtt, "display", "btc/+").await;
    let received = sub.collect(12, WAIT).await;
    feed.stop().await;

    let ticks: Vec<Tick> = received.iter().map(exact_tick).collect();
    assert_eq!(
        prices(&ticks, Currency::USD),
        HashSet::from(["77726.1".to_string()])
    );
    assert_eq!(
        prices(&ticks, Currency::EUR),
        HashSet::from(["68644.2".to_string()])
    );
    let mut seen = HashSet::new();
    for t in &ticks {
        assert!(
            seen.insert((t.currency, t.timedate)),
            "one tick per slot per currency: {t:?}"
        );
    }
    // What was published is exactly what the store holds for the same range.
    let store = HistoryStore::open(&db).unwrap();
    for currency in Currency::ALL {
        let live: Vec<Tick> = ticks
            .iter()
            .filter(|t| t.currency == currency)
            .copied()
            .collect();
        let first = live.first().unwrap().timedate;
        let last = live.last().unwrap().timedate;
        let stored: Vec<Tick> = store
            .read(move |s| s.ticks_since(currency, first, 1000))
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.timedate <= last)
            .collect();
        assert_eq!(stored, live, "{currency}");
    }
    // The source saw our User-Agent.
    let hits = kraken.hits();
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|(_, agent)| {
        agent
            .as_deref()
            .is_some_and(|a| a.starts_with("pricefeed/"))
    }));
}

/// One value of `/metrics` (a series without labels), scraped over HTTP/1.0.
async fn scraped(http: std::net::SocketAddr, series: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(http).await.ok()?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')
            .and_then(|v| v.parse().ok())
    })
}

/// Waits until `/metrics` says `series` is `value`; panics with the last value seen after [`WAIT`].
async fn until_scraped(http: std::net::SocketAddr, series: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = scraped(http, series).await;
        if seen == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {seen:?}, not {value}, after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_embedded_brokers_sessions_as_clients_come_and_go() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let feed = start(config(
        &dir.path().join("feed.db"),
        &[(SourceKind::Kraken, &kraken)],
    ))
    .await;
    // The publisher's own session.
    until_scraped(feed.http, "pricefeed_mqtt_sessions", 1.0).await;
    until_scraped(feed.http, "pricefeed_mqtt_connections", 1.0).await;
    let first = TickSubscriber::connect(feed.mqtt, "display-1", "btc/+").await;
    let second = TickSubscriber::connect(feed.mqtt, "display-2", "btc/+").await;
    until_scraped(feed.http, "pricefeed_mqtt_sessions", 3.0).await;
    until_scraped(feed.http, "pricefeed_mqtt_connections", 3.0).await;
    drop(first);
    until_scraped(feed.http, "pricefeed_mqtt_sessions", 2.0).await;
    until_scraped(feed.http, "pricefeed_mqtt_connections", 2.0).await;
    drop(second);
    until_scraped(feed.http, "pricefeed_mqtt_sessions", 1.0).await;
    feed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_falls_through_and_an_outage_publishes_nothing_until_recovery() {
    let kraken = FixtureServer::kraken().await;
    let coindesk = FixtureServer::coindesk().await;
    kraken.set_mode(Mode::Status(500));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let feed = start(config(
        &db,
        &[
            (SourceKind::Kraken, &kraken),
            (SourceKind::CoinDesk, &coindesk),
        ],
    ))
    .await;
    let mut sub = TickSubscriber::connect(feed.mqtt, "display", "btc/+").await;
    let mut status = TickSubscriber::connect(feed.mqtt, "watcher", "pricefeed/status").await;

    // Kraken down: CoinDesk's prices, exactly as it gave them.
    let ticks: Vec<Tick> = sub.collect(4, WAIT).await.iter().map(exact_tick).collect();
    assert_eq!(
        prices(&ticks, Currency::USD),
        HashSet::from(["59524.4038".to_string()])
    );
    assert_eq!(
        prices(&ticks, Currency::EUR),
        HashSet::from(["53958.5744".to_string()])
    );

    // Every source down (one failing, one serving HTML): no tick at all, and the status says so.
    kraken.set_mode(Mode::Hang);
    coindesk.set_mode(Mode::Html);
    assert!(
        says_down(&mut status).await,
        "the outage is announced on pricefeed/status"
    );
    // Drain ticks from slots sampled before the switch, then expect silence.
    while sub
        .next(Duration::from_millis(4 * INTERVAL_MS))
        .await
        .is_some()
    {}
    assert_eq!(
        sub.next(Duration::from_millis(6 * INTERVAL_MS)).await,
        None,
        "no invented ticks"
    );

    // Recovery is automatic.
    kraken.set_mode(Mode::Serve);
    let ticks: Vec<Tick> = sub.collect(4, WAIT).await.iter().map(exact_tick).collect();
    assert!(prices(&ticks, Currency::USD).contains("77726.1"));
    feed.stop().await;

    // The outage is in the store as gaps.
    let store = HistoryStore::open(&db).unwrap();
    let gaps = store
        .read(move |s| {
            s.gaps_overlapping(&Currency::ALL, Timedate::from_unix_millis(0).unwrap(), None)
        })
        .await
        .unwrap();
    assert!(gaps.iter().any(|g| g.currency == Currency::USD), "{gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_republishes_the_last_stored_tick_for_late_subscribers() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let first = start(config(&db, &[(SourceKind::Kraken, &kraken)])).await;
    let mut sub = TickSubscriber::connect(first.mqtt, "display", "btc/USD").await;
    sub.collect(2, WAIT).await;
    first.stop().await;
    let last = HistoryStore::open(&db)
        .unwrap()
        .latest(Currency::USD)
        .await
        .unwrap()
        .unwrap();

    // The source is now down: the only USD tick a display can get is the re-published one.
    kraken.set_mode(Mode::Status(503));
    let second = start(config(&db, &[(SourceKind::Kraken, &kraken)])).await;
    // The first subscriber may connect before or after the re-publish; once it has the tick, a
    // display connecting later must get it as a retained message.
    let mut early = TickSubscriber::connect(second.mqtt, "early-display", "btc/USD").await;
    assert_eq!(
        early
            .next(WAIT)
            .await
            .expect("the re-published tick")
            .payload,
        last.payload()
    );
    let mut late = TickSubscriber::connect(second.mqtt, "late-display", "btc/USD").await;
    let m = late.next(WAIT).await.expect("the retained tick");
    assert_eq!(m.payload, last.payload());
    assert!(m.retain);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_broker_mode_publishes_to_mosquitto_with_the_acl() {
    if !testkit::have("mosquitto") {
        panic!("Debian's mosquitto is required for this test (apt-get install mosquitto)");
    }
    let mosquitto = Mosquitto::start().await;
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        &dir.path().join("feed.db"),
        &[(SourceKind::Kraken, &kraken)],
    );
    cfg.broker = BrokerMode::External {
        url: BrokerUrl::new("127.0.0.1", mosquitto.port),
    };
    cfg.publisher_password = Some(mosquitto.password.clone());
    let feed = start(cfg).await;
    let mut sub = TickSubscriber::connect(mosquitto.addr(), "display", "btc/#").await;
    let ticks: Vec<Tick> = sub.collect(4, WAIT).await.iter().map(exact_tick).collect();
    assert_eq!(
        prices(&ticks, Currency::USD),
        HashSet::from(["77726.1".to_string()])
    );
    feed.stop().await;
    mosquitto.stop().await;
}

#[tokio::test]
async fn an_external_broker_without_a_password_is_a_startup_error() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        &dir.path().join("feed.db"),
        &[(SourceKind::Kraken, &kraken)],
    );
    cfg.broker = BrokerMode::External {
        url: "mqtt://127.0.0.1:1".parse().unwrap(),
    };
    let err = Feed::build(cfg).await.err().expect("must fail");
    assert!(err.to_string().contains("--broker-password"), "{err:#}");
}

/// Without the cargo feature `tls`, asking for MQTT over TLS is refused, not ignored: a broker
/// silently without its TLS port would look like a firewall problem.
#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn mqtt_over_tls_in_a_build_without_it_is_a_startup_error() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let mut cfg = config(&db, &[(SourceKind::Kraken, &kraken)]);
    cfg.tls = Some(publisher::TlsSettings {
        files: history_api::TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        },
        mqtt_listen: Some("127.0.0.1:0".parse().unwrap()),
    });
    let err = Feed::build(cfg).await.err().expect("must fail");
    assert!(
        err.to_string()
            .starts_with("this pricefeed was built without MQTT TLS: build with --features tls"),
        "{err:#}"
    );
    assert!(
        !db.exists(),
        "a refused configuration leaves no store behind"
    );
}

/// --grpc-listen in a build without the `grpc` feature is refused, not ignored: a feed running
/// without the port its clients were told about would look like a network problem.
#[cfg(not(feature = "grpc"))]
#[tokio::test]
async fn grpc_in_a_build_without_it_is_a_startup_error() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let mut cfg = config(&db, &[(SourceKind::Kraken, &kraken)]);
    cfg.grpc = Some(publisher::GrpcSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_streams: 1,
        stream_buffer: 1,
    });
    let err = Feed::build(cfg).await.err().expect("must fail");
    assert_eq!(
        err.to_string(),
        "this pricefeed was built without gRPC: build with --features grpc"
    );
    assert!(
        !db.exists(),
        "a refused configuration leaves no store behind"
    );
}

#[tokio::test]
async fn a_busy_http_port_is_a_startup_error_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        &dir.path().join("feed.db"),
        &[(SourceKind::Kraken, &kraken)],
    );
    cfg.http_listen = taken.local_addr().unwrap();
    let err = Feed::build(cfg).await.err().expect("must fail");
    assert_eq!(
        err.to_string(),
        format!("cannot listen for HTTP on {}", taken.local_addr().unwrap())
    );
}

/// A refused configuration changes nothing on disk: the store of a feed that ran on real sources
/// still says so after someone tried `--source demo,kraken` on it.
#[tokio::test]
async fn a_refused_start_leaves_the_store_as_it_was() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let real = FeedInfo {
        interval: Interval::DEFAULT,
        demo: false,
    };
    HistoryStore::open(&db)
        .unwrap()
        .set_feed_info(real)
        .await
        .unwrap();
    let mut cfg = config(&db, &[(SourceKind::Kraken, &kraken)]);
    cfg.sources.insert(
        0,
        SourceConfig {
            kind: SourceKind::Demo,
            base_url: String::new(),
        },
    );
    let err = Feed::build(cfg).await.err().expect("must fail");
    assert!(
        err.to_string().contains("demo cannot be combined"),
        "{err:#}"
    );
    let info = HistoryStore::open(&db).unwrap().feed_info().await.unwrap();
    assert_eq!(info, Some(real), "the refused demo start wrote nothing");

    // Nor does a refused start create a store where there was none.
    let fresh = dir.path().join("fresh.db");
    let mut cfg = config(&fresh, &[(SourceKind::Kraken, &kraken)]);
    cfg.request_timeout = Duration::ZERO;
    assert!(Feed::build(cfg).await.is_err());
    assert!(!fresh.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_source_is_a_recorded_gap_never_an_old_price_as_a_live_tick() {
    // The CoinDesk answer as recorded, dated August 2024, served as if it were current.
    let frozen = FixtureServer::coindesk_as_recorded().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let feed = start(config(&db, &[(SourceKind::CoinDesk, &frozen)])).await;
    let mut sub = TickSubscriber::connect(feed.mqtt, "display", "btc/+").await;
    let mut status = TickSubscriber::connect(feed.mqtt, "watcher", "pricefeed/status").await;
    assert!(says_down(&mut status).await, "the feed says it is down");
    assert!(!frozen.hits().is_empty(), "the source was asked");
    assert_eq!(
        sub.next(Duration::from_millis(6 * INTERVAL_MS)).await,
        None,
        "no 2024 price published as a live tick"
    );
    feed.stop().await;
    let store = HistoryStore::open(&db).unwrap();
    let gaps = store
        .read(move |s| {
            s.gaps_overlapping(&Currency::ALL, Timedate::from_unix_millis(0).unwrap(), None)
        })
        .await
        .unwrap();
    assert!(
        gaps.iter()
            .any(|g| g.reason == ticks::GapReason::SourcesUnavailable),
        "the frozen slots are a recorded gap: {gaps:?}"
    );
    let ticks = store
        .read(move |s| s.ticks_since(Currency::USD, Timedate::EPOCH, 100))
        .await
        .unwrap();
    assert!(ticks.is_empty(), "nothing stored: {ticks:?}");
}
