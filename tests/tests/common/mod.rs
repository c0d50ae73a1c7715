//! A real feed for the pricesub SDK tests (`pricesub_handoff.rs`, `pricesub_invariant.rs`): the
//! publisher in-process on the demo source at a fast interval (the ticks' values do not matter
//! here, only their identity and order), a real SQLite file, the history API on a free port, and a
//! broker (embedded, or Mosquitto for restarts).

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use history_store::HistoryStore;
use price_sources::{SourceConfig, SourceKind};
use pricesub::{FeedEvent, SubscriberConfig};
use publisher::clock::WallClock;
use publisher::{BrokerMode, Config, Feed};
use ticks::{BrokerUrl, Currency, Gap, Interval, Tick, Timedate};
use tokio_util::sync::CancellationToken;

pub const INTERVAL_MS: u64 = 100;

pub struct TestFeed {
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    pub store: HistoryStore,
    pub started: Timedate,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestFeed {
    pub async fn start(broker: BrokerMode, password: Option<String>) -> TestFeed {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("feed.db");
        let config = Config {
            interval: Interval::new(Duration::from_millis(INTERVAL_MS)).unwrap(),
            currencies: Currency::ALL.to_vec(),
            sources: vec![SourceConfig {
                kind: SourceKind::Demo,
                base_url: String::new(),
            }],
            request_timeout: Duration::from_millis(50),
            source_max_age: Duration::from_secs(300),
            max_move: None,
            db: db.clone(),
            broker,
            publisher_password: password,
            http_listen: "127.0.0.1:0".parse().unwrap(),
            http_limits: Default::default(),
            streams: Default::default(),
            clock: WallClock::System,
            cluster: None,
            elected: None,
            tls: None,
            grpc: None,
        };
        let started = Timedate::now();
        let feed = Feed::build(config).await.unwrap();
        let mqtt = feed.mqtt_addr().unwrap_or_else(|| {
            let url = feed.broker_url();
            format!("{}:{}", url.host, url.port).parse().unwrap()
        });
        let http = feed.http_addr();
        let stop = CancellationToken::new();
        let task = tokio::spawn(feed.run(stop.clone()));
        TestFeed {
            mqtt,
            http,
            store: HistoryStore::open(&db).unwrap(),
            started,
            stop,
            task,
            _dir: dir,
        }
    }

    pub async fn embedded() -> TestFeed {
        TestFeed::start(
            BrokerMode::Embedded {
                listen: "127.0.0.1:0".parse().unwrap(),
                max_sessions: 1000,
                limits: Default::default(),
                ws_listen: None,
            },
            None,
        )
        .await
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }

    /// Waits until the store holds a tick of every currency at or after `t`.
    pub async fn wait_for_tick_at(&self, t: Timedate) {
        testkit::wait_until(
            Duration::from_secs(30),
            "the feed to store ticks",
            || async {
                let mut all = true;
                for c in Currency::ALL {
                    all &= self
                        .store
                        .latest(c)
                        .await
                        .unwrap()
                        .is_some_and(|l| l.timedate >= t);
                }
                all
            },
        )
        .await;
    }

    /// What history holds per currency in `[from, until]`.
    pub async fn stored(
        &self,
        from: Timedate,
        until: &BTreeMap<Currency, Timedate>,
    ) -> BTreeMap<Currency, Vec<Tick>> {
        let mut out = BTreeMap::new();
        for (&c, &last) in until {
            let ticks = self
                .store
                .read(move |s| s.ticks_since(c, from, 1_000_000))
                .await
                .unwrap();
            out.insert(
                c,
                ticks.into_iter().filter(|t| t.timedate <= last).collect(),
            );
        }
        out
    }
}

pub fn subscriber(mqtt: SocketAddr, http: SocketAddr, since: Option<Timedate>) -> SubscriberConfig {
    let mut config =
        SubscriberConfig::new(vec![BrokerUrl::new(mqtt.ip().to_string(), mqtt.port())]);
    config.history = vec![format!("http://{http}")];
    config.since = since;
    config.history_timeout = Duration::from_secs(5);
    config.client_id = "pricesub-test".into();
    config
}

/// What a subscriber delivered: ticks per currency in delivery order, and gaps.
#[derive(Debug, Default)]
pub struct Delivered {
    pub ticks: BTreeMap<Currency, Vec<Tick>>,
    pub gaps: Vec<Gap>,
}

impl Delivered {
    pub fn push(&mut self, event: FeedEvent) {
        match event {
            FeedEvent::Tick(t) => self.ticks.entry(t.currency).or_default().push(t),
            FeedEvent::Gap(g) => self.gaps.push(g),
            FeedEvent::Live | FeedEvent::Status(_) => {}
        }
    }

    pub fn last(&self) -> BTreeMap<Currency, Timedate> {
        self.ticks
            .iter()
            .filter_map(|(c, ticks)| ticks.last().map(|t| (*c, t.timedate)))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.ticks.values().map(Vec::len).sum()
    }
}

/// Asserts the invariant: what was delivered equals what history holds for the same range, per
/// currency, in order, without repeats.
pub async fn assert_matches_history(
    feed: &TestFeed,
    since: Timedate,
    delivered: &Delivered,
    context: &str,
) {
    let last = delivered.last();
    assert_eq!(
        last.len(),
        Currency::ALL.len(),
        "{context}: both currencies delivered"
    );
    let stored = feed.stored(since, &last).await;
    for (c, ticks) in &delivered.ticks {
        let expected = &stored[c];
        if ticks != expected {
            let got: Vec<String> = ticks.iter().map(|t| t.timedate.to_string()).collect();
            let want: Vec<String> = expected.iter().map(|t| t.timedate.to_string()).collect();
            let missing: Vec<&String> = want.iter().filter(|t| !got.contains(t)).collect();
            let extra: Vec<&String> = got.iter().filter(|t| !want.contains(t)).collect();
            panic!(
                "{context}: {c}: delivered {} ticks, history holds {}; missing {missing:?}; extra {extra:?}; in order: {}",
                ticks.len(),
                expected.len(),
                got.windows(2).all(|w| w[0] < w[1])
            );
        }
    }
}
