//! `pricefeed`: the BTC price feed, broker and history API in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use broker_config::{ClientLimits, ClusterConfig, NodeAddr};
use clap::Parser;
use history_api::TlsArgs;
use price_sources::{DEFAULT_CHAIN, SourceConfig, SourceKind};
use publisher::clock::WallClock;
use publisher::etcd::{DEFAULT_NAME, EtcdSettings};
use publisher::{
    BrokerMode, ClusterSettings, Config, ElectedSettings, Feed, GrpcSettings, TlsSettings,
};
use startup::{Fatal, LogFormat, Runtime};
use ticks::{BrokerUrl, Currency, Interval};
use tokio_util::sync::CancellationToken;

/// The version, and which of the optional node modes this build has.
#[cfg(all(feature = "cluster", feature = "etcd"))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (cluster, etcd)");
#[cfg(all(feature = "cluster", not(feature = "etcd")))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (cluster)");
#[cfg(all(not(feature = "cluster"), feature = "etcd"))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (etcd)");
#[cfg(not(any(feature = "cluster", feature = "etcd")))]
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// BTC price feed over MQTT: a tick per currency every interval on btc/USD and btc/EUR, stored in
/// SQLite and served as history over HTTP.
#[derive(Debug, Parser)]
#[command(name = "pricefeed", version = VERSION, about, long_about = None)]
struct Cli {
    /// Slot length: one tick per currency per slot, aligned to the wall clock (100ms to 24h).
    #[arg(long, env = "PRICEFEED_INTERVAL", default_value = "5s")]
    interval: Interval,

    /// Currencies to publish: USD, EUR or both.
    #[arg(long, env = "PRICEFEED_CURRENCY", default_value = "both", value_parser = parse_currencies)]
    currency: CurrencyList,

    /// Price sources, tried in this order every slot: kraken, coinbase, bitstamp, coingecko,
    /// coindesk, demo (offline random walk; never use for real prices).
    #[arg(long, env = "PRICEFEED_SOURCE", value_delimiter = ',', default_values_t = DEFAULT_CHAIN.to_vec())]
    source: Vec<SourceKind>,

    /// Base URL of a source, NAME=URL (repeatable), e.g. coindesk=http://127.0.0.1:9000 for a mirror.
    #[arg(long = "source-url", env = "PRICEFEED_SOURCE_URL", value_delimiter = ',', value_parser = parse_source_url)]
    source_url: Vec<(SourceKind, String)>,

    /// Timeout of one source request (also cut short by the slot's deadline). Default: 2s, or
    /// 60% of the interval if that is shorter.
    #[arg(long, env = "PRICEFEED_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,

    /// A source answer its vendor dated longer ago than this is refused as frozen (a stale mirror,
    /// a cache, a vendor that stopped updating), for the vendors that date their answers (CoinDesk,
    /// Bitstamp).
    #[arg(long, env = "PRICEFEED_SOURCE_MAX_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    source_max_age: Duration,

    /// A price that moved more than this fraction from the last tick in one slot (0.1: 10%) is
    /// published only if a second source confirms it; otherwise the slot is a `price_unconfirmed`
    /// gap. 0 turns the check off.
    #[arg(long, env = "PRICEFEED_MAX_MOVE", default_value_t = 0.1)]
    max_move: f64,

    /// SQLite file holding every tick and gap.
    #[arg(long, env = "PRICEFEED_DB", default_value = "pricefeed.db")]
    db: PathBuf,

    /// Address of the embedded MQTT broker (ignored with --broker).
    #[arg(long, env = "PRICEFEED_MQTT_LISTEN", default_value = "0.0.0.0:1883")]
    mqtt_listen: SocketAddr,

    /// Most MQTT clients the embedded broker accepts at once.
    #[arg(long, env = "PRICEFEED_MAX_CLIENTS", default_value_t = 100_000)]
    max_clients: usize,

    /// Where the embedded broker also listens for MQTT over WebSocket (browsers, dashboards),
    /// e.g. 0.0.0.0:8083: the same topics, ACL and limits as --mqtt-listen. Any path; the
    /// WebSocket subprotocol must be `mqtt`.
    #[arg(long, env = "PRICEFEED_MQTT_WS_LISTEN")]
    mqtt_ws_listen: Option<SocketAddr>,

    #[command(flatten)]
    mqtt_limits: MqttLimits,

