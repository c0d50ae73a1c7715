//! The pricefeed process: BTC ticks on a wall-clock grid, stored, published, and served.
//!
//! Every slot (5 s by default) it asks the configured price sources in order for a price per
//! currency, commits each tick to SQLite, then publishes it retained at QoS 1 on `btc/USD` /
//! `btc/EUR`. By default the MQTT broker (rmqtt) runs inside this process and the history API is
//! served on the same process's HTTP listener, so the whole feed is one command; `--broker` points
//! it at an external broker instead. It is not a client library: that is `pricesub`.
//!
//! # Layout
//!
//! - [`Feed`]: builds everything (store, sources, broker, listeners) and runs it until shutdown.
//! - [`slot_loop`]: the slot loop — sample, store, publish, record gaps, announce status.
//! - [`leadership`]: who may publish when several nodes could: the election, and the [`Gate`]
//!   that turns its answers into the node's role.
//! - [`recorder`]: a cluster node's history: catch up from a peer, then record what is published.
//! - [`cluster`]: a cluster node's settings and the connections it publishes through.
//! - [`etcd`]: the election of nodes on an operator's broker (the cargo feature `etcd`).
//! - [`mqtt`]: the publisher's MQTT connection with capped reconnect backoff.
//! - [`clock`]: the wall clock the grid is read from (the system's, or tokio's paused time in tests).
//! - [`GrpcSettings`] and `start_grpc` (here): the gRPC API on `--grpc-listen` (the cargo feature
//!   `grpc`; the service is the `grpc-api` crate).

pub mod clock;
pub mod cluster;
pub mod etcd;
pub mod leadership;
pub mod mqtt;
pub mod recorder;
pub mod slot_loop;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use broker_config::{BrokerHandle, ClusterHandle, Credentials, EmbeddedBroker, TlsListener};
use history_api::relay::{FeedAccess, Relay};
use history_api::{
    ApiState, FeedFacts, HttpListener, Metrics, MqttClients, ServeOptions, TlsFiles,
};
use history_store::{FeedInfo, HistoryStore};
use price_sources::{SourceChain, SourceConfig};
use ticks::{BrokerUrl, Currency, Interval};
use tokio_util::sync::CancellationToken;

use crate::clock::WallClock;
pub use crate::cluster::ClusterSettings;
use crate::cluster::NodeLinks;
use crate::etcd::EtcdSettings;
use crate::leadership::{Gate, Leadership, RaftLeadership};
use crate::mqtt::{LinkOptions, MqttLink};
use crate::recorder::Recorder;
use crate::slot_loop::{FeedStatus, SlotLoop, TickSink};

/// How long each part of shutdown may take before it is abandoned.
const SHUTDOWN_STEP: Duration = Duration::from_secs(3);

/// One history request of a cluster node's recorder to a peer.
const RECORDER_HISTORY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the slot loop's ticks go: one connection, or a cluster node's.
enum Sink {
    /// The link, and what stops its reconnect loop.
    Single(Arc<MqttLink>, CancellationToken),
    /// The node's links, and its election (asked at shutdown whether another node can take over).
    Node(Arc<NodeLinks>, Arc<dyn Leadership>),
}

impl Sink {
    fn as_tick_sink(&self) -> Arc<dyn TickSink> {
        match self {
            Sink::Single(link, _) => link.clone(),
            Sink::Node(links, _) => links.clone(),
        }
    }
}

/// Which broker the ticks go to.
#[derive(Debug, Clone)]
pub enum BrokerMode {
    /// Run rmqtt in this process, listening on `listen`.
    Embedded {
        listen: SocketAddr,
        max_sessions: usize,
        /// What one client and one client address may take.
        limits: broker_config::ClientLimits,
        /// Also listen for MQTT over WebSocket here.
        ws_listen: Option<SocketAddr>,
    },
    /// Publish to a broker someone else runs.
    External { url: BrokerUrl },
}

