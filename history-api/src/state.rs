//! [`ApiState`]: what every handler shares.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use history_store::HistoryStore;
use ticks::NodeRole;
use tokio::sync::watch;

use crate::answer::FeedFacts;
use crate::blocks::{BLOCKS_BYTES, Blocks};
use crate::cache::AnswerCache;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::tail::Tail;

/// How many clients an MQTT broker in this process holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttClients {
    /// Sessions, what the broker's cap on clients counts.
    pub sessions: u64,
    /// Open connections.
    pub connections: u64,
}

/// Reads [`MqttClients`] when `/metrics` is scraped.
pub type MqttClientsGauge = Arc<dyn Fn() -> MqttClients + Send + Sync>;

/// What the handlers share: the store, the process's metrics, the broker flag, what answers say
/// about the feed, and the copies answers are served from before SQLite (the answer cache, the
/// in-memory tail and the blocks of older ticks), which live exactly as long as the state.
pub struct ApiState {
    pub store: HistoryStore,
    pub metrics: Arc<Metrics>,
    /// None when no broker is involved (standalone history-api); Some(flag) set by the publisher.
    pub broker_connected: Option<Arc<AtomicBool>>,
    pub feed: FeedFacts,
    /// On a node of a cluster: its id and current role.
    pub node: Option<(u64, watch::Receiver<NodeRole>)>,
    /// What one client may take; see [`Limits`].
    pub limits: Limits,
    /// The live feed `GET /v1/stream` follows; none: that route answers 503.
    pub streams: Option<Arc<Relay>>,
    /// The interval of an SSE stream's comment lines.
    pub stream_heartbeat: Duration,
    /// Origins whose pages may read the answers (CORS); `*` for any; none by default.
    pub cors_origins: Vec<String>,
    /// The embedded broker's clients, read at each scrape; None when this process runs none.
    pub mqtt_clients: Option<MqttClientsGauge>,
    pub(crate) cache: AnswerCache,
    pub(crate) tail: Arc<Tail>,
    pub(crate) blocks: Arc<Blocks>,
}

impl ApiState {
    /// A state with its own metrics and no broker.
    pub fn new(store: HistoryStore, feed: FeedFacts) -> ApiState {
        ApiState {
            store,
            metrics: Arc::new(Metrics::new()),
            broker_connected: None,
            feed,
            node: None,
            limits: Limits::default(),
            streams: None,
            stream_heartbeat: crate::relay::DEFAULT_HEARTBEAT,
            cors_origins: Vec::new(),
            mqtt_clients: None,
            cache: AnswerCache::default(),
            tail: Arc::default(),
            blocks: Arc::new(Blocks::new(feed.interval, BLOCKS_BYTES)),
        }
    }

    /// Counts into `metrics` (the publisher's, so one scrape shows the whole process).
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> ApiState {
        ApiState { metrics, ..self }
    }

    /// A node of a cluster: readiness and metrics report its role, and it is not ready while it
    /// is still catching up.
    pub fn with_node(self, id: u64, role: watch::Receiver<NodeRole>) -> ApiState {
        ApiState {
            node: Some((id, role)),
            ..self
        }
    }

    /// `/metrics` reports the clients of the MQTT broker this process embeds, read from `gauge`.
    pub fn with_mqtt_clients(self, gauge: MqttClientsGauge) -> ApiState {
        ApiState {
            mqtt_clients: Some(gauge),
            ..self
        }
    }

    /// Applies these limits instead of the defaults.
    pub fn with_limits(self, limits: Limits) -> ApiState {
        ApiState { limits, ..self }
    }

    /// `GET /v1/stream` follows the feed through `relay`, with a comment line every `heartbeat`.
    pub fn with_streams(self, relay: Arc<Relay>, heartbeat: Duration) -> ApiState {
        ApiState {
            streams: Some(relay),
            stream_heartbeat: heartbeat,
            ..self
        }
    }

    /// Lets pages from these origins (`https://example.org`, or `*`) read the answers.
    pub fn with_cors(self, origins: Vec<String>) -> ApiState {
        ApiState {
            cors_origins: origins,
            ..self
        }
    }

    /// Whether the stored past is final: false on a cluster node still catching up, whose fill
    /// from a peer may still write anywhere in its history.
    pub(crate) fn history_final(&self) -> bool {
        self.node
            .as_ref()
            .is_none_or(|(_, role)| *role.borrow() != NodeRole::CatchingUp)
    }

    /// Readiness follows this flag: set while the publisher is connected to its broker.
    pub fn with_broker(self, connected: Arc<AtomicBool>) -> ApiState {
        ApiState {
            broker_connected: Some(connected),
            ..self
        }
    }
}
