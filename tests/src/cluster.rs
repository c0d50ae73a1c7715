//! [`Cluster`]: N `pricefeed` nodes on loopback, each started, killed and restarted by the test:
//! either one raft cluster of embedded brokers (the `cluster` build), or nodes on one external
//! broker elected with etcd (the `etcd` build, [`Cluster::elected`]).
//!
//! Raft and cluster-gRPC addresses must be fixed in advance (every node lists every other), so the
//! ports are free ports picked up front. Each node's raft and gRPC are reached through a [`Proxy`]
//! the test can cut, which isolates that node from the others (they no longer hear it; it hears
//! them but its answers are lost): a partition. Each node samples its own local fixture server,
//! so the test can count which node asked the sources.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::feed::FeedProcess;
use crate::fixtures::FixtureServer;
use crate::process::{bin_dir, free_port_below_ephemeral, run_command};
use crate::proxy::Proxy;

/// The publisher password every node of a test cluster shares.
pub const CLUSTER_PASSWORD: &str = "cluster-test-password";

/// How long a node may take to start (a loaded 2-core machine, a debug build).
const START_WITHIN: Duration = Duration::from_secs(60);

/// One node's fixed addresses and what it is running.
pub struct Node {
    pub id: u64,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    pub db: PathBuf,
    /// Its price source.
    pub source: FixtureServer,
    raft: u16,
    grpc: u16,
    raft_proxy: Proxy,
    grpc_proxy: Proxy,
    pub process: Option<FeedProcess>,
    /// What its earlier runs logged, oldest first (see [`Cluster::logs`]); shared with their
    /// stderr readers, which may still be adding the last lines.
    ended: Vec<Arc<Mutex<Vec<String>>>>,
}

impl Node {
    pub fn history_url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn broker_url(&self) -> String {
        format!("mqtt://{}", self.mqtt)
    }
}

/// How the nodes find each other and elect the publishing one.
enum Topology {
    /// Their embedded brokers join one raft cluster.
    Raft,
    /// They publish to one external broker and are elected with etcd.
    Elected {
        broker: String,
        etcd: String,
        ttl: String,
    },
}

/// The cluster.
pub struct Cluster {
    pub nodes: Vec<Node>,
    program: PathBuf,
    topology: Topology,
    interval: String,
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` nodes of this workspace's `pricefeed` sampling the Kraken fixture every `interval`,
    /// none started yet.
    pub async fn new(n: u64, interval: &str) -> Cluster {
        Cluster::with_program(bin_dir().join("pricefeed"), n, interval).await
    }

    /// [`Cluster::new`] running `program`, a cluster build of `pricefeed`.
    pub async fn with_program(program: PathBuf, n: u64, interval: &str) -> Cluster {
        assert!(
            has_feature(&program, "cluster"),
            "{} was built without the cluster feature: cargo build --features publisher/cluster --bin pricefeed",
            program.display()
        );
        Cluster::build(program, Topology::Raft, n, interval).await
    }

    /// `n` nodes of this workspace's `pricefeed` (the `etcd` build) publishing to the external
    /// `broker` (Mosquitto, with the kit's publisher password), elected by the etcd members of
    /// `etcd` (`etcd://…`) with leases of `ttl`; none started yet.
    pub async fn elected(
        broker: SocketAddr,
        etcd: &str,
        ttl: &str,
        n: u64,
        interval: &str,
    ) -> Cluster {
        let program = bin_dir().join("pricefeed");
        assert!(
            has_feature(&program, "etcd"),
            "{} was built without the etcd feature: cargo build --features publisher/etcd --bin pricefeed",
            program.display()
        );
        let topology = Topology::Elected {
            broker: format!("mqtt://{broker}"),
            etcd: etcd.to_string(),
            ttl: ttl.to_string(),
        };
        let mut cluster = Cluster::build(program, topology, n, interval).await;
        for node in &mut cluster.nodes {
            node.mqtt = broker;
        }
        cluster
    }