/// Everything the feed is configured with. `main` builds it from flags; tests build it directly.
#[derive(Debug, Clone)]
pub struct Config {
    pub interval: Interval,
    pub currencies: Vec<Currency>,
    /// Tried in this order every slot.
    pub sources: Vec<SourceConfig>,
    /// Timeout of one source request (each is also cut short by the slot's deadline).
    pub request_timeout: Duration,
    /// An answer its vendor dated longer ago than this is a source error (a frozen source), for
    /// the vendors that date their answers.
    pub source_max_age: Duration,
    /// A price that moved more than this fraction from the last tick is published only if a second
    /// source confirms it (`None`: no check).
    pub max_move: Option<f64>,
    pub db: PathBuf,
    pub broker: BrokerMode,
    /// The publisher's broker password: required for an external broker; for the embedded one, a
    /// random password is made when none is given.
    pub publisher_password: Option<String>,
    pub http_listen: SocketAddr,
    /// What one client may take from the history API.
    pub http_limits: history_api::Limits,
    /// Server-Sent Events streams and CORS.
    pub streams: history_api::StreamArgs,
    pub clock: WallClock,
    /// Run as a node of a cluster of embedded brokers (needs the cargo feature `cluster`).
    pub cluster: Option<ClusterSettings>,
    /// Run as one of several nodes on an external broker, elected with etcd (needs the cargo
    /// feature `etcd`).
    pub elected: Option<ElectedSettings>,
    /// HTTPS instead of HTTP on `http_listen`, and MQTT over TLS if asked for.
    pub tls: Option<TlsSettings>,
    /// Serve the gRPC API (needs the cargo feature `grpc`).
    pub grpc: Option<GrpcSettings>,
}

/// The gRPC API: where it listens and what its streams may take.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    pub listen: SocketAddr,
    /// `Subscribe` streams open at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Events one stream holds for a client that reads slowly before ending it.
    pub stream_buffer: usize,
}

/// Whether this build serves gRPC (the cargo feature `grpc`).
pub const GRPC_BUILT: bool = cfg!(feature = "grpc");

/// TLS: the history API serves HTTPS only; the embedded broker adds a TLS listener if
/// `mqtt_listen` is given.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub files: TlsFiles,
    /// Where the embedded broker listens for MQTT over TLS, beside its plain listener (needs the
    /// cargo feature `tls`).
    pub mqtt_listen: Option<SocketAddr>,
}

/// A node of several on an operator's broker: one publishes at a time, elected with etcd; every
/// node records what is published and serves the whole history.
#[derive(Debug, Clone)]
pub struct ElectedSettings {
    pub node_id: u64,
    pub etcd: EtcdSettings,
    /// Every node's history API base URL, by node id (this node's own is not asked).
    pub history: Vec<(u64, String)>,
    /// Tests only: the recorder stores each message this long after it arrived.
    pub recorder_delay: Duration,
}

/// What a node of several runs on, whichever the election.
struct NodePlan {
    node: u64,
    leadership: Arc<dyn Leadership>,
    /// The broker it publishes to, and those holding its wills.
    own: BrokerUrl,
    peers: Vec<BrokerUrl>,
    history: Vec<(u64, String)>,
    recorder_delay: Duration,
    /// Whether the recorder authenticates (on an operator's broker) or not (the embedded one).
    recorder_authenticates: bool,
}

/// A built feed: store open, broker listening, HTTP bound. [`Feed::run`] starts the ticks.
pub struct Feed {
    config: Config,
    store: HistoryStore,
    chain: SourceChain,
    credentials: Credentials,
    broker: Option<BrokerHandle>,
    broker_url: BrokerUrl,
    http: tokio::net::TcpListener,
    https: Option<tokio_rustls::TlsAcceptor>,
    grpc: Option<tokio::net::TcpListener>,
}

