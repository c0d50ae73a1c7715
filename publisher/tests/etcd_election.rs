//! The etcd election against a real etcd (Debian's 3.4): one leader at a time, a leader cut off
//! from etcd steps down before another can be elected (fencing), and a resigning leader hands
//! over at once. `cargo test -p publisher --features etcd`.

#![cfg(feature = "etcd")]

use std::sync::Arc;
use std::time::Duration;

use publisher::etcd::{DEFAULT_NAME, EtcdLeadership, EtcdSettings};
use publisher::leadership::Leadership;
use testkit::{Etcd, Proxy, wait_until};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn settings(endpoints: &str, ttl: u64) -> EtcdSettings {
    EtcdSettings {
        endpoints: EtcdSettings::parse_endpoints(endpoints).unwrap(),
        name: DEFAULT_NAME.into(),
        ttl: Duration::from_secs(ttl),
    }
}

async fn leads(election: &Arc<EtcdLeadership>) -> bool {
    election.check().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_steps_down_before_another_is_elected() {
    let etcd = Etcd::start(1).await;
    let direct = etcd.url();
    let member: std::net::SocketAddr = direct.strip_prefix("etcd://").unwrap().parse().unwrap();
    // Node 1 reaches etcd only through a proxy the test cuts.
    let proxy = Proxy::start(member).await;
    let stop = CancellationToken::new();
    let one = EtcdLeadership::start(
        settings(&format!("etcd://{}", proxy.addr()), 3),
        1,
        stop.clone(),
    )
    .await
    .unwrap();
    wait_until(WAIT, "node 1 to lead", || async { leads(&one).await }).await;
    let two = EtcdLeadership::start(settings(&direct, 3), 2, stop.clone())
        .await
        .unwrap();
    wait_until(WAIT, "node 2 to know node 1 leads", || async {
        two.leader().await == Some(1)
    })
    .await;
    assert!(!leads(&two).await, "one leader at a time");

    proxy.set_refusing(true);
    proxy.cut();
    let cut = Instant::now();
    // Every 10 ms: the last instant node 1 thought it led, the first node 2 did.
    let mut one_last = None;
    let mut two_first = None;
    let mut one_alive_until = None;
    while two_first.is_none() && cut.elapsed() < WAIT {
        let now = Instant::now();
        if leads(&one).await {
            one_last = Some(now);
            one_alive_until = one.lease_alive_until();
        }
        if leads(&two).await {
            two_first = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (one_last, two_first, alive_until) = (
        one_last.expect("node 1 led when cut"),
        two_first.expect("node 2 is elected once node 1's lease expires"),
        one_alive_until.unwrap(),
    );
    assert!(
        one_last < two_first,
        "never two leaders: node 1 last led {:?} after the cut, node 2 first {:?}",
        one_last - cut,
        two_first - cut
    );
    let margin = settings(&direct, 3).fence_margin();
    assert!(
        one_last + margin <= alive_until + Duration::from_millis(20),
        "node 1 stepped down a fence margin before its lease could expire"
    );
    eprintln!(
        "cut at 0: node 1 stepped down after {:?}, node 2 led after {:?}",
        one_last - cut,
        two_first - cut
    );

    // Healed, node 1 campaigns again and stands by.
    proxy.set_refusing(false);
    wait_until(WAIT, "node 1 to see node 2 lead", || async {
        one.leader().await == Some(2)
    })
    .await;
    assert!(!leads(&one).await);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resigning_leader_hands_over_at_once_not_after_its_lease() {
    let etcd = Etcd::start(1).await;
    let stop = CancellationToken::new();
    // A long lease: waiting for it to expire would take 20 s.
    let one = EtcdLeadership::start(settings(&etcd.url(), 20), 1, stop.clone())
        .await
        .unwrap();
    wait_until(WAIT, "node 1 to lead", || async { leads(&one).await }).await;
    let two = EtcdLeadership::start(settings(&etcd.url(), 20), 2, stop.clone())
        .await
        .unwrap();
    wait_until(WAIT, "node 2 to campaign", || async {
        etcd.keys(DEFAULT_NAME).await.len() == 2
    })
    .await;
    assert!(
        one.others_can_take_over().await,
        "node 2 waits in the election"
    );
    let resigned = Instant::now();
    one.resign().await;
    assert!(!leads(&one).await);
    wait_until(Duration::from_secs(10), "node 2 to lead", || async {
        leads(&two).await
    })
    .await;
    eprintln!("node 2 led {:?} after node 1 resigned", resigned.elapsed());
    assert_eq!(
        etcd.keys(DEFAULT_NAME).await.len(),
        1,
        "node 1 left the election"
    );
    assert!(
        !two.others_can_take_over().await,
        "nobody else is in the election"
    );
    stop.cancel();
}
