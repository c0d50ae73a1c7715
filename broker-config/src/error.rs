//! [`BrokerError`]: why the embedded broker did not start.

use std::net::SocketAddr;

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid broker configuration: {0}")]
    Config(String),
    #[error("cannot listen for MQTT on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    /// A cluster node's raft or gRPC port.
    #[error("cannot listen for the cluster's {what} on {addr}: {reason}")]
    ClusterPort {
        what: &'static str,
        addr: SocketAddr,
        reason: String,
    },
    #[error("the embedded broker failed to start: {0}")]
    Start(String),
}