    /// Publish to this external broker (mqtt://host:port) instead of running one.
    #[arg(long, env = "PRICEFEED_BROKER")]
    broker: Option<BrokerUrl>,

    /// Password of the `pricefeed-publisher` user on the broker. Required with --broker; with the
    /// embedded broker a random one is made if unset.
    #[arg(long, env = "PRICEFEED_BROKER_PASSWORD", hide_env_values = true)]
    broker_password: Option<String>,

    /// Address of the history API, health, readiness and metrics.
    #[arg(long, env = "PRICEFEED_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    http_listen: SocketAddr,

    #[command(flatten)]
    http_limits: history_api::Limits,

    #[command(flatten)]
    streams: history_api::StreamArgs,

    /// Log format.
    #[arg(long, env = "PRICEFEED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Cluster mode: this node's id (1, 2, …). Needs --cluster-grpc, --cluster-raft,
    /// --cluster-mqtt, --cluster-history and --broker-password, and a build with the `cluster`
    /// feature; or, on your own broker, --elect.
    #[arg(long, env = "PRICEFEED_NODE_ID", help_heading = "Cluster")]
    node_id: Option<u64>,

    /// Every node's broker-cluster gRPC address, ID@HOST:PORT, comma-separated; the same list on
    /// every node.
    #[arg(
        long,
        env = "PRICEFEED_CLUSTER_GRPC",
        value_delimiter = ',',
        help_heading = "Cluster"
    )]
    cluster_grpc: Vec<NodeAddr>,

    /// Every node's raft address, ID@HOST:PORT, comma-separated; the same list on every node.
    #[arg(
        long,
        env = "PRICEFEED_CLUSTER_RAFT",
        value_delimiter = ',',
        help_heading = "Cluster"
    )]
    cluster_raft: Vec<NodeAddr>,

    /// Every node's MQTT address, ID@HOST:PORT, comma-separated: the other nodes' brokers hold
    /// this node's wills.
    #[arg(
        long,
        env = "PRICEFEED_CLUSTER_MQTT",
        value_delimiter = ',',
        help_heading = "Cluster"
    )]
    cluster_mqtt: Vec<NodeAddr>,

    /// Every node's history API, ID@URL (1@http://10.0.0.1:8080), comma-separated: where a node
    /// fills its history from (both kinds of nodes).
    #[arg(
        long,
        env = "PRICEFEED_CLUSTER_HISTORY",
        value_delimiter = ',',
        help_heading = "Cluster"
    )]
    cluster_history: Vec<NodeAddr>,

    /// Bind this node's cluster gRPC server here (default: its own --cluster-grpc address).
    #[arg(long, env = "PRICEFEED_CLUSTER_GRPC_LISTEN", help_heading = "Cluster")]
    cluster_grpc_listen: Option<SocketAddr>,

    /// Bind this node's raft here (default: its own --cluster-raft address).
    #[arg(long, env = "PRICEFEED_CLUSTER_RAFT_LISTEN", help_heading = "Cluster")]
    cluster_raft_listen: Option<SocketAddr>,

    /// Several nodes on your broker (--broker): the etcd members electing the one that publishes,
    /// etcd://HOST:PORT,HOST:PORT,… Needs --node-id, --cluster-history and a build with the `etcd`
    /// feature.
    #[arg(long, env = "PRICEFEED_ELECT", value_parser = parse_elect, help_heading = "Several nodes on your broker")]
    elect: Option<EtcdEndpoints>,

    /// The election's name in etcd (a key prefix): one per feed sharing the etcd cluster.
    #[arg(long, env = "PRICEFEED_ELECT_NAME", default_value = DEFAULT_NAME, help_heading = "Several nodes on your broker")]
    elect_name: String,

    /// The etcd lease's time to live, whole seconds: a leader that vanished is replaced after
    /// this; one cut off from etcd stops publishing a sixth of it earlier.
    #[arg(long, env = "PRICEFEED_ELECT_TTL", default_value = "3s", value_parser = humantime::parse_duration, help_heading = "Several nodes on your broker")]
    elect_ttl: Duration,

    #[command(flatten)]
    tls: TlsArgs,

    /// Where the embedded broker also listens for MQTT over TLS (e.g. 0.0.0.0:8883), with
    /// --tls-cert and --tls-key; the plain --mqtt-listen stays open. Needs a build with the `tls`
    /// feature.
    #[arg(
        long,
        env = "PRICEFEED_MQTTS_LISTEN",
        requires = "tls_cert",
        help_heading = "TLS"
    )]
    mqtts_listen: Option<SocketAddr>,

    /// Serve the gRPC API (pricefeed.v1: Subscribe, History, health, reflection) here, e.g.
    /// 0.0.0.0:50051. Needs a build with the `grpc` feature.
    #[arg(long, env = "PRICEFEED_GRPC_LISTEN", help_heading = "gRPC")]
    grpc_listen: Option<SocketAddr>,

    /// gRPC Subscribe streams open at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "PRICEFEED_GRPC_MAX_STREAMS", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..), help_heading = "gRPC")]
    grpc_max_streams: u32,

    /// Live events a gRPC stream holds for a client that reads slowly; past it, the stream ends
    /// with RESOURCE_EXHAUSTED (the client resumes with since). A backfill waits for the client.
    #[arg(long, env = "PRICEFEED_GRPC_STREAM_BUFFER", default_value_t = 1_024, value_parser = clap::value_parser!(u32).range(1..), help_heading = "gRPC")]
    grpc_stream_buffer: u32,

    /// Tests only: the recorder stores what it receives this long after it arrived.
    #[arg(long, hide = true, default_value = "0s", value_parser = humantime::parse_duration)]
    recorder_delay: Duration,
}

