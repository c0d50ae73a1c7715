//! [`SubscriberConfig`]: where to subscribe and what to replay, with the defaults the command
//! and the SDK share; and [`parse_since`], how users write a `since`.

use std::collections::BTreeMap;
use std::time::Duration;

use ticks::{BrokerUrl, Currency, Timedate};

/// Where to subscribe and what to replay. [`SubscriberConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Brokers, tried in turn on reconnect.
    pub brokers: Vec<BrokerUrl>,
    /// History API base URLs (`http://host:8080`), tried in order.
    pub history: Vec<String>,
    pub currencies: Vec<Currency>,
    /// Replay history from this time (inclusive) before following live.
    pub since: Option<Timedate>,
    /// Per currency, the last tick an earlier subscription already delivered: this one resumes
    /// right after it (backfilling from there), whatever `since` says for that currency. How a
    /// consumer that kept its position (an SSE client's `Last-Event-ID`) continues with nothing
    /// missing and nothing repeated.
    pub resume_after: BTreeMap<Currency, Timedate>,
    /// Timeout of one history request.
    pub history_timeout: Duration,
    /// MQTT client id prefix; a random suffix keeps two subscribers from taking over each other.
    pub client_id: String,
    /// User name and password, for a broker that does not let anonymous clients read.
    pub credentials: Option<(String, String)>,
    /// At start-up, how long brokers and history servers that refuse or do not answer are tried
    /// again before the subscription fails (a display often starts before its network is up).
    /// Once it has followed live, a lost connection is retried for ever.
    pub start_within: Duration,
}

/// The history API's port in a single-node deployment, where it runs beside the broker.
pub const DEFAULT_HISTORY_PORT: u16 = 8080;

/// Timeout of one history request unless configured.
pub const DEFAULT_HISTORY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long start-up retries unreachable servers unless configured.
pub const DEFAULT_START_WITHIN: Duration = Duration::from_secs(30);

impl SubscriberConfig {
    /// Every currency, live only (no `since`), history at [`default_history_url`] of the first
    /// broker, a 10 s history timeout, client ids starting `pricesub`, 30 s for the servers to
    /// become reachable at start-up.
    pub fn new(brokers: Vec<BrokerUrl>) -> SubscriberConfig {
        SubscriberConfig {
            history: brokers
                .first()
                .map(default_history_url)
                .into_iter()
                .collect(),
            brokers,
            currencies: Currency::ALL.to_vec(),
            since: None,
            resume_after: BTreeMap::new(),
            history_timeout: DEFAULT_HISTORY_TIMEOUT,
            client_id: "pricesub".into(),
            credentials: None,
            start_within: DEFAULT_START_WITHIN,
        }
    }
}

/// Where the history API of a single-node feed is, given its broker: the same host, port 8080.
pub fn default_history_url(broker: &BrokerUrl) -> String {
    format!("http://{}:{DEFAULT_HISTORY_PORT}", broker.url_host())
}

/// Why a text is not a `since`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither a time (2026-11-24T01:40:00Z, unix seconds) nor a duration ago (10m)")]
pub struct BadSince(pub String);

/// Reads a `since` as users write it: an RFC 3339 time, unix seconds, or a duration before `now`
/// (`10m`, `2h`).
pub fn parse_since(s: &str, now: Timedate) -> Result<Timedate, BadSince> {
    if let Ok(t) = Timedate::parse_user(s) {
        return Ok(t);
    }
    humantime::parse_duration(s)
        .map(|ago| now.saturating_sub(ago))
        .map_err(|_| BadSince(s.to_string()))
}
