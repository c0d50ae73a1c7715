//! The MQTT broker that carries the feed, configured so that only the publisher can write prices.
//!
//! Two ways to run it, with the same rules:
//!
//! - **Embedded** ([`EmbeddedBroker`]): rmqtt 0.24 inside the pricefeed process, the single-machine
//!   default. MQTT 3.1.1 and 5 on a TCP listener (and, if asked, on one for MQTT over WebSocket
//!   and, with the cargo feature `tls`, one for MQTT over TLS: the same ACL and limits on each),
//!   retained messages in memory, and the ACL below.
//! - **External**: Mosquitto (or any broker) run by the operator; [`mosquitto`] writes the
//!   equivalent configuration and ACL, and `broker-config/mosquitto/` holds a ready example.
//! - **Clustered** ([`cluster`], cargo feature `cluster`): every node runs the embedded broker,
//!   joined in rmqtt's raft cluster.
//!
//! The rules, on every deployment meant for untrusted clients (invariant 5 of the design):
//!
//! - the publisher connects with a username and password, and may publish only the tick topics and
//!   the status topic;
//! - anyone may connect without credentials and subscribe to `btc/#`, `pricefeed/status`,
//!   `pricefeed/gaps` and `pricefeed/nodes/+`, and nothing else; their publishes are refused (the
//!   retained price every display shows stays ours);
//! - any other username, or a wrong password, is refused at CONNECT.
//!
//! This crate does not publish or subscribe; the publisher and `pricesub` are MQTT clients of it.

pub mod cluster;
mod embedded;
mod error;
mod guard;
pub mod mosquitto;

pub use cluster::{ClusterConfig, ClusterStatus, NodeAddr};
pub use embedded::{
    BrokerHandle, ClusterHandle, EmbeddedBroker, MQTT_TLS_BUILT, SessionCounts, TlsListener,
};
pub use error::BrokerError;
pub use guard::ClientLimits;

/// The username the publisher authenticates with.
pub const PUBLISHER_USER: &str = "pricefeed-publisher";

/// Topic filter anyone may subscribe to for ticks.
pub const TICKS_FILTER: &str = "btc/#";

/// The publisher's credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The publisher's username with the given password.
    pub fn publisher(password: impl Into<String>) -> Credentials {
        Credentials {
            username: PUBLISHER_USER.to_string(),
            password: password.into(),
        }
    }

    /// A fresh random password, for a single process whose broker and publisher share it in memory.
    pub fn random_publisher() -> Credentials {
        use std::fmt::Write;
        // 128 bits from the OS-seeded hasher keys; no crypto crate needed for a loopback secret
        // that never leaves the process.
        let mut password = String::with_capacity(32);
        for _ in 0..2 {
            let word = std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                std::time::SystemTime::now(),
            );
            let _ = write!(password, "{word:016x}");
        }
        Credentials::publisher(password)
    }

    /// Checks a password can be written into broker configuration safely.
    pub fn validate(&self) -> Result<(), String> {
        if self.password.is_empty() {
            return Err("the publisher password is empty".into());
        }
        if self
            .password
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\')
        {
            return Err(
                "the publisher password may not contain quotes, backslashes or control characters"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The topics only the publisher may publish to: every tick topic and every service topic (the
/// status, the gaps, and, as a filter, the nodes' liveness).
pub fn publisher_topics() -> Vec<&'static str> {
    let mut topics: Vec<&'static str> = ticks::Currency::ALL.iter().map(|c| c.topic()).collect();
    topics.extend(public_service_topics());
    topics
}

/// The filters anyone may subscribe to, besides [`TICKS_FILTER`].
pub fn public_service_topics() -> [&'static str; 3] {
    [ticks::STATUS_TOPIC, ticks::GAPS_TOPIC, ticks::NODES_FILTER]
}
