//! rmqtt 0.24 embedded in the pricefeed process.
//!
//! Sharp edges of rmqtt 0.24 this module works around (each has a regression test below):
//!
//! - Its default ACL allows everything, including publishes from any local process, so explicit
//!   rules are always supplied and end in `deny all`.
//! - `MqttServer::start()` calls `std::process::exit(1)` on error; `run()` inside our own task
//!   does not.
//! - `run()` never returns and has no shutdown handle; aborting it closes the listener but leaves
//!   every connection task running. The broker therefore gets its own tokio runtime on its own
//!   thread, and dropping that runtime is the shutdown: listener and connections close together.
//! - Retained messages inherit the listener's message expiry (5 min) unless the retainer's TTL is
//!   set to 0; a display that connects after a 6-minute source outage must still see a price.
//! - The listener's `max_connections` only sizes the handshake queue; the real cap on clients is
//!   `mqtt_max_sessions`.
//! - It has no per-address limits (only a total of sessions) and its listener skips every
//!   authentication hook for anonymous clients: see [`crate::guard`], which takes that shortcut's
//!   place.
//! - A CPU "busy check" refuses CONNECTs when the machine is loaded; a price feed should serve its
//!   subscribers precisely when it is busy, so it is off.
//! - An offline session's queued messages expire after the listener's message expiry (5 min)
//!   however long the session itself is kept (2 h for MQTT 3.1.1, as long as an MQTT 5 client
//!   asks): a display back after 6 minutes got nothing of what was queued for it. The message
//!   expiry is off, so a queued tick lives as long as its session, and `--mqtt-session-expiry`
//!   bounds both kinds of sessions.
//! - Its TLS listener (cargo feature `tls`) always builds its rustls configuration on aws-lc-rs,
//!   whatever the process default provider is; every other TLS of the process names ring
//!   explicitly or installs it as the default, so the two never have to agree.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rmqtt::context::ServerContext;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;

use crate::cluster::{ClusterConfig, ClusterStatus};
use crate::error::BrokerError;
use crate::guard::{ClientGuard, ClientLimits};
use crate::{Credentials, TICKS_FILTER, public_service_topics, publisher_topics};

/// Configuration of the embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    /// Where MQTT clients connect; port 0 picks a free port (see [`BrokerHandle::local_addr`]).
    pub listen: SocketAddr,
    /// The only credential that may publish.
    pub publisher: Credentials,
    /// Most concurrent MQTT sessions (clients) the broker accepts; 0 means no limit.
    pub max_sessions: usize,
    /// What one client and one client address may take.
    pub limits: ClientLimits,
    /// Worker threads of the broker's runtime.
    pub worker_threads: usize,
    /// Join this raft cluster (needs the cargo feature `cluster`).
    pub cluster: Option<ClusterConfig>,
    /// A second listener, for MQTT over TLS (needs the cargo feature `tls`).
    pub tls: Option<TlsListener>,
    /// A listener for MQTT over WebSocket (browsers, dashboards); port 0 picks a free port (see
    /// [`BrokerHandle::ws_addr`]). Any path; the subprotocol must be `mqtt` (or `mqttv3.1`).
    pub ws: Option<SocketAddr>,
}

/// Where and with what certificate the broker listens for MQTT over TLS: the same ACL and limits
/// as the plain listener, which stays open beside it.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// Port 0 picks a free port (see [`BrokerHandle::tls_addr`]).
    pub listen: SocketAddr,
    /// The certificate chain, PEM, the server's certificate first.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

/// Whether this build has MQTT over TLS (the cargo feature `tls`).
pub const MQTT_TLS_BUILT: bool = cfg!(feature = "tls");

impl EmbeddedBroker {
    /// A broker on `listen` with the given publisher credential and default limits.
    pub fn new(listen: SocketAddr, publisher: Credentials) -> EmbeddedBroker {
        EmbeddedBroker {
            listen,
            publisher,
            max_sessions: 100_000,
            limits: ClientLimits::default(),
            worker_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cluster: None,
            tls: None,
            ws: None,
        }
    }

