//! The embedded broker as one node of rmqtt's raft cluster (cargo feature `cluster`).
//!
//! Every node runs the same embedded broker; their brokers join one raft cluster
//! (`rmqtt-cluster-raft` 0.24.0), which replicates subscriptions and sessions, forwards each
//! publish to the nodes with subscribers over gRPC, and copies retained messages to every node.
//! Facts about it this module works around, each found by reading its source and checked in a
//! 3-node test (`tests/tests/cluster.rs`):
//!
//! - Raft and node-gRPC addresses are static: every node must know every other node's address,
//!   so neither can be port 0. A node may bind another address than the one it advertises (a
//!   container binding 0.0.0.0, a test proxy in front).
//! - A node id of 0 is refused by raft, and a cluster of one node panics (`select_ok` on no
//!   peers): membership is validated before anything starts.
//! - `leader_id = 0` lets nodes started together each lead a cluster of their own. We set it to
//!   the lowest id: that node leads if it finds no leader, the others join whichever node leads.
//! - Joining fails at once with "leader does not exist" when the first peer to answer is running
//!   but knows no leader (rmqtt issue #330), and after 30 s when no peer answers. Either happens
//!   before the plugin binds anything, so the join is simply tried again, for as long as it takes.
//! - A failure once raft runs (its port taken, a join refused) ends the process from inside the
//!   plugin (`std::process::exit(-1)`, status 255), logged through the `log` crate as "Raft
//!   service startup failed". The ports are checked before the plugin starts, so the common cause
//!   (a port in use) is a clear error of ours instead.
//! - There is no leader-change event. [`ClusterHandle::status`] reads the local raft state
//!   (`health_status`) and the peers' availability from the plugin's `attrs`; a node that is cut
//!   off still calls itself leader of a cluster of one, so callers count available peers against
//!   the configured membership ([`ClusterStatus::leads_a_majority`]).
//! - The node-gRPC server is started by the embedder, not by the plugin.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// One node of a cluster: its id and the addresses the others reach it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// 1 or more, unique in the cluster.
    pub id: u64,
    /// Where the other nodes' brokers forward publishes (node gRPC), `host:port`.
    pub grpc: String,
    /// Where the other nodes' raft reaches this one, `host:port`.
    pub raft: String,
}

/// The membership of a cluster, the same on every node, and which node this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node_id: u64,
    pub nodes: Vec<ClusterNode>,
    /// Where this node binds its node-gRPC server (default: the port of its own `grpc` address on
    /// every interface it names, see [`ClusterConfig::grpc_bind`]).
    pub grpc_listen: Option<SocketAddr>,
    /// Where this node binds raft (default: its own `raft` address).
    pub raft_listen: Option<SocketAddr>,
}

/// Why a cluster configuration cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCluster {
    #[error("node id 0 is not allowed (ids start at 1)")]
    ZeroId,
    #[error("node {0} is listed twice")]
    Duplicate(u64),
    #[error("a cluster needs at least 2 nodes (3 to survive the loss of one); {0} given")]
    TooSmall(usize),
    #[error("this node's id {0} is not among the cluster's nodes")]
    NotAMember(u64),
    #[error("{0:?} is not NODE@HOST:PORT (e.g. 1@10.0.0.1:5363)")]
    Entry(String),
    #[error("node {id}: {what} address {addr:?} has no port")]
    NoPort {
        id: u64,
        what: &'static str,
        addr: String,
    },
    #[error("node {id}: {what} port 0 cannot be reached by the other nodes; give a fixed port")]
    PortZero { id: u64, what: &'static str },
    #[error("nodes are listed for gRPC ({grpc:?}) and raft ({raft:?}) differently")]
    Mismatch { grpc: Vec<u64>, raft: Vec<u64> },
}

/// `ID@HOST:PORT`, as the cluster flags list nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    pub id: u64,
    pub addr: String,
}