#[derive(Debug, Clone)]
struct CurrencyList(Vec<Currency>);

fn parse_currencies(s: &str) -> Result<CurrencyList, String> {
    Currency::parse_list(s)
        .map(CurrencyList)
        .map_err(|e| e.to_string())
}

#[derive(Debug, Clone)]
struct EtcdEndpoints(Vec<String>);

fn parse_elect(s: &str) -> Result<EtcdEndpoints, String> {
    EtcdSettings::parse_endpoints(s).map(EtcdEndpoints)
}

fn parse_source_url(s: &str) -> Result<(SourceKind, String), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=URL"))?;
    let kind: SourceKind = name.parse().map_err(|e| format!("{e}"))?;
    Ok((kind, url.to_string()))
}

/// rmqtt logs every refused connection at info, and its ACL plugin logs its configuration, password
/// included: the broker's crates stay at warn unless RUST_LOG says otherwise. In a cluster, raft
/// and the node-to-node gRPC client warn about every message to a node that is down, twice a
/// second: errors only (the cluster plugin still says which node is unavailable, and why).
const DEFAULT_LOG: &str = "info,rmqtt=warn,rmqtt_acl=warn,rmqtt_retainer=warn,rmqtt_net=warn,\
    rmqtt_cluster_raft=warn,rmqtt_raft=error,handy_grpc=error";

impl Cli {
    /// The cluster this node belongs to, if any cluster flag is given (then all must be).
    fn cluster(&self) -> anyhow::Result<Option<ClusterSettings>> {
        let given = self.node_id.is_some()
            || !self.cluster_grpc.is_empty()
            || !self.cluster_raft.is_empty()
            || !self.cluster_mqtt.is_empty()
            || !self.cluster_history.is_empty();
        if !given {
            return Ok(None);
        }
        let Some(node_id) = self.node_id else {
            anyhow::bail!("cluster mode needs --node-id");
        };
        for (flag, list) in [
            ("--cluster-grpc", &self.cluster_grpc),
            ("--cluster-raft", &self.cluster_raft),
            ("--cluster-mqtt", &self.cluster_mqtt),
            ("--cluster-history", &self.cluster_history),
        ] {
            if list.is_empty() {
                anyhow::bail!("cluster mode needs {flag} (every node, ID@ADDRESS)");
            }
        }
        let mut cluster = ClusterConfig::new(node_id, &self.cluster_grpc, &self.cluster_raft)?;
        cluster.grpc_listen = self.cluster_grpc_listen;
        cluster.raft_listen = self.cluster_raft_listen;
        let members: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
        let every_node = |flag: &str, list: &[NodeAddr]| -> anyhow::Result<()> {
            let mut ids: Vec<u64> = list.iter().map(|n| n.id).collect();
            ids.sort_unstable();
            if ids != members {
                anyhow::bail!(
                    "{flag} lists nodes {ids:?}; the cluster is {members:?}: give every node once"
                );
            }
            Ok(())
        };
        every_node("--cluster-history", &self.cluster_history)?;
        every_node("--cluster-mqtt", &self.cluster_mqtt)?;
        let history = self.history()?;
        let mut mqtt = Vec::new();
        for entry in &self.cluster_mqtt {
            let url: BrokerUrl = entry
                .addr
                .parse()
                .map_err(|e| anyhow::anyhow!("--cluster-mqtt {entry}: {e}"))?;
            mqtt.push((entry.id, url));
        }
        Ok(Some(ClusterSettings {
            cluster,
            history,
            mqtt,
            recorder_delay: self.recorder_delay,
        }))
    }

