//! Several nodes on an operator's broker as operators meet them: three etcd members (Debian's
//! etcd 3.4) and one Mosquitto (Debian's, with our ACL) on loopback, and three `pricefeed --broker
//! … --elect etcd://…` nodes (the `etcd` build), each sampling its own local fixture source so
//! the test can count which node asked. Run by `tests/run.sh` after building that binary; one at
//! a time (`--test-threads=1`), since each starts seven processes on a 2-core machine.
//!
//! The slot is the default 5 s and the lease 3 s: a lost leader's lease expires, and the next node
//! is elected, well within one slot, so at most one slot is lost.

#![cfg(feature = "etcd")]

mod nodes;

use std::time::Duration;

use nodes::*;
use testkit::{Cluster, Etcd, Mosquitto, TickSubscriber, assert_refused, binary, wait_until};
use ticks::{Currency, Tick, Timedate};

const INTERVAL: &str = "5s";
const INTERVAL_MS: i64 = 5_000;
const TTL: &str = "3s";
/// Ample for a slot to pass on a loaded machine.
const SLOT: Duration = Duration::from_secs(5);

struct Setup {
    etcd: Etcd,
    mosquitto: Mosquitto,
    cluster: Cluster,
    active: u64,
}

/// etcd, Mosquitto and three nodes, settled: one active, two standbys.
async fn setup() -> Setup {
    let etcd = Etcd::start(3).await;
    let mosquitto = Mosquitto::start().await;
    let mut cluster = Cluster::elected(mosquitto.addr(), &etcd.url(), TTL, 3, INTERVAL).await;
    cluster.start_all().await;
    let active = cluster.settled(WAIT).await;
    Setup {
        etcd,
        mosquitto,
        cluster,
        active,
    }
}

impl Setup {
    fn broker(&self) -> String {
        format!("mqtt://{}", self.mosquitto.addr())
    }

    fn histories(&self) -> Vec<String> {
        self.cluster.nodes.iter().map(|n| n.history_url()).collect()
    }

    /// Requests each node's price source has answered.
    fn source_hits(&self) -> Vec<usize> {
        self.cluster
            .nodes
            .iter()
            .map(|n| n.source.hits().len())
            .collect()
    }

    /// The history of the active node from `since`, as a page.
    async fn page(&self, since: Timedate) -> serde_json::Value {
        let active = self.cluster.settled(WAIT).await;
        let (_, body) = self
            .cluster
            .answers(&format!("since={since}&limit=50000"))
            .await
            .into_iter()
            .find(|(id, _)| *id == active)
            .unwrap();
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }
}

/// Waits for the next live tick of USD after `after`.
async fn next_tick_after(watcher: &mut TickSubscriber, after: Timedate) -> Tick {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Some(m) = watcher.next(SLOT * 2).await {
            let ticks = live_ticks(std::slice::from_ref(&m));
            if let Some(tick) = ticks.into_iter().find(|t| t.timedate > after) {
                return tick;
            }
        }
    }
    panic!("no tick after {after} within {WAIT:?}");
}