impl Feed {
    /// Opens the store, starts the embedded broker (if any) and binds the HTTP listener, so that
    /// every configuration and port problem surfaces here, before the first tick.
    pub async fn build(config: Config) -> anyhow::Result<Feed> {
        // Everything that can be checked without touching the world is checked first, so a refused
        // configuration leaves no trace (no store file, no feed settings written into one).
        let demo = config.sources.iter().any(|s| s.kind.is_demo());
        if config.sources.len() > 1 && demo {
            // A random walk filling in for a real outage would be an invented price labelled live.
            anyhow::bail!("--source demo cannot be combined with real sources");
        }
        if config
            .max_move
            .is_some_and(|m| !(m.is_finite() && m > 0.0 && m <= 10.0))
        {
            anyhow::bail!("--max-move must be a fraction above 0 and at most 10 (0.1 is 10%)");
        }
        if config.request_timeout.is_zero() {
            anyhow::bail!("--request-timeout must be more than 0");
        }
        let chain = SourceChain::new(config.sources.clone(), config.request_timeout)
            .context("invalid price source configuration")?
            .with_max_age(config.source_max_age);
        let credentials = match (&config.broker, &config.publisher_password) {
            (_, Some(password)) => Credentials::publisher(password.clone()),
            (BrokerMode::Embedded { .. }, None) => Credentials::random_publisher(),
            (BrokerMode::External { url }, None) => anyhow::bail!(
                "--broker {url} needs the publisher's password (--broker-password or PRICEFEED_BROKER_PASSWORD)"
            ),
        };
        credentials.validate().map_err(anyhow::Error::msg)?;
        if config.cluster.is_some() && config.publisher_password.is_none() {
            anyhow::bail!(
                "cluster mode needs --broker-password, the same on every node (a node's wills are held by the other nodes' brokers)"
            );
        }
        if config.cluster.is_some() && matches!(config.broker, BrokerMode::External { .. }) {
            anyhow::bail!(
                "cluster mode runs the embedded broker on every node; --broker cannot be combined with it"
            );
        }
        if let Some(elected) = &config.elected {
            if config.cluster.is_some() {
                anyhow::bail!(
                    "--elect is for nodes on an operator's broker; a cluster of embedded brokers elects with raft"
                );
            }
            if !matches!(config.broker, BrokerMode::External { .. }) {
                anyhow::bail!(
                    "--elect needs --broker: nodes elected with etcd publish to an operator's broker"
                );
            }
            elected.etcd.validate().map_err(anyhow::Error::msg)?;
            if !cfg!(feature = "etcd") {
                anyhow::bail!(
                    "this build has no etcd election: build with --features publisher/etcd (needs protoc)"
                );
            }
        }
        let mqtts = config.tls.as_ref().is_some_and(|t| t.mqtt_listen.is_some());
        if mqtts && matches!(config.broker, BrokerMode::External { .. }) {
            anyhow::bail!(
                "--mqtts-listen is for the embedded broker; with --broker, MQTT over TLS is your broker's to serve"
            );
        }
        if mqtts && !broker_config::MQTT_TLS_BUILT {
            anyhow::bail!(
                "this pricefeed was built without MQTT TLS: build with --features tls (or drop --mqtts-listen for HTTPS alone)"
            );
        }
        if config.grpc.is_some() && !GRPC_BUILT {
            anyhow::bail!("this pricefeed was built without gRPC: build with --features grpc");
        }
        if config.grpc.is_some() && config.tls.is_some() {
            // Each stream backfills from this process's history API, which then speaks HTTPS
            // with a certificate for the public name, not for loopback.
            anyhow::bail!("--grpc-listen cannot be combined with --tls-cert yet");
        }
        // The files are read now, so a bad certificate or key is refused before anything starts.
        // The broker reads the same files again for MQTT over TLS.
        let https = match &config.tls {
            Some(tls) => Some(tls.files.acceptor()?),
            None => None,
        };
        let store = HistoryStore::open(&config.db)?;
        store
            .set_feed_info(FeedInfo {
                interval: config.interval,
                demo,
            })
            .await?;
        let (broker, broker_url) = match &config.broker {
            BrokerMode::Embedded {
                listen,
                max_sessions,
                limits,
                ws_listen,
            } => {
                let mut embedded = EmbeddedBroker::new(*listen, credentials.clone());
                embedded.max_sessions = *max_sessions;
                embedded.limits = *limits;
                embedded.ws = *ws_listen;
                embedded.cluster = config.cluster.as_ref().map(|c| c.cluster.clone());
                embedded.tls = config.tls.as_ref().and_then(|tls| {
                    Some(TlsListener {
                        listen: tls.mqtt_listen?,
                        cert: tls.files.cert.clone(),
                        key: tls.files.key.clone(),
                    })
                });
                let handle = tokio::task::spawn_blocking(move || embedded.start())
                    .await
                    .context("starting the embedded broker")??;
                let addr = handle.local_addr();
                // Talk to our own broker over loopback, whatever interface it listens on.
                let host = if addr.ip().is_unspecified() {
                    match addr.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                    }
                } else {
                    addr.ip()
                };
                let url = BrokerUrl::new(host.to_string(), addr.port());
                (Some(handle), url)
            }
            BrokerMode::External { url } => (None, url.clone()),
        };
        let http = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
        let grpc = match &config.grpc {
            Some(grpc) => Some(
                tokio::net::TcpListener::bind(grpc.listen)
                    .await
                    .with_context(|| format!("cannot listen for gRPC on {}", grpc.listen))?,
            ),
            None => None,
        };
        Ok(Feed {
            config,
            store,
            chain,
            credentials,
            broker,
            broker_url,
            http,
            https,
            grpc,
        })
    }

    /// Where the embedded broker listens, if there is one.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.broker.as_ref().map(BrokerHandle::local_addr)
    }

    /// Where the embedded broker listens for MQTT over WebSocket, if it does.
    pub fn mqtt_ws_addr(&self) -> Option<SocketAddr> {
        self.broker.as_ref().and_then(BrokerHandle::ws_addr)
    }

    /// Where the embedded broker listens for MQTT over TLS, if it does.
    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.broker.as_ref().and_then(BrokerHandle::tls_addr)
    }

    /// The broker the ticks are published to.
    pub fn broker_url(&self) -> &BrokerUrl {
        &self.broker_url
    }

    /// Where the history API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where the gRPC API listens, if it does.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs the feed until `shutdown` is cancelled, then stops every part in order: the slot loop,
    /// the offline status, the MQTT connection, HTTP, the broker.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Feed {
            config,
            store,
            chain,
            credentials,
            broker,
            broker_url,
            http,
            https,
            grpc,
        } = self;
        let demo = chain.uses_demo();
        let metrics = Arc::new(Metrics::new());
        let http_addr = http.local_addr()?;
        // Streams backfill from this process's own history API. Over HTTPS that is a listener
        // on loopback only, in plain HTTP: the certificate names the public host, not loopback.
        let internal_http = match &https {
            Some(_) => Some(
                tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .await
                    .context("cannot listen on loopback for the streams' backfills")?,
            ),
            None => None,
        };
        let backfill_addr = match &internal_http {
            Some(listener) => listener.local_addr()?,
            None => http_addr,
        };
        let external_credentials = (!matches!(config.broker, BrokerMode::Embedded { .. }))
            .then(|| (credentials.username.clone(), credentials.password.clone()));
        let relay = Arc::new(Relay::new(
            FeedAccess::local(broker_url.clone(), backfill_addr, external_credentials),
            config.streams.limits(),
            shutdown.clone(),
            "pricefeed-sse",
        ));
        let api = ApiState::new(
            store.clone(),
            FeedFacts {
                interval: config.interval,
                demo,
            },
        )
        .with_metrics(metrics.clone())
        .with_limits(config.http_limits.clone())
        .with_streams(relay, config.streams.sse_heartbeat)
        .with_cors(config.streams.cors_origin.clone());
        let api = match &broker {
            Some(broker) => {
                let counts = broker.session_counts();
                api.with_mqtt_clients(Arc::new(move || MqttClients {
                    sessions: counts.sessions(),
                    connections: counts.connections(),
                }))
            }
            None => api,
        };
        let plan = node_plan(&config, &broker, &broker_url, &shutdown).await?;
        let node_id = plan.as_ref().map(|p| p.node);
        let (sink, api, gate) = match plan {
            Some(plan) => {
                let node = plan.node;
                let (caught_up_tx, caught_up) = tokio::sync::watch::channel(false);
                let recorder = Recorder {
                    store: store.clone(),
                    broker: broker_url.clone(),
                    peers: plan
                        .history
                        .iter()
                        .filter(|(id, _)| *id != node)
                        .cloned()
                        .collect(),
                    leadership: plan.leadership.clone(),
                    history_timeout: RECORDER_HISTORY_TIMEOUT,
                    caught_up: caught_up_tx,
                    delay: plan.recorder_delay,
                    credentials: plan.recorder_authenticates.then(|| credentials.clone()),
                };
                tokio::spawn(recorder.run(shutdown.clone()));
                let gate = Gate::start(plan.leadership.clone(), caught_up, shutdown.clone());
                let links = Arc::new(NodeLinks::start(
                    node,
                    plan.own,
                    plan.peers,
                    credentials.clone(),
                    config.interval,
                    demo,
                ));
                links.announce_roles(gate.watch());
                let api = api
                    .with_broker(links.connected())
                    .with_node(node, gate.watch());
                (Sink::Node(links, plan.leadership), api, Some(gate))
            }
            None => {
                let link_stop = CancellationToken::new();
                let link = Arc::new(MqttLink::start(
                    LinkOptions {
                        brokers: vec![broker_url.clone()],
                        credentials: credentials.clone(),
                        client_id: "pricefeed-publisher".into(),
                        will: Some((
                            ticks::STATUS_TOPIC.to_string(),
                            FeedStatus::offline(config.interval, demo).to_json(),
                        )),
                    },
                    link_stop.clone(),
                ));
                // A restart must not leave displays blank: re-publish the newest stored tick,
                // retained. (A cluster's brokers keep it for each other.)
                for &currency in &config.currencies {
                    match store.latest(currency).await {
                        Ok(Some(tick)) => link.publish_tick(&tick),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the latest tick to re-publish")
                        }
                    }
                }
                let api = api.with_broker(link.connected());
                (Sink::Single(link, link_stop), api, None)
            }
        };
        let grpc_addr = grpc.as_ref().map(|l| l.local_addr()).transpose()?;
        let grpc_task = match grpc {
            Some(listener) => Some(start_grpc(
                listener,
                &config,
                &api,
                &broker_url,
                (!matches!(config.broker, BrokerMode::Embedded { .. })).then_some(&credentials),
                backfill_addr,
                &shutdown,
            )),
            None => None,
        };
        let http_stop = shutdown.clone();
        let http: HttpListener = match https {
            Some(tls) => HttpListener::https(http, tls),
            None => http.into(),
        };
        let options = ServeOptions {
            header_read_timeout: history_api::HEADER_READ_TIMEOUT,
            limits: api.limits.clone(),
            metrics: api.metrics.clone(),
        };
        let router = history_api::app(api);
        let internal_task = internal_http.map(|listener| {
            let stop = shutdown.clone();
            tokio::spawn(history_api::serve_router(
                listener,
                router.clone(),
                options.clone(),
                async move { stop.cancelled().await },
            ))
        });
        let http_task = tokio::spawn(history_api::serve_router(
            http,
            router,
            options,
            async move { http_stop.cancelled().await },
        ));
        tracing::info!(
            interval = %config.interval,
            currencies = ?config.currencies,
            sources = ?chain.kinds(),
            broker = %broker_url,
            http = %http_addr,
            grpc = grpc_addr.map(tracing::field::display),
            db = %config.db.display(),
            node = ?node_id,
            "pricefeed running"
        );

        let slots = SlotLoop {
            interval: config.interval,
            currencies: config.currencies.clone(),
            chain,
            store,
            sink: sink.as_tick_sink(),
            metrics,
            clock: config.clock.clone(),
            gate,
            node: node_id,
            max_move: config.max_move,
        };
        slots.run(shutdown.clone()).await;

        tracing::info!("shutting down");
        match sink {
            Sink::Single(link, link_stop) => {
                link.publish_status(&FeedStatus::offline(config.interval, demo));
                link_stop.cancel();
                if let Ok(link) = Arc::try_unwrap(link) {
                    link.close(SHUTDOWN_STEP).await;
                }
            }
            Sink::Node(links, leadership) => {
                let last = !leadership.others_can_take_over().await;
                // The next node takes over now rather than when this one's lease runs out.
                leadership.resign().await;
                if let Ok(links) = Arc::try_unwrap(links) {
                    links.close(last).await;
                }
            }
        }
        if let Some(grpc_task) = grpc_task {
            match tokio::time::timeout(SHUTDOWN_STEP, grpc_task).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
                Err(_) => tracing::warn!("gRPC server did not stop in time"),
                _ => {}
            }
        }
        for task in std::iter::once(http_task).chain(internal_task) {
            match tokio::time::timeout(SHUTDOWN_STEP, task).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
                Err(_) => tracing::warn!("HTTP server did not stop in time"),
                _ => {}
            }
        }
        if let Some(broker) = broker {
            let _ = tokio::time::timeout(
                SHUTDOWN_STEP,
                tokio::task::spawn_blocking(move || broker.shutdown()),
            )
            .await;
        }
        Ok(())
    }
}