    /// `--cluster-history`, checked.
    fn history(&self) -> anyhow::Result<Vec<(u64, String)>> {
        let mut history: Vec<(u64, String)> = Vec::new();
        for entry in &self.cluster_history {
            if !(entry.addr.starts_with("http://") || entry.addr.starts_with("https://")) {
                anyhow::bail!(
                    "--cluster-history {entry}: the URL must start with http:// or https://"
                );
            }
            if history.iter().any(|(id, _)| *id == entry.id) {
                anyhow::bail!("--cluster-history names node {} twice", entry.id);
            }
            history.push((entry.id, entry.addr.clone()));
        }
        Ok(history)
    }

    /// A node of several on the operator's broker, elected with etcd, if --elect is given.
    fn elected(&self) -> anyhow::Result<Option<ElectedSettings>> {
        let Some(EtcdEndpoints(endpoints)) = &self.elect else {
            return Ok(None);
        };
        if !(self.cluster_grpc.is_empty()
            && self.cluster_raft.is_empty()
            && self.cluster_mqtt.is_empty())
        {
            anyhow::bail!(
                "--elect (nodes on your broker) cannot be combined with --cluster-grpc, --cluster-raft or --cluster-mqtt (a cluster of embedded brokers)"
            );
        }
        if self.broker.is_none() {
            anyhow::bail!("--elect needs --broker: the nodes publish to your broker");
        }
        let Some(node_id) = self.node_id else {
            anyhow::bail!("--elect needs --node-id");
        };
        let history = self.history()?;
        if history.is_empty() {
            anyhow::bail!("--elect needs --cluster-history (every node, ID@URL)");
        }
        if !history.iter().any(|(id, _)| *id == node_id) {
            anyhow::bail!(
                "--cluster-history does not list this node ({node_id}): give every node once"
            );
        }
        let etcd = EtcdSettings {
            endpoints: endpoints.clone(),
            name: self.elect_name.clone(),
            ttl: self.elect_ttl,
        };
        etcd.validate().map_err(anyhow::Error::msg)?;
        Ok(Some(ElectedSettings {
            node_id,
            etcd,
            history,
            recorder_delay: self.recorder_delay,
        }))
    }

    fn into_config(self) -> anyhow::Result<Config> {
        let elected = self.elected()?;
        let cluster = if elected.is_some() {
            None
        } else {
            self.cluster()?
        };
        let mut sources: Vec<SourceConfig> = self
            .source
            .iter()
            .map(|&kind| SourceConfig {
                kind,
                base_url: kind.default_base_url().to_string(),
            })
            .collect();
        for (kind, url) in self.source_url {
            let source = sources
                .iter_mut()
                .find(|s| s.kind == kind)
                .with_context(|| format!("--source-url names {kind}, which is not in --source"))?;
            source.base_url = url;
        }
        let request_timeout = self.request_timeout.unwrap_or_else(|| {
            Duration::from_secs(2).min(self.interval.as_duration().mul_f64(0.6))
        });
        let broker = match self.broker {
            Some(url) => {
                if self.mqtt_ws_listen.is_some() {
                    anyhow::bail!(
                        "--mqtt-ws-listen is for the embedded broker; with --broker, MQTT over WebSocket is your broker's to serve"
                    );
                }
                BrokerMode::External { url }
            }
            None => BrokerMode::Embedded {
                listen: self.mqtt_listen,
                max_sessions: self.max_clients,
                limits: self.mqtt_limits.into(),
                ws_listen: self.mqtt_ws_listen,
            },
        };
        Ok(Config {
            interval: self.interval,
            currencies: self.currency.0,
            sources,
            request_timeout,
            source_max_age: self.source_max_age,
            max_move: (self.max_move != 0.0).then_some(self.max_move),
            db: self.db,
            broker,
            publisher_password: self.broker_password,
            http_listen: self.http_listen,
            http_limits: self.http_limits,
            streams: self.streams,
            clock: WallClock::System,
            cluster,
            elected,
            tls: self.tls.files().map(|files| TlsSettings {
                files,
                mqtt_listen: self.mqtts_listen,
            }),
            grpc: self.grpc_listen.map(|listen| GrpcSettings {
                listen,
                max_streams: self.grpc_max_streams as usize,
                stream_buffer: self.grpc_stream_buffer as usize,
            }),
        })
    }
}