    /// The rmqtt-acl rules. The first matching rule wins.
    pub fn acl_toml(&self) -> String {
        let Credentials { username, password } = &self.publisher;
        // A topic with a wildcard is a filter (pricefeed/nodes/+); any other must match exactly.
        let rule = |t: &str| {
            if t.contains('+') {
                format!("\"{t}\"")
            } else {
                format!("{{ eq = \"{t}\" }}")
            }
        };
        let publish: Vec<String> = publisher_topics().iter().map(|t| rule(t)).collect();
        let subscribe: Vec<String> = public_service_topics().iter().map(|t| rule(t)).collect();
        format!(
            r#"
# A client that publishes where it may not is disconnected, not just ignored: it is hostile or broken.
disconnect_if_pub_rejected = true
rules = [
  ["allow", {{ user = "{username}", password = "{password}" }}, "connect"],
  ["deny", "all", "connect"],
  ["allow", {{ user = "{username}" }}, "publish", [{publish}]],
  # rmqtt matches a subscription's filter against a rule's as if it were a topic, so the rule
  # pricefeed/nodes/+ would also admit pricefeed/nodes/#: refused first.
  ["deny", "all", "subscribe", [{{ eq = "{nodes_prefix}#" }}]],
  ["allow", "all", "subscribe", ["{TICKS_FILTER}", {subscribe}]],
  ["deny", "all"]
]
"#,
            publish = publish.join(", "),
            subscribe = subscribe.join(", "),
            nodes_prefix = ticks::NODES_TOPIC_PREFIX,
        )
    }