/// The slots between consecutive ticks that no tick filled.
fn missing_slots(ticks: &[Tick]) -> Vec<(Timedate, Timedate)> {
    ticks
        .windows(2)
        .filter(|w| w[1].timedate.unix_millis() - w[0].timedate.unix_millis() != INTERVAL_MS)
        .map(|w| (w[0].timedate, w[1].timedate))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_publishes_a_killed_leader_costs_at_most_one_slot_and_a_stopped_one_none() {
    let mut s = setup().await;
    let first = s.active;
    let mut watcher = TickSubscriber::connect(s.mosquitto.addr(), "watcher", "btc/USD").await;
    let start = live_ticks(&watcher.collect(2, WAIT).await);
    let since = start[0].timedate;
    let pricesub = Pricesub::start(&[s.broker()], &s.histories(), since).await;

    // Steady state: only the elected node asks its source, one tick per slot.
    let hits_before = s.source_hits();
    let mut steady = start.clone();
    for _ in 0..2 {
        steady.push(next_tick_after(&mut watcher, steady.last().unwrap().timedate).await);
    }
    let hits_after = s.source_hits();
    for node in &s.cluster.nodes {
        let i = (node.id - 1) as usize;
        if node.id == first {
            assert!(
                hits_after[i] > hits_before[i],
                "the active node samples: {hits_after:?}"
            );
        } else {
            assert_eq!(hits_after[i], 0, "standby {} never asks a source", node.id);
        }
    }
    assert!(missing_slots(&steady).is_empty(), "{steady:?}");

    // kill -9 of the leader: its lease expires, another node is elected and publishes.
    let last_before = steady.last().unwrap().timedate;
    s.cluster.kill(first).await;
    let killed_at = Timedate::now();
    let second = s.cluster.settled(WAIT).await;
    assert_ne!(second, first);
    let resumed = next_tick_after(&mut watcher, last_before).await;
    let lost = (resumed.timedate.unix_millis() - last_before.unix_millis()) / INTERVAL_MS - 1;
    assert!(
        lost <= 1,
        "killed at {killed_at}: the next tick after {last_before} was {} ({lost} slots lost)",
        resumed.timedate
    );
    assert!(
        resumed.timedate.unix_millis() - killed_at.unix_millis() <= 3_000 + INTERVAL_MS,
        "another node publishes within the lease TTL plus one slot: killed at {killed_at}, next tick {}",
        resumed.timedate
    );

    // SIGTERM of the new leader: it resigns, and the next node takes the very next slot.
    let mut around = vec![resumed];
    around.push(next_tick_after(&mut watcher, resumed.timedate).await);
    let status = s.cluster.terminate(second).await;
    assert!(status.success(), "a clean stop: {status}");
    let third = s.cluster.settled(WAIT).await;
    assert!(third != first && third != second);
    for _ in 0..2 {
        around.push(next_tick_after(&mut watcher, around.last().unwrap().timedate).await);
    }
    assert!(
        missing_slots(&around).is_empty(),
        "a resigning leader's successor takes the next slot: {around:?}"
    );

    // The stopped nodes come back as standbys, whole.
    s.cluster.start(first).await;
    s.cluster.start(second).await;
    assert_eq!(s.cluster.settled(WAIT).await, third);
    let page = s.page(since).await;
    for c in Currency::ALL {
        assert!(
            gap_slots(&page, c, INTERVAL_MS) <= 1,
            "{c}: one recorded gap slot at most: {}",
            page["gaps"]
        );
    }
    let query = format!("since={since}&until={}", around.last().unwrap().timedate);
    assert_answers_converge(&s.cluster, &query).await;

    // Nothing twice, and pricesub printed exactly what history holds.
    let printed = pricesub.stop().await;
    for (c, ticks) in &printed {
        assert_unique(ticks, &format!("pricesub {c}"));
    }
    assert_printed_is_history(&s.cluster, since, &printed).await;
    s.cluster.stop(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_etcd_member_lost_keeps_every_slot_and_without_a_majority_nobody_publishes() {
    let mut s = setup().await;
    let mut watcher = TickSubscriber::connect(s.mosquitto.addr(), "watcher", "btc/USD").await;
    let mut status =
        TickSubscriber::connect(s.mosquitto.addr(), "status", "pricefeed/status").await;
    let start = live_ticks(&watcher.collect(2, WAIT).await);
    let since = start[0].timedate;
    let pricesub = Pricesub::start(&[s.broker()], &s.histories(), since).await;

    // The member that leads etcd's own raft (the harder loss: etcd elects a new leader).
    let lost = s.etcd.leader().await.expect("etcd has a leader");
    s.etcd.kill(lost).await;
    let mut ticks = start.clone();
    for _ in 0..4 {
        ticks.push(next_tick_after(&mut watcher, ticks.last().unwrap().timedate).await);
    }
    assert!(
        missing_slots(&ticks).is_empty(),
        "one etcd member lost: publishing continues, every slot: {ticks:?}"
    );
    // Usually the same node; if its keep-alives missed the fence while etcd elected a new leader,
    // another node took over, and still no slot was lost (checked above). Said, not hidden.
    let after = s.cluster.settled(WAIT).await;
    if after != s.active {
        eprintln!(
            "etcd member {lost} lost: the publishing node changed from {} to {after}, no slot lost",
            s.active
        );
    }

    // A second member lost: no majority, so no node may be sure it leads. The leader stops
    // before its lease could expire, says so, and nothing is published.
    let second = (0..3).find(|&i| i != lost).unwrap();
    s.etcd.kill(second).await;
    let no_majority = Timedate::now();
    wait_until(WAIT, "the leader to stop publishing", || async {
        s.cluster.active().await.is_empty()
    })
    .await;
    // Said at the next slot boundary, when the slot loop finds it is no longer active.
    let mut said = Vec::new();
    while let Some(m) = status.next(SLOT * 2).await {
        said.push(m.payload);
        if said.last().unwrap().contains("\"state\":\"offline\"") {
            break;
        }
    }
    assert!(
        said.last()
            .is_some_and(|s| s.contains("\"state\":\"offline\"")),
        "without an etcd majority nobody publishes, and the status says so: {said:?}"
    );
    // Stepped down within the fence (TTL - TTL/6) of its last keep-alive, plus a slot's sampling.
    let last_tick = {
        let mut last = ticks.last().unwrap().timedate;
        while let Some(m) = watcher.next(Duration::from_millis(100)).await {
            for t in live_ticks(std::slice::from_ref(&m)) {
                last = last.max(t.timedate);
            }
        }
        last
    };
    assert!(
        last_tick.unix_millis() <= no_majority.unix_millis() + 3_000,
        "no tick once the lease can have expired: majority lost at {no_majority}, last tick {last_tick}"
    );
    tokio::time::sleep(SLOT * 2).await;
    let mut invented = Vec::new();
    while let Some(m) = watcher.next(Duration::from_millis(100)).await {
        invented.push(m);
    }
    assert!(
        live_ticks(&invented).is_empty(),
        "nothing is published without a majority: {invented:?}"
    );
    for node in &s.cluster.nodes {
        assert_eq!(s.cluster.role(node.id).await.as_deref(), Some("standby"));
    }

    // The members come back: publishing resumes by itself, the outage a recorded gap.
    s.etcd.restart(second).await;
    s.etcd.restart(lost).await;
    s.cluster.settled(WAIT).await;
    let resumed = next_tick_after(&mut watcher, last_tick).await;
    let mut said = Vec::new();
    while let Some(m) = status.next(SLOT).await {
        said.push(m.payload);
    }
    assert!(
        said.last()
            .is_some_and(|s| s.contains("\"state\":\"live\"")),
        "live again: {said:?}"
    );
    let page = s.page(since).await;
    let gaps = page["gaps"].as_array().unwrap();
    assert!(
        gaps.iter().any(|g| g["reason"] == "publisher_down"
            && g["from"].as_str().unwrap() > last_tick.to_string().as_str()
            && g["until"].as_str().unwrap() <= resumed.timedate.to_string().as_str()),
        "the time without a majority is a gap, not filled: {gaps:?}"
    );
    let printed = pricesub.stop().await;
    assert_printed_is_history(&s.cluster, since, &printed).await;
    s.cluster.stop(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_elected_node_says_what_to_fix_in_one_line() {
    let db = tempfile::tempdir().unwrap();
    let db = db.path().join("feed.db");
    let db = db.to_str().unwrap();
    let base = [
        "--db",
        db,
        "--http-listen",
        "127.0.0.1:0",
        "--node-id",
        "1",
        "--cluster-history",
        "1@http://127.0.0.1:1,2@http://127.0.0.1:2",
    ];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let program = binary("pricefeed");
    let program = program.to_str().unwrap();
    for (extra, needle) in [
        (
            &["--elect", "etcd://127.0.0.1:2379"][..],
            "--elect needs --broker",
        ),
        (
            &[
                "--elect",
                "etcd://127.0.0.1:2379",
                "--broker",
                "mqtt://127.0.0.1:1",
                "--broker-password",
                "x",
                "--elect-ttl",
                "1s",
            ][..],
            "--elect-ttl 1s: must be whole seconds from 2 to 60",
        ),
        (
            &["--elect", "127.0.0.1:2379"][..],
            "expected etcd://HOST:PORT",
        ),
        (
            &[
                "--elect",
                "etcd://127.0.0.1:2379",
                "--broker",
                "mqtt://127.0.0.1:1",
                "--broker-password",
                "x",
                "--cluster-raft",
                "1@127.0.0.1:1",
            ][..],
            "cannot be combined with --cluster-grpc, --cluster-raft or --cluster-mqtt",
        ),
    ] {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(program, &args, needle, Duration::from_secs(30)).await;
    }
}