/// What one client and one client address may take from the embedded broker (ignored with
/// --broker: there, the operator's broker sets its own).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Embedded broker limits")]
struct MqttLimits {
    /// Connections one client address may hold open; more are refused at CONNECT. 0: no cap.
    #[arg(long, env = "PRICEFEED_MQTT_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = ClientLimits::default().connections_per_address)]
    mqtt_max_connections_per_address: usize,
    /// New connections per second one client address may open, sustained; more are refused at
    /// CONNECT. 0: no limit.
    #[arg(long, env = "PRICEFEED_MQTT_CONNECT_RATE", default_value_t = ClientLimits::default().connect_rate)]
    mqtt_connect_rate: u32,
    /// New connections one client address may open at once above its rate.
    #[arg(long, env = "PRICEFEED_MQTT_CONNECT_BURST", default_value_t = ClientLimits::default().connect_burst)]
    mqtt_connect_burst: u32,
    /// Largest MQTT packet a client may send, in bytes; a larger one disconnects it.
    #[arg(long, env = "PRICEFEED_MQTT_MAX_PACKET_BYTES", default_value_t = ClientLimits::default().max_packet_bytes)]
    mqtt_max_packet_bytes: u32,
    /// Longest keep-alive a client may ask for, in seconds (a client silent for 1.5 keep-alives is
    /// disconnected); MQTT 3.1.1 clients asking for more, or for none, are refused.
    #[arg(long, env = "PRICEFEED_MQTT_MAX_KEEPALIVE", default_value_t = ClientLimits::default().max_keepalive_s, value_parser = clap::value_parser!(u16).range(1..))]
    mqtt_max_keepalive: u16,
    /// How long the session of a client that went away is kept, with the messages queued for it:
    /// MQTT 3.1.1 clients with clean session off get this, MQTT 5 clients the session expiry
    /// they ask for, up to this. At least 1s.
    #[arg(long, env = "PRICEFEED_MQTT_SESSION_EXPIRY", default_value = "2h", value_parser = parse_session_expiry)]
    mqtt_session_expiry: Duration,
    /// Messages queued for one session (away, or online but slow); past it, each new message
    /// pushes out the oldest (QoS 1 subscriptions) or is dropped (QoS 0).
    #[arg(long, env = "PRICEFEED_MQTT_MAX_QUEUED_MESSAGES", default_value_t = ClientLimits::default().max_queued_messages as u32, value_parser = clap::value_parser!(u32).range(1..))]
    mqtt_max_queued_messages: u32,
}

fn parse_session_expiry(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

impl From<MqttLimits> for ClientLimits {
    fn from(flags: MqttLimits) -> ClientLimits {
        ClientLimits {
            max_packet_bytes: flags.mqtt_max_packet_bytes,
            max_keepalive_s: flags.mqtt_max_keepalive,
            connections_per_address: flags.mqtt_max_connections_per_address,
            connect_rate: flags.mqtt_connect_rate,
            connect_burst: flags.mqtt_connect_burst,
            session_expiry: flags.mqtt_session_expiry,
            max_queued_messages: flags.mqtt_max_queued_messages as usize,
        }
    }
}

async fn run(cli: Cli) -> Result<(), Fatal> {
    let config = cli.into_config()?;
    let feed = Feed::build(config).await?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        startup::shutdown_signal().await;
        stop.cancel();
    });
    Ok(feed.run(shutdown).await?)
}

fn main() -> ExitCode {
    let cli: Cli = match startup::parse("pricefeed") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    startup::init_tracing(cli.log_format, DEFAULT_LOG);
    startup::run("pricefeed", Runtime::MultiThread, run(cli))
}
