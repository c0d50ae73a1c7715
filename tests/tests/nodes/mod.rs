//! What the tests of several nodes share (`cluster.rs`: embedded brokers in a raft cluster;
//! `elected.rs`: nodes on Mosquitto elected with etcd): `pricesub` watching, history read back, and
//! the checks that nothing was lost or repeated.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use testkit::{Cluster, Process, Received, wait_until};
use ticks::{Currency, Tick, Timedate};

pub const WAIT: Duration = Duration::from_secs(90);

/// The ticks among `received` that were delivered live (not the retained one on subscribing).
pub fn live_ticks(received: &[Received]) -> Vec<Tick> {
    received
        .iter()
        .filter(|m| !m.retain && m.topic.starts_with("btc/"))
        .map(|m| Tick::from_message(&m.topic, m.payload.as_bytes()).unwrap())
        .collect()
}

/// No (currency, timedate) twice.
pub fn assert_unique(ticks: &[Tick], what: &str) {
    let mut seen = BTreeSet::new();
    for t in ticks {
        assert!(
            seen.insert((t.currency, t.timedate)),
            "{what}: {t:?} delivered twice"
        );
    }
}

/// Waits until every running node answers `query` with the same bytes.
pub async fn assert_answers_converge(cluster: &Cluster, query: &str) -> String {
    let mut last = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        last = cluster.answers(query).await;
        if last.windows(2).all(|w| w[0].1 == w[1].1) && !last[0].1.is_empty() {
            return last[0].1.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("node {}:\n{}", n.id, cluster.log(n.id).join("\n")))
        .collect();
    panic!(
        "the nodes never answered {query} alike: {last:#?}\n{}",
        logs.join("\n")
    );
}

/// `pricesub` printing what it sees, until stopped.
pub struct Pricesub {
    process: Process,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Pricesub {
    /// Starts it and waits until it has printed a first tick.
    pub async fn start(brokers: &[String], history: &[String], since: Timedate) -> Pricesub {
        let brokers = brokers.join(",");
        let history = history.join(",");
        let since = since.to_string();
        let mut process = Process::spawn(
            "pricesub",
            &[
                "--broker",
                &brokers,
                "--history",
                &history,
                "--since",
                &since,
            ],
        );
        let stdout = process.child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut stdout = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let running = Pricesub {
            process,
            lines,
            reader,
        };
        let printing = running.lines.clone();
        wait_until(WAIT, "pricesub's first tick", || {
            let printing = printing.clone();
            async move { !printing.lock().unwrap().is_empty() }
        })
        .await;
        running
    }

    /// Stops it (SIGTERM) and returns what it printed, parsed and checked line by line.
    pub async fn stop(self) -> BTreeMap<Currency, Vec<Tick>> {
        let log = self.process.log();
        let status = self.process.terminate(Duration::from_secs(20)).await;
        assert!(
            status.success(),
            "pricesub: {status}; log:\n{}",
            log.join("\n")
        );
        let _ = self.reader.await;
        let mut out: BTreeMap<Currency, Vec<Tick>> = BTreeMap::new();
        for line in self.lines.lock().unwrap().iter() {
            let (topic, payload) = line.split_once(' ').unwrap();
            let tick = Tick::from_message(topic, payload.as_bytes()).unwrap();
            assert_eq!(*line, tick.line());
            out.entry(tick.currency).or_default().push(tick);
        }
        out
    }
}

/// What the publishing node's history holds from `since` through `until`, for the currencies
/// `until` names.
pub async fn history(
    cluster: &Cluster,
    since: Timedate,
    until: &BTreeMap<Currency, Timedate>,
) -> (BTreeMap<Currency, Vec<Tick>>, serde_json::Value) {
    let active = cluster.settled(WAIT).await;
    let (_, body) = cluster
        .answers(&format!("since={since}&limit=50000"))
        .await
        .into_iter()
        .find(|(id, _)| *id == active)
        .unwrap();
    let page: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let mut out = BTreeMap::new();
    for c in Currency::ALL {
        let ticks: Vec<Tick> = page["ticks"][c.code()]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| Tick::from_message(c.topic(), t.to_string().as_bytes()).unwrap())
            .filter(|t| until.get(&c).is_some_and(|u| t.timedate <= *u))
            .collect();
        out.insert(c, ticks);
    }
    (out, page)
}

/// What `pricesub` printed is what history holds for the same range: nothing missing, nothing
/// twice, in order.
pub async fn assert_printed_is_history(
    cluster: &Cluster,
    since: Timedate,
    printed: &BTreeMap<Currency, Vec<Tick>>,
) {
    let until: BTreeMap<Currency, Timedate> = printed
        .iter()
        .map(|(c, t)| (*c, t.last().unwrap().timedate))
        .collect();
    let (held, _) = history(cluster, since, &until).await;
    for c in Currency::ALL {
        assert_eq!(
            printed.get(&c),
            held.get(&c),
            "{c}: what pricesub printed is what history holds"
        );
    }
}

/// The slots of a currency that history reports as gaps from `since` on.
pub fn gap_slots(page: &serde_json::Value, currency: Currency, interval_ms: i64) -> i64 {
    page["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["currency"] == currency.code())
        .map(|g| {
            let from: Timedate = g["from"].as_str().unwrap().parse().unwrap();
            let until: Timedate = g["until"].as_str().unwrap().parse().unwrap();
            (until.unix_millis() - from.unix_millis()) / interval_ms
        })
        .sum()
}