    /// Starts the broker on its own thread and runtime; returns once the listener is bound. A
    /// cluster node then joins its cluster in the background (see [`BrokerHandle::cluster`]) and
    /// accepts MQTT clients once it has.
    pub fn start(self) -> Result<BrokerHandle, BrokerError> {
        self.publisher.validate().map_err(BrokerError::Config)?;
        self.limits.validate().map_err(BrokerError::Config)?;
        #[cfg(not(feature = "cluster"))]
        if self.cluster.is_some() {
            return Err(BrokerError::Config(
                "this pricefeed was built without cluster mode (cargo build --release --features publisher/cluster)"
                    .into(),
            ));
        }
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            crate::cluster::raft::check_ports(cluster)?;
        }
        if self.tls.is_some() && !MQTT_TLS_BUILT {
            return Err(BrokerError::Config(
                "this pricefeed was built without MQTT TLS: build with --features tls".into(),
            ));
        }
        type Ready = Result<(Listening, ServerContext, tokio::runtime::Handle), BrokerError>;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Ready>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let joined = Arc::new(AtomicBool::new(self.cluster.is_none()));
        let joining = joined.clone();
        let cluster = self.cluster.clone();
        let thread = std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(self.worker_threads.max(1))
                    .thread_name("mqtt-broker-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(BrokerError::Start(e.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let (server, scx) = match self.build().await {
                        Ok((server, listening, scx)) => {
                            let _ = ready_tx.send(Ok((
                                listening,
                                scx.clone(),
                                tokio::runtime::Handle::current(),
                            )));
                            (server, scx)
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let run = async {
                        #[cfg(feature = "cluster")]
                        if let Some(cluster) = &self.cluster {
                            crate::cluster::raft::start_grpc(&scx, cluster);
                            crate::cluster::raft::join(&scx, &joining).await;
                        }
                        let _ = (&scx, &joining);
                        server.run().await
                    };
                    tokio::select! {
                        result = run => {
                            if let Err(e) = result {
                                tracing::error!(error = %e, "embedded broker stopped");
                            }
                        }
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime ends every broker task and closes every socket.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| BrokerError::Start(e.to_string()))?;
        let (listening, scx, runtime) = ready_rx
            .recv()
            .map_err(|_| BrokerError::Start("broker thread ended before listening".into()))??;
        tracing::info!(addr = %listening.plain, "embedded MQTT broker listening");
        if let Some(addr) = listening.tls {
            tracing::info!(%addr, "embedded MQTT broker listening for MQTT over TLS");
        }
        if let Some(addr) = listening.ws {
            tracing::info!(%addr, "embedded MQTT broker listening for MQTT over WebSocket");
        }
        Ok(BrokerHandle {
            local_addr: listening.plain,
            tls_addr: listening.tls,
            ws_addr: listening.ws,
            sessions: SessionCounts { scx: scx.clone() },
            cluster: cluster.map(|config| ClusterHandle {
                config: Arc::new(config),
                scx,
                runtime,
                joined,
            }),
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        })
    }

    async fn build(&self) -> Result<(MqttServer, Listening, ServerContext), BrokerError> {
        let start_err = |e: &dyn std::fmt::Display| BrokerError::Start(e.to_string());
        let mut builder = ServerContext::new()
            .mqtt_max_sessions(isize::try_from(self.max_sessions).unwrap_or(isize::MAX))
            .busy_check_enable(false)
            .plugins_config_map_add("rmqtt-acl", self.acl_toml())
            .plugins_config_map_add("rmqtt-retainer", RETAINER_TOML);
        if let Some(cluster) = &self.cluster {
            builder = builder
                .node_id(cluster.node_id)
                .plugins_config_map_add("rmqtt-cluster-raft", cluster.plugin_toml());
        }
        let scx = builder.build().await;
        rmqtt_acl::register(&scx, true, false)
            .await
            .map_err(|e| start_err(&e))?;
        rmqtt_retainer::register(&scx, true, false)
            .await
            .map_err(|e| start_err(&e))?;
        ClientGuard::new(self.limits).register(&scx).await;
        let bind_err = |e: &dyn std::fmt::Display| BrokerError::Bind {
            addr: self.listen,
            reason: e.to_string(),
        };
        let listener = listener_builder("mqtt/tcp", self.listen, &self.limits)
            .bind()
            .map_err(|e| bind_err(&e))?
            .tcp()
            .map_err(|e| bind_err(&e))?;
        let local_addr = listener.local_addr().map_err(|e| bind_err(&e))?;
        // Keyed by the real port: `listener()` would key it by the configured port, 0 in tests.
        let server = MqttServer::new(scx.clone()).listener_by_id(listener, local_addr.port());
        #[cfg(feature = "tls")]
        let (server, tls_addr) = match &self.tls {
            Some(tls) => {
                let (listener, addr) = tls_listener(tls, &self.limits)?;
                (server.listener_by_id(listener, addr.port()), Some(addr))
            }
            None => (server, None),
        };
        #[cfg(not(feature = "tls"))]
        let tls_addr = None;
        let (server, ws_addr) = match self.ws {
            Some(listen) => {
                let bind_err = |e: &dyn std::fmt::Display| BrokerError::Bind {
                    addr: listen,
                    reason: e.to_string(),
                };
                let listener = listener_builder("mqtt/ws", listen, &self.limits)
                    .bind()
                    .map_err(|e| bind_err(&e))?
                    .ws()
                    .map_err(|e| bind_err(&e))?;
                let addr = listener.local_addr().map_err(|e| bind_err(&e))?;
                (server.listener_by_id(listener, addr.port()), Some(addr))
            }
            None => (server, None),
        };
        let listening = Listening {
            plain: local_addr,
            tls: tls_addr,
            ws: ws_addr,
        };
        Ok((server.build(), listening, scx))
    }
}

/// The settings every listener shares, plain, TLS or WebSocket: rmqtt keeps them per listener,
/// and a session follows those of the listener its client connected to.
fn listener_builder(name: &str, listen: SocketAddr, limits: &ClientLimits) -> Builder {
    Builder::new()
        .name(name)
        .laddr(listen)
        // Anonymous clients are welcome to read (the ACL decides what they may do), but they
        // too pass the authentication hook, where the per-address limits are checked.
        .allow_anonymous(false)
        .max_packet_size(limits.max_packet_bytes)
        .max_keepalive(limits.max_keepalive_s)
        .allow_zero_keepalive(false)
        // MQTT 3.1.1 sessions are kept this long; MQTT 5 clients ask, up to this (rmqtt's zero
        // cap would mean none).
        .session_expiry_interval(limits.session_expiry)
        .max_session_expiry_interval(limits.session_expiry)
        // Zero: no expiry of its own. A queued message lives as long as its session, instead of
        // being dropped at delivery once 5 minutes old (rmqtt's default); retained messages have
        // their own TTL (`RETAINER_TOML`).
        .message_expiry_interval(Duration::ZERO)
        .max_mqueue_len(limits.max_queued_messages)
        // A restarted process can re-bind its port while old sockets sit in TIME_WAIT.
        .reuseaddr(Some(true))
        // A tick goes out the moment it is written, not after the previous one is acknowledged.
        .nodelay(true)
}

/// The MQTT-over-TLS listener, bound, with its certificate and key read.
#[cfg(feature = "tls")]
fn tls_listener(
    tls: &TlsListener,
    limits: &ClientLimits,
) -> Result<(rmqtt::net::Listener, SocketAddr), BrokerError> {
    let bind_err = |e: &dyn std::fmt::Display| BrokerError::Bind {
        addr: tls.listen,
        reason: e.to_string(),
    };
    let listener = listener_builder("mqtt/tls", tls.listen, limits)
        .tls_cert(Some(tls.cert.to_string_lossy()))
        .tls_key(Some(tls.key.to_string_lossy()))
        .bind()
        .map_err(|e| bind_err(&e))?
        // Its error names neither file: say which.
        .tls()
        .map_err(|e| {
            BrokerError::Config(format!(
                "MQTT over TLS with the certificate {} and key {}: {e:#}",
                tls.cert.display(),
                tls.key.display()
            ))
        })?;
    let addr = listener.local_addr().map_err(|e| bind_err(&e))?;
    Ok((listener, addr))
}

/// The addresses the broker's listeners really bound.
struct Listening {
    plain: SocketAddr,
    tls: Option<SocketAddr>,
    ws: Option<SocketAddr>,
}

/// Retained messages in memory, never expiring: the last price stays visible through an outage
/// (the publisher re-publishes the stored latest tick when it restarts).
const RETAINER_TOML: &str = r#"
storage.type = "ram"
max_retained_messages = 0
max_payload_size = "1MB"
retained_message_ttl = "0s"
"#;

/// A running embedded broker. Dropping it stops the broker.
pub struct BrokerHandle {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    ws_addr: Option<SocketAddr>,
    sessions: SessionCounts,
    cluster: Option<ClusterHandle>,
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A way to ask a cluster node's broker what its raft knows, from any runtime.
#[derive(Clone)]
pub struct ClusterHandle {
    config: Arc<ClusterConfig>,
    scx: ServerContext,
    runtime: tokio::runtime::Handle,
    joined: Arc<AtomicBool>,
}

impl ClusterHandle {
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// What this node's raft says now: joined, leader, peers it reaches. Asked on the broker's
    /// runtime, where the cluster plugin lives.
    pub async fn status(&self) -> ClusterStatus {
        #[cfg(feature = "cluster")]
        {
            let (scx, config, joined) =
                (self.scx.clone(), self.config.clone(), self.joined.clone());
            let asked = self
                .runtime
                .spawn(async move { crate::cluster::raft::status(&scx, &config, &joined).await });
            asked.await.unwrap_or_default()
        }
        #[cfg(not(feature = "cluster"))]
        {
            let _ = (&self.scx, &self.runtime, &self.joined);
            ClusterStatus::default()
        }
    }
}

/// How many MQTT clients the broker holds now, readable from any thread or runtime: rmqtt keeps
/// these counts in atomics, the same ones its `mqtt_max_sessions` cap is checked against.
#[derive(Clone)]
pub struct SessionCounts {
    scx: ServerContext,
}

impl SessionCounts {
    /// Sessions on this broker (on a cluster node: this node's), the publisher's own included;
    /// what `max_sessions` caps.
    pub fn sessions(&self) -> u64 {
        u64::try_from(self.scx.sessions.count()).unwrap_or(0)
    }

    /// Open MQTT connections on this broker's listeners.
    pub fn connections(&self) -> u64 {
        u64::try_from(self.scx.connections.count()).unwrap_or(0)
    }
}

impl BrokerHandle {
    /// What the broker holds now; keeps counting until the broker stops.
    pub fn session_counts(&self) -> SessionCounts {
        self.sessions.clone()
    }

    /// The address the broker listens on (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the MQTT-over-TLS listener, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The address of the MQTT-over-WebSocket listener, if there is one.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// The cluster this broker is a node of, if any.
    pub fn cluster(&self) -> Option<&ClusterHandle> {
        self.cluster.as_ref()
    }

    /// Stops the broker and waits (about a millisecond, at most ~1 s) for its thread to end.
    /// Blocking: from async code, call it in `spawn_blocking` or drop the handle there.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