    async fn build(program: PathBuf, topology: Topology, n: u64, interval: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for id in 1..=n {
            // Every port a node binds, some late (raft and gRPC after joining), and all again
            // when it restarts: none may be handed meanwhile to an outgoing connection.
            let port = free_port_below_ephemeral;
            let (raft, grpc) = (port(), port());
            nodes.push(Node {
                id,
                mqtt: SocketAddr::from(([127, 0, 0, 1], port())),
                http: SocketAddr::from(([127, 0, 0, 1], port())),
                db: dir.path().join(format!("node{id}.db")),
                source: FixtureServer::kraken().await,
                raft,
                grpc,
                raft_proxy: Proxy::start(SocketAddr::from(([127, 0, 0, 1], raft))).await,
                grpc_proxy: Proxy::start(SocketAddr::from(([127, 0, 0, 1], grpc))).await,
                process: None,
                ended: Vec::new(),
            });
        }
        Cluster {
            nodes,
            program,
            topology,
            interval: interval.to_string(),
            extra: Vec::new(),
            _dir: dir,
        }
    }

    /// Extra flags for every node started from now on (e.g. a slow recorder).
    pub fn set_extra(&mut self, flags: &[&str]) {
        self.extra = flags.iter().map(|f| f.to_string()).collect();
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// The flags every node shares: the membership, through each node's proxies.
    fn membership(&self) -> Vec<String> {
        let list = |f: &dyn Fn(&Node) -> String| {
            self.nodes
                .iter()
                .map(|n| format!("{}@{}", n.id, f(n)))
                .collect::<Vec<_>>()
                .join(",")
        };
        if let Topology::Elected { broker, etcd, ttl } = &self.topology {
            return vec![
                "--broker".into(),
                broker.clone(),
                "--broker-password".into(),
                crate::mosquitto::MOSQUITTO_PUBLISHER_PASSWORD.into(),
                "--elect".into(),
                etcd.clone(),
                "--elect-ttl".into(),
                ttl.clone(),
                "--cluster-history".into(),
                list(&|n| n.history_url()),
            ];
        }
        vec![
            "--cluster-grpc".into(),
            list(&|n| n.grpc_proxy.addr().to_string()),
            "--cluster-raft".into(),
            list(&|n| n.raft_proxy.addr().to_string()),
            "--cluster-mqtt".into(),
            list(&|n| n.mqtt.to_string()),
            "--cluster-history".into(),
            list(&|n| n.history_url()),
            "--broker-password".into(),
            CLUSTER_PASSWORD.into(),
        ]
    }

    /// Starts node `id` (its process logs "pricefeed running" once its HTTP and broker listen; it
    /// joins the cluster in the background).
    pub async fn start(&mut self, id: u64) {
        let mut flags: Vec<String> = vec![
            "--node-id".into(),
            id.to_string(),
            "--interval".into(),
            self.interval.clone(),
            "--source".into(),
            "kraken".into(),
            "--source-url".into(),
            format!("kraken={}", self.node(id).source.url()),
            "--http-listen".into(),
            self.node(id).http.to_string(),
        ];
        if let Topology::Raft = self.topology {
            flags.extend([
                "--cluster-raft-listen".into(),
                format!("127.0.0.1:{}", self.node(id).raft),
                "--cluster-grpc-listen".into(),
                format!("127.0.0.1:{}", self.node(id).grpc),
                "--mqtt-listen".into(),
                self.node(id).mqtt.to_string(),
            ]);
        }
        flags.extend(self.membership());
        flags.extend(self.extra.iter().cloned());
        let node = self.node(id);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let process = FeedProcess::launch_program(&self.program, &node.db, &flags)
            .await
            .unwrap_or_else(|e| panic!("node {id}: {e:#}"));
        self.node_mut(id).process = Some(process);
    }

    /// Starts every node at once.
    pub async fn start_all(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        // Spawned together; each waits for its own "running" line.
        for id in ids {
            self.start(id).await;
        }
    }

    /// The running nodes' processes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.process.as_ref().map(|p| p.process.pid))
            .collect()
    }

    /// Stops every node (SIGTERM, then SIGKILL after `within`).
    pub async fn stop(mut self, within: Duration) {
        for node in &mut self.nodes {
            if let Some(feed) = node.process.take() {
                feed.process.stop(within).await;
            }
        }
    }

