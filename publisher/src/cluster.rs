//! A node of a cluster: its settings, and the MQTT connections it publishes through.
//!
//! A will is only as good as the broker holding it: a node's own embedded broker dies with the
//! node, and its wills with it. So the connections that carry wills go to the *other* nodes'
//! brokers (the next one in turn when one is lost), which is why every node shares the publisher
//! password:
//!
//! - `publishing`, to this node's own broker, no will: ticks, gaps and the status, when active.
//! - `presence`, to a peer's broker, all the time: this node's role, retained on
//!   `pricefeed/nodes/<id>`, with `offline` as its will. A standby dying says so about itself and
//!   nothing about the feed.
//! - `guard`, to a peer's broker, only while this node publishes: it carries nothing but a will,
//!   `offline` on `pricefeed/status`, so the active node dying does not leave `live` behind. When
//!   the node loses the election it says `offline` itself and closes the guard cleanly; the next
//!   active node announces the feed's state under its own id. A node stopped on purpose while
//!   others can take over says nothing: the next node's status follows within a slot or two.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_config::{ClusterConfig, Credentials};
use ticks::{BrokerUrl, Gap, Interval, NodeRole, NodeState, STATUS_TOPIC, Tick};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::mqtt::{LinkOptions, MqttLink};
use crate::slot_loop::{FeedStatus, TickSink};

/// A node of a cluster of embedded brokers.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Membership and addresses; the same on every node but for `node_id`.
    pub cluster: ClusterConfig,
    /// Every node's history API base URL, by node id (this node's own is not asked).
    pub history: Vec<(u64, String)>,
    /// Every node's MQTT address, by node id: where this node's wills are held.
    pub mqtt: Vec<(u64, BrokerUrl)>,
    /// Tests only: the recorder stores each message this long after it arrived.
    pub recorder_delay: Duration,
}

/// The connections a node publishes through. See the module documentation.
pub struct NodeLinks {
    node: u64,
    peers: Vec<BrokerUrl>,
    credentials: Credentials,
    /// What the guard's will says.
    offline: FeedStatus,
    publishing: MqttLink,
    presence: MqttLink,
    guard: Mutex<Option<MqttLink>>,
    stop: CancellationToken,
}

/// How long closing a connection may take.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);

impl NodeLinks {
    /// Connects to this node's broker (`own`) and, for the wills, to the others (`peers`), in
    /// the background, like every link.
    pub fn start(
        node: u64,
        own: BrokerUrl,
        peers: Vec<BrokerUrl>,
        credentials: Credentials,
        interval: Interval,
        demo: bool,
    ) -> NodeLinks {
        let stop = CancellationToken::new();
        let options =
            |what: &str, brokers: Vec<BrokerUrl>, will: Option<(String, String)>| LinkOptions {
                brokers,
                credentials: credentials.clone(),
                client_id: client_id(what, node),
                will,
            };
        let publishing = MqttLink::start(options("publisher", vec![own], None), stop.clone());
        let offline_node = NodeState {
            node,
            role: NodeRole::Offline,
        };
        let presence = MqttLink::start(
            options(
                "presence",
                peers.clone(),
                Some((NodeState::topic(node), offline_node.payload())),
            ),
            stop.clone(),
        );
        let mut offline = FeedStatus::offline(interval, demo);
        offline.node = Some(node);
        NodeLinks {
            node,
            peers,
            credentials,
            offline,
            publishing,
            presence,
            guard: Mutex::new(None),
            stop,
        }
    }

    /// Set while this node's own broker accepts its publishing connection.
    pub fn connected(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.publishing.connected()
    }

    /// Announces the node's role, retained.
    pub fn announce(&self, role: NodeRole) {
        let state = NodeState {
            node: self.node,
            role,
        };
        if let Err(e) = self
            .presence
            .publish_on_every_connect(&NodeState::topic(self.node), state.payload())
        {
            tracing::warn!(error = %e, role = role.as_str(), "node role not announced");
        }
    }

    /// Announces every change of role until the links close.
    pub fn announce_roles(self: &Arc<Self>, mut roles: watch::Receiver<NodeRole>) {
        let links = self.clone();
        tokio::spawn(async move {
            loop {
                let role = *roles.borrow_and_update();
                tracing::info!(node = links.node, role = role.as_str(), "node role");
                links.announce(role);
                if roles.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// On shutdown. If this node publishes and no other node can take over (`last`), the feed
    /// is announced offline; otherwise the next active node announces it within a slot or two.
    /// Then this node's own `offline`, and clean disconnects.
    pub async fn close(self, last: bool) {
        let guard = self.guard.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(guard) = guard {
            if last {
                tracing::info!(
                    node = self.node,
                    "no other node can take over: the feed is announced offline"
                );
                let _ = self
                    .publishing
                    .publish(STATUS_TOPIC, self.offline.to_json(), true);
            } else {
                tracing::info!(
                    node = self.node,
                    "stops publishing; another node takes over"
                );
            }
            if !guard.close(CLOSE_WITHIN).await {
                tracing::warn!(
                    node = self.node,
                    "the guard connection did not close cleanly: its will says the feed is offline until the next node's status"
                );
            }
        }
        self.announce(NodeRole::Offline);
        self.publishing.close(CLOSE_WITHIN).await;
        self.presence.close(CLOSE_WITHIN).await;
        self.stop.cancel();
    }

    /// Whether this node publishes (holds the guard).
    pub fn is_active(&self) -> bool {
        self.guard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

/// The start of a link's client id (the link makes each attempt's id unguessable).
fn client_id(what: &str, node: u64) -> String {
    format!("pricefeed-{what}-{node}")
}

impl TickSink for NodeLinks {
    fn publish_tick(&self, tick: &Tick) {
        self.publishing.publish_tick(tick);
    }

    fn publish_gap(&self, gap: &Gap) {
        self.publishing.publish_gap(gap);
    }

    fn publish_status(&self, status: &FeedStatus) {
        self.publishing.publish_status(status);
    }

    fn set_active(&self, active: bool) {
        let mut guard = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        if active {
            if guard.is_none() {
                *guard = Some(MqttLink::start(
                    LinkOptions {
                        brokers: self.peers.clone(),
                        credentials: self.credentials.clone(),
                        client_id: client_id("guard", self.node),
                        will: Some((STATUS_TOPIC.to_string(), self.offline.to_json())),
                    },
                    self.stop.child_token(),
                ));
            }
        } else if let Some(link) = guard.take() {
            // The election went elsewhere, or nowhere (no majority): until another node publishes,
            // nobody does. Said here, then a clean disconnect so the will does not say it again.
            let _ = self
                .publishing
                .publish(STATUS_TOPIC, self.offline.to_json(), true);
            tokio::spawn(link.close(CLOSE_WITHIN));
        }
    }
}