/// What the gRPC server task returns.
type GrpcTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Serves gRPC on `listener` until shutdown: `History` from its own copy of the history API's
/// state (same store, metrics and node), each `Subscribe` stream on this process's broker and
/// history API over loopback, with `credentials` where the broker needs them (an operator's).
#[cfg(feature = "grpc")]
fn start_grpc(
    listener: tokio::net::TcpListener,
    config: &Config,
    api: &ApiState,
    broker_url: &BrokerUrl,
    credentials: Option<&Credentials>,
    http_addr: SocketAddr,
    shutdown: &CancellationToken,
) -> GrpcTask {
    let settings = config.grpc.as_ref().expect("called with gRPC configured");
    let mut history = ApiState::new(api.store.clone(), api.feed)
        .with_metrics(api.metrics.clone())
        .with_limits(api.limits.clone());
    if let Some((id, role)) = &api.node {
        history = history.with_node(*id, role.clone());
    }
    let feed = FeedAccess::local(
        broker_url.clone(),
        http_addr,
        credentials.map(|c| (c.username.clone(), c.password.clone())),
    );
    let limits = history_api::relay::StreamLimits {
        max_streams: settings.max_streams,
        buffer: settings.stream_buffer,
    };
    let relay = Arc::new(Relay::new(feed, limits, shutdown.clone(), "pricefeed-grpc"));
    let service = grpc_api::PriceFeedService::new(Arc::new(history), relay);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        grpc_api::serve(listener, service, async move { stop.cancelled().await })
            .await
            .context("serving gRPC failed")
    })
}

