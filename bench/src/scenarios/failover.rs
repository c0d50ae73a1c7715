//! Scenario 5, failover: a 3-node cluster (the cluster build) at the product's interval; the
//! publishing node is killed with SIGKILL at a random instant of a slot, again and again. Each time:
//! how many slots got no tick, how long from the kill until a subscriber on another node received
//! the next tick, and how long until another node said it publishes. The killed node is restarted
//! and the cluster settles before the next kill.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use testkit::{Cluster, TickSubscriber};
use ticks::{Interval, Tick, Timedate};

use crate::harness::report::{self, Table, fmt_f};
use crate::harness::servers::CLUSTER_BINARY;

#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// Kills of the publishing node.
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// The feed's interval.
    #[arg(long, default_value = "5s")]
    pub interval: Interval,
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Fail unless every failover lost at most one slot.
    #[arg(long)]
    pub assert_one_slot: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub killed_node: u64,
    pub next_node: u64,
    /// Where in its slot the kill fell, ms.
    pub killed_into_slot_ms: u64,
    /// Slots between the last tick before the kill and the first after it that got no tick.
    pub slots_lost: i64,
    /// From the kill until a subscriber on a surviving node received the next tick.
    pub kill_to_next_tick_ms: u64,
    /// From the kill until another node reported itself active.
    pub kill_to_new_active_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverResult {
    pub interval: String,
    pub failovers: Vec<Failover>,
}

const WAIT: Duration = Duration::from_secs(120);

pub async fn run(args: FailoverArgs) -> anyhow::Result<FailoverResult> {
    let program = testkit::binary_in(&args.bin_dir, CLUSTER_BINARY)?;
    let interval_text = args.interval.to_string();
    let mut cluster = Cluster::with_program(program, 3, &interval_text).await;
    cluster.start_all().await;
    let mut failovers = Vec::new();
    for round in 0..args.kills {
        let active = cluster.settled(WAIT).await;
        let watch = cluster.nodes.iter().find(|n| n.id != active).unwrap();
        let mut watcher =
            TickSubscriber::connect(watch.mqtt, &format!("failover-{round}"), "btc/USD").await;
        // The retained tick, then one live tick: the watcher is in step.
        watcher.collect(2, WAIT).await;
        let slot = args.interval.as_millis() as u64;
        let into_slot = fastrand::u64(0..slot);
        let now_into = Timedate::now().unix_millis() as u64 % slot;
        let wait = (into_slot + slot - now_into) % slot;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let mut last_before: Option<Tick> = None;
        while let Some(m) = watcher.next(Duration::ZERO).await {
            last_before = Some(Tick::from_message(&m.topic, m.payload.as_bytes())?);
        }
        let killed_at = Instant::now();
        let killed_wall = Timedate::now();
        cluster.kill(active).await;
        let new_active = tokio::spawn({
            let ids: Vec<u64> = cluster
                .nodes
                .iter()
                .filter(|n| n.id != active)
                .map(|n| n.id)
                .collect();
            let urls: Vec<(u64, String)> = cluster
                .nodes
                .iter()
                .filter(|n| ids.contains(&n.id))
                .map(|n| (n.id, n.history_url()))
                .collect();
            async move {
                loop {
                    for (id, url) in &urls {
                        let (_, body, _) = testkit::run_command(
                            "curl",
                            &["-s", "--max-time", "1", &format!("{url}/readyz")],
                            WAIT,
                        )
                        .await;
                        if body.contains("\"role\":\"active\"") {
                            return (*id, killed_at.elapsed());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        let (next, next_after) = loop {
            let m = watcher
                .next(WAIT)
                .await
                .ok_or_else(|| anyhow::anyhow!("no tick within {WAIT:?} of the kill"))?;
            let tick = Tick::from_message(&m.topic, m.payload.as_bytes())?;
            if tick.timedate > killed_wall
                || last_before.is_some_and(|l| tick.timedate > l.timedate)
            {
                break (tick, killed_at.elapsed());
            }
        };
        let (next_node, to_active) = new_active.await?;
        let before = last_before
            .map(|t| t.timedate)
            .unwrap_or_else(|| args.interval.slot_of(killed_wall));
        let slots_lost =
            (next.timedate.unix_millis() - before.unix_millis()) / args.interval.as_millis() - 1;
        let f = Failover {
            killed_node: active,
            next_node,
            killed_into_slot_ms: into_slot,
            slots_lost,
            kill_to_next_tick_ms: next_after.as_millis() as u64,
            kill_to_new_active_ms: to_active.as_millis() as u64,
        };
        eprintln!("failover: {}", serde_json::to_string(&f)?);
        failovers.push(f);
        cluster.start(active).await;
    }
    cluster.stop(Duration::from_secs(10)).await;
    let result = FailoverResult {
        interval: interval_text,
        failovers,
    };
    std::fs::create_dir_all(&args.out)?;
    report::write_json(&args.out.join("failover.json"), &result)?;
    let table = table(&result);
    report::write_table(&args.out.join("failover.md"), &table)?;
    println!("{}", table.markdown());
    if args.assert_one_slot {
        let worst = result.failovers.iter().map(|f| f.slots_lost).max();
        anyhow::ensure!(
            worst.is_none_or(|w| w <= 1),
            "a failover lost {worst:?} slots"
        );
    }
    Ok(result)
}

fn table(r: &FailoverResult) -> Table {
    let mut t = Table::new(
        &format!(
            "Failover: SIGKILL of the publishing node of a 3-node cluster at a random instant of its {} slot, {} times",
            r.interval,
            r.failovers.len()
        ),
        &["measure", "p50", "max", "per failover"],
    );
    let sorted = |f: &dyn Fn(&Failover) -> u64| {
        let mut v: Vec<u64> = r.failovers.iter().map(f).collect();
        v.sort_unstable();
        v
    };
    let pick = |v: &[u64], p: f64| -> String {
        if v.is_empty() {
            return "—".into();
        }
        let i = ((v.len() - 1) as f64 * p / 100.0).round() as usize;
        v[i].to_string()
    };
    let lost = sorted(&|f| f.slots_lost.max(0) as u64);
    let next = sorted(&|f| f.kill_to_next_tick_ms);
    let active = sorted(&|f| f.kill_to_new_active_ms);
    let list =
        |f: &dyn Fn(&Failover) -> String| r.failovers.iter().map(f).collect::<Vec<_>>().join(", ");
    t.row(vec![
        "slots without a tick".into(),
        pick(&lost, 50.0),
        pick(&lost, 100.0),
        list(&|f| f.slots_lost.to_string()),
    ]);
    t.row(vec![
        "kill → next tick received, ms".into(),
        pick(&next, 50.0),
        pick(&next, 100.0),
        list(&|f| f.kill_to_next_tick_ms.to_string()),
    ]);
    t.row(vec![
        "kill → another node active, ms".into(),
        pick(&active, 50.0),
        pick(&active, 100.0),
        list(&|f| f.kill_to_new_active_ms.to_string()),
    ]);
    t.row(vec![
        "kill instant into the slot, ms".into(),
        String::new(),
        String::new(),
        list(&|f| f.killed_into_slot_ms.to_string()),
    ]);
    t.row(vec![
        "mean kill → next tick, s".into(),
        fmt_f(
            next.iter().sum::<u64>() as f64 / next.len().max(1) as f64 / 1000.0,
            2,
        ),
        String::new(),
        String::new(),
    ]);
    t
}