    /// SIGKILL: the node vanishes at once (its MQTT wills fire).
    pub async fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(mut feed) = node.process.take() {
            node.ended.push(feed.process.log.clone());
            let _ = feed.process.child.kill().await;
        }
    }

    /// SIGTERM, and the exit status.
    pub async fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let node = self.node_mut(id);
        let feed = node.process.take().expect("the node is running");
        node.ended.push(feed.process.log.clone());
        feed.process.terminate(Duration::from_secs(30)).await
    }

    /// Everything every node logged, its ended runs and the running one, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let running = node.process.as_ref().map(|p| &p.process.log);
            for (run, log) in node.ended.iter().chain(running).enumerate() {
                let log = log.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
                out.push_str(&format!("\n--- node {} run {}:\n{log}", node.id, run + 1));
            }
        }
        out
    }

    /// What node `id` logged (nothing if it is not running).
    pub fn log(&self, id: u64) -> Vec<String> {
        self.node(id)
            .process
            .as_ref()
            .map(|p| p.process.log())
            .unwrap_or_default()
    }

    /// Cuts node `id` off from the others (or heals it).
    pub fn partition(&self, id: u64, cut: bool) {
        let node = self.node(id);
        for proxy in [&node.raft_proxy, &node.grpc_proxy] {
            proxy.set_refusing(cut);
            if cut {
                proxy.cut();
            }
        }
    }

    /// Node `id`'s `/readyz`, parsed (None when it does not answer).
    pub async fn readyz(&self, id: u64) -> Option<serde_json::Value> {
        let url = format!("{}/readyz", self.node(id).history_url());
        let (status, body, _) =
            run_command("curl", &["-s", "--max-time", "2", &url], START_WITHIN).await;
        if !status.success() {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// The role node `id` reports (`catching_up`, `standby`, `active`), if it answers.
    pub async fn role(&self, id: u64) -> Option<String> {
        self.readyz(id)
            .await
            .and_then(|r| r["node"]["role"].as_str().map(str::to_string))
    }

    /// The running nodes that report themselves active.
    pub async fn active(&self) -> Vec<u64> {
        let mut active = Vec::new();
        for node in &self.nodes {
            if node.process.is_some() && self.role(node.id).await.as_deref() == Some("active") {
                active.push(node.id);
            }
        }
        active
    }

    /// Waits until exactly one running node is active and every other running node is a
    /// standby; returns the active one.
    pub async fn settled(&self, within: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut roles = Vec::new();
            for node in self.nodes.iter().filter(|n| n.process.is_some()) {
                roles.push((node.id, self.role(node.id).await));
            }
            let active: Vec<u64> = roles
                .iter()
                .filter(|(_, r)| r.as_deref() == Some("active"))
                .map(|(id, _)| *id)
                .collect();
            let standby = roles
                .iter()
                .filter(|(_, r)| r.as_deref() == Some("standby"))
                .count();
            if active.len() == 1 && active.len() + standby == roles.len() {
                return active[0];
            }
            if tokio::time::Instant::now() > deadline {
                let mut logs = String::new();
                for (id, _) in &roles {
                    let log = self.log(*id);
                    let state = self
                        .node(*id)
                        .process
                        .as_ref()
                        .and_then(|p| {
                            std::fs::read_to_string(format!("/proc/{}/stat", p.process.pid)).ok()
                        })
                        .and_then(|stat| {
                            let (_, rest) = stat.rsplit_once(") ")?;
                            rest.split(' ').next().map(str::to_string)
                        })
                        .unwrap_or_else(|| "gone".into());
                    // A node that ended (Z: exited, not yet reaped) says why before its backtrace:
                    // its whole log; of a running one, the end.
                    let keep = if state == "Z" || state == "gone" {
                        200
                    } else {
                        15
                    };
                    let tail = &log[log.len().saturating_sub(keep)..];
                    logs.push_str(&format!(
                        "\n--- node {id} (process state {state}), last lines:\n{}",
                        tail.join("\n")
                    ));
                }
                panic!("the cluster did not settle within {within:?}: {roles:?}{logs}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every `/v1/ticks` answer of `query` (say `since=…&currency=USD,EUR`) of the running nodes.
    pub async fn answers(&self, query: &str) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for node in self.nodes.iter().filter(|n| n.process.is_some()) {
            let url = format!("{}/v1/ticks?{query}", node.history_url());
            let (_, body, _) =
                run_command("curl", &["-s", "--max-time", "10", &url], START_WITHIN).await;
            out.push((node.id, body));
        }
        out
    }
}

/// Whether a `pricefeed` binary was built with `feature`: its `--version` lists it, as in
/// "0.1.0 (cluster, etcd)".
fn has_feature(program: &std::path::Path, feature: &str) -> bool {
    let version = std::process::Command::new(program)
        .arg("--version")
        .output();
    let Ok(out) = version else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .is_some_and(|(features, _)| features.split(", ").any(|f| f == feature))
}