impl FromStr for NodeAddr {
    type Err = BadCluster;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, addr) = s
            .trim()
            .split_once('@')
            .ok_or_else(|| BadCluster::Entry(s.to_string()))?;
        let id: u64 = id.parse().map_err(|_| BadCluster::Entry(s.to_string()))?;
        if addr.is_empty() || addr.contains(char::is_whitespace) {
            return Err(BadCluster::Entry(s.to_string()));
        }
        Ok(NodeAddr {
            id,
            addr: addr.to_string(),
        })
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

impl ClusterConfig {
    /// The cluster from the two address lists the flags give (each `ID@HOST:PORT`, every node,
    /// this one included), checked: ids from 1, no duplicates, the same nodes in both lists, at
    /// least two, this node among them, fixed ports.
    pub fn new(
        node_id: u64,
        grpc: &[NodeAddr],
        raft: &[NodeAddr],
    ) -> Result<ClusterConfig, BadCluster> {
        let ids = |list: &[NodeAddr]| {
            let mut ids: Vec<u64> = list.iter().map(|n| n.id).collect();
            ids.sort_unstable();
            ids
        };
        let (grpc_ids, raft_ids) = (ids(grpc), ids(raft));
        if grpc_ids != raft_ids {
            return Err(BadCluster::Mismatch {
                grpc: grpc_ids,
                raft: raft_ids,
            });
        }
        if grpc_ids.contains(&0) || node_id == 0 {
            return Err(BadCluster::ZeroId);
        }
        if let Some(w) = grpc_ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(BadCluster::Duplicate(w[0]));
        }
        if grpc_ids.len() < 2 {
            return Err(BadCluster::TooSmall(grpc_ids.len()));
        }
        if !grpc_ids.contains(&node_id) {
            return Err(BadCluster::NotAMember(node_id));
        }
        let mut nodes = Vec::new();
        for g in grpc {
            let r = raft.iter().find(|r| r.id == g.id).expect("same ids");
            for (what, addr) in [("gRPC", &g.addr), ("raft", &r.addr)] {
                match port_of(addr) {
                    None => {
                        return Err(BadCluster::NoPort {
                            id: g.id,
                            what,
                            addr: addr.clone(),
                        });
                    }
                    Some(0) => return Err(BadCluster::PortZero { id: g.id, what }),
                    Some(_) => {}
                }
            }
            nodes.push(ClusterNode {
                id: g.id,
                grpc: g.addr.clone(),
                raft: r.addr.clone(),
            });
        }
        nodes.sort_by_key(|n| n.id);
        Ok(ClusterConfig {
            node_id,
            nodes,
            grpc_listen: None,
            raft_listen: None,
        })
    }

    /// This node.
    pub fn me(&self) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.id == self.node_id)
            .expect("validated: this node is a member")
    }

    /// The node that leads a cluster started from nothing: the lowest id.
    pub fn bootstrap_leader(&self) -> u64 {
        self.nodes[0].id
    }

    /// How many nodes make a majority.
    pub fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// Where the node-gRPC server binds: `grpc_listen`, else the port of this node's `grpc`
    /// address on the address it names if that is an IP, on every interface if it is a name.
    pub fn grpc_bind(&self) -> SocketAddr {
        self.grpc_listen.unwrap_or_else(|| bind_of(&self.me().grpc))
    }

    /// Where raft binds: `raft_listen`, else as for [`ClusterConfig::grpc_bind`].
    pub fn raft_bind(&self) -> SocketAddr {
        self.raft_listen.unwrap_or_else(|| bind_of(&self.me().raft))
    }

    /// The configuration of the `rmqtt-cluster-raft` plugin.
    pub fn plugin_toml(&self) -> String {
        let list = |f: fn(&ClusterNode) -> &str| {
            self.nodes
                .iter()
                .map(|n| format!("\"{}@{}\"", n.id, f(n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            r#"
worker_threads = 2
node_grpc_addrs = [{grpc}]
raft_peer_addrs = [{raft}]
leader_id = {leader}
laddr = "{laddr}"

[raft]
# A restarted node binds its port again while the old sockets are in TIME_WAIT.
grpc_reuseaddr = true
"#,
            grpc = list(|n| &n.grpc),
            raft = list(|n| &n.raft),
            leader = self.bootstrap_leader(),
            laddr = self.raft_bind(),
        )
    }
}

/// `host:port` to bind: the IP if the host is one, every interface otherwise.
fn bind_of(addr: &str) -> SocketAddr {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return sa;
    }
    let port = port_of(addr).unwrap_or(0);
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// What this node's raft says about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The broker has joined the raft cluster (it is still trying while false).
    pub joined: bool,
    /// Raft runs and has a leader.
    pub running: bool,
    pub leader_id: Option<u64>,
    pub node_id: u64,
    /// Other members this node's raft currently reaches.
    pub peers_available: usize,
    /// Configured members, this node included.
    pub members: usize,
}

impl ClusterStatus {
    /// This node leads, and reaches enough of the *configured* membership to be a majority: a node
    /// cut off from the others still leads a cluster of one, and must not count.
    pub fn leads_a_majority(&self) -> bool {
        self.joined
            && self.running
            && self.leader_id == Some(self.node_id)
            && 1 + self.peers_available > self.members / 2
    }
}

#[cfg(feature = "cluster")]
pub(crate) mod raft {
    //! What talks to rmqtt's cluster plugin.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use rmqtt::context::ServerContext;

    use super::{ClusterConfig, ClusterStatus};
    use crate::error::BrokerError;

    const PLUGIN: &str = "rmqtt-cluster-raft";

    /// Checks the raft and gRPC ports can be bound before the plugin tries (it would end the
    /// process instead of saying why).
    pub(crate) fn check_ports(cluster: &ClusterConfig) -> Result<(), BrokerError> {
        for (what, addr) in [("raft", cluster.raft_bind()), ("gRPC", cluster.grpc_bind())] {
            std::net::TcpListener::bind(addr).map_err(|e| BrokerError::ClusterPort {
                what,
                addr,
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Starts the node-gRPC server on the broker's runtime.
    pub(crate) fn start_grpc(scx: &ServerContext, cluster: &ClusterConfig) {
        let addr = cluster.grpc_bind();
        let server = rmqtt::grpc::GrpcServer::new(scx.clone());
        tokio::spawn(async move {
            if let Err(error) = server.listen_and_serve(addr, true, false).await {
                tracing::error!(%addr, %error, "the cluster gRPC server stopped");
            }
        });
    }

    /// Joins the cluster, trying again for as long as it takes (the other nodes may start later).
    pub(crate) async fn join(scx: &ServerContext, joined: &AtomicBool) {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match rmqtt_cluster_raft::register(scx, true, false).await {
                Ok(()) => {
                    joined.store(true, Ordering::Release);
                    tracing::info!(attempt, "joined the broker cluster");
                    return;
                }
                Err(error) => {
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(%error, attempt, "cannot join the broker cluster yet; trying again");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// This node's view of the cluster.
    pub(crate) async fn status(
        scx: &ServerContext,
        cluster: &ClusterConfig,
        joined: &Arc<AtomicBool>,
    ) -> ClusterStatus {
        let mut status = ClusterStatus {
            node_id: cluster.node_id,
            members: cluster.nodes.len(),
            ..ClusterStatus::default()
        };
        if !joined.load(Ordering::Acquire) {
            return status;
        }
        status.joined = true;
        if let Ok(health) = scx.extends.shared().await.health_status().await {
            status.running = health.running;
            status.leader_id = health.leader_id.filter(|&id| id != 0);
        }
        let attrs = match scx.plugins.get(PLUGIN) {
            Some(entry) => entry.to_info(PLUGIN).await.ok().map(|info| info.attrs),
            None => None,
        };
        if let Some(peers) = attrs
            .and_then(|a| serde_json::from_slice::<serde_json::Value>(&a).ok())
            .as_ref()
            .and_then(|a| a["raft_status"]["peers"].as_object().cloned())
        {
            status.peers_available = peers
                .iter()
                .filter(|(id, peer)| {
                    id.parse::<u64>().ok() != Some(cluster.node_id)
                        && peer["available"].as_bool() == Some(true)
                })
                .count();
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<NodeAddr> {
        s.split(',').map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn a_valid_cluster_and_its_plugin_configuration() {
        let c = ClusterConfig::new(
            2,
            &list("1@10.0.0.1:5363,2@10.0.0.2:5363,3@node3:5363"),
            &list("3@node3:6003,1@10.0.0.1:6003,2@10.0.0.2:6003"),
        )
        .unwrap();
        assert_eq!(c.me().raft, "10.0.0.2:6003");
        assert_eq!(c.bootstrap_leader(), 1);
        assert_eq!(c.majority(), 2);
        assert_eq!(c.raft_bind(), "10.0.0.2:6003".parse().unwrap());
        let toml = c.plugin_toml();
        assert!(toml.contains(
            r#"node_grpc_addrs = ["1@10.0.0.1:5363", "2@10.0.0.2:5363", "3@node3:5363"]"#
        ));
        assert!(toml.contains(
            r#"raft_peer_addrs = ["1@10.0.0.1:6003", "2@10.0.0.2:6003", "3@node3:6003"]"#
        ));
        assert!(toml.contains("leader_id = 1\n"));
        assert!(toml.contains("laddr = \"10.0.0.2:6003\"\n"));
        let three = ClusterConfig::new(
            3,
            &list("1@a:1,2@b:1,3@node3:5363"),
            &list("1@a:2,2@b:2,3@node3:6003"),
        )
        .unwrap();
        // A host name binds every interface.
        assert_eq!(three.grpc_bind(), "0.0.0.0:5363".parse().unwrap());
    }

    #[test]
    fn every_way_a_cluster_cannot_work_is_named() {
        let two = "1@a:1,2@b:1";
        for (id, grpc, raft, want) in [
            (0, two, two, BadCluster::ZeroId),
            (1, "0@a:1,1@b:1", "0@a:1,1@b:1", BadCluster::ZeroId),
            (1, "1@a:1,1@b:1", "1@a:1,1@b:1", BadCluster::Duplicate(1)),
            (1, "1@a:1", "1@a:1", BadCluster::TooSmall(1)),
            (3, two, two, BadCluster::NotAMember(3)),
            (
                1,
                two,
                "1@a:1,3@b:1",
                BadCluster::Mismatch {
                    grpc: vec![1, 2],
                    raft: vec![1, 3],
                },
            ),
            (
                1,
                "1@a:1,2@b",
                two,
                BadCluster::NoPort {
                    id: 2,
                    what: "gRPC",
                    addr: "b".into(),
                },
            ),
            (
                1,
                two,
                "1@a:0,2@b:1",
                BadCluster::PortZero {
                    id: 1,
                    what: "raft",
                },
            ),
        ] {
            assert_eq!(
                ClusterConfig::new(id, &list(grpc), &list(raft)),
                Err(want),
                "{id} {grpc} {raft}"
            );
        }
        for bad in ["1:a:1", "x@a:1", "1@", "1@a b:1"] {
            assert!(bad.parse::<NodeAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_a_leader_that_reaches_a_configured_majority_leads() {
        let status = |leader, peers| ClusterStatus {
            joined: true,
            running: true,
            leader_id: Some(leader),
            node_id: 1,
            peers_available: peers,
            members: 3,
        };
        assert!(status(1, 1).leads_a_majority());
        assert!(status(1, 2).leads_a_majority());
        // Cut off: it leads a cluster of one.
        assert!(!status(1, 0).leads_a_majority());
        assert!(!status(2, 2).leads_a_majority());
        assert!(
            !ClusterStatus {
                joined: false,
                ..status(1, 2)
            }
            .leads_a_majority()
        );
        assert!(
            !ClusterStatus {
                running: false,
                ..status(1, 2)
            }
            .leads_a_majority()
        );
    }
}