#[cfg(not(feature = "grpc"))]
fn start_grpc(
    _listener: tokio::net::TcpListener,
    _config: &Config,
    _api: &ApiState,
    _broker_url: &BrokerUrl,
    _credentials: Option<&Credentials>,
    _http_addr: SocketAddr,
    _shutdown: &CancellationToken,
) -> GrpcTask {
    unreachable!("Feed::build refuses --grpc-listen without the grpc feature")
}

/// The election and brokers of a node of several, if this process is one.
async fn node_plan(
    config: &Config,
    broker: &Option<BrokerHandle>,
    broker_url: &BrokerUrl,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<NodePlan>> {
    let cluster: Option<ClusterHandle> = broker.as_ref().and_then(|b| b.cluster()).cloned();
    if let (Some(settings), Some(handle)) = (&config.cluster, cluster) {
        let node = settings.cluster.node_id;
        return Ok(Some(NodePlan {
            node,
            leadership: Arc::new(RaftLeadership::new(handle)),
            own: broker_url.clone(),
            peers: settings
                .mqtt
                .iter()
                .filter(|(id, _)| *id != node)
                .map(|(_, url)| url.clone())
                .collect(),
            history: settings.history.clone(),
            recorder_delay: settings.recorder_delay,
            recorder_authenticates: false,
        }));
    }
    let Some(elected) = &config.elected else {
        return Ok(None);
    };
    #[cfg(not(feature = "etcd"))]
    {
        let _ = shutdown;
        anyhow::bail!(
            "node {}: this build has no etcd election: build with --features publisher/etcd",
            elected.node_id
        )
    }
    #[cfg(feature = "etcd")]
    {
        let leadership = crate::etcd::EtcdLeadership::start(
            elected.etcd.clone(),
            elected.node_id,
            shutdown.clone(),
        )
        .await?;
        // One broker holds everything, the wills too: it outlives any node.
        Ok(Some(NodePlan {
            node: elected.node_id,
            leadership,
            own: broker_url.clone(),
            peers: vec![broker_url.clone()],
            history: elected.history.clone(),
            recorder_delay: elected.recorder_delay,
            recorder_authenticates: true,
        }))
    }
}
