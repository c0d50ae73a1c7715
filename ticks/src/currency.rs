//! The currencies BTC is priced in, and the MQTT topics they are published on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Retained service status (feed state, gaps, demo data) lives outside `btc/` so that `btc/#`
/// subscribers only ever see ticks.
pub const STATUS_TOPIC: &str = "pricefeed/status";

/// Every gap the publisher records, as it records it (not retained): a subscriber learns that a
/// slot will have no tick without waiting for the next tick, and every node of a cluster records
/// the gaps of the node that publishes.
pub const GAPS_TOPIC: &str = "pricefeed/gaps";

/// Each node of a cluster says, retained, on `pricefeed/nodes/<id>` whether it is the active
/// publisher, a standby, catching up, or offline (its MQTT will).
pub const NODES_TOPIC_PREFIX: &str = "pricefeed/nodes/";

/// The topic filter of every node's liveness.
pub const NODES_FILTER: &str = "pricefeed/nodes/+";

/// A fiat currency BTC is quoted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Currency {
    USD,
    EUR,
}

impl Currency {
    /// Every currency, in the order answers list them.
    pub const ALL: [Currency; 2] = [Currency::USD, Currency::EUR];

    /// The ISO 4217 code, as in the topic and the history API.
    pub const fn code(self) -> &'static str {
        match self {
            Currency::USD => "USD",
            Currency::EUR => "EUR",
        }
    }

    /// The MQTT topic this currency's ticks are published on.
    pub const fn topic(self) -> &'static str {
        match self {
            Currency::USD => "btc/USD",
            Currency::EUR => "btc/EUR",
        }
    }

    /// The currency of an ISO 4217 numeric code; `None` for any other number.
    pub fn from_numeric(code: i64) -> Option<Currency> {
        Currency::ALL.into_iter().find(|c| c.numeric() == code)
    }

    /// The currency a tick topic belongs to; `None` for any other topic.
    pub fn from_topic(topic: &str) -> Option<Currency> {
        Currency::ALL.into_iter().find(|c| c.topic() == topic)
    }

    /// ISO 4217 numeric code: the stable, compact key the store uses.
    pub const fn numeric(self) -> i64 {
        match self {
            Currency::USD => 840,
            Currency::EUR => 978,
        }
    }

    /// Parses a comma-separated list such as `USD,EUR` (or `both`), without duplicates, in
    /// [`Currency::ALL`] order.
    pub fn parse_list(s: &str) -> Result<Vec<Currency>, UnknownCurrency> {
        if s.eq_ignore_ascii_case("both") || s.eq_ignore_ascii_case("all") {
            return Ok(Currency::ALL.to_vec());
        }
        let mut wanted = Vec::new();
        for part in s.split(',') {
            let c: Currency = part.trim().parse()?;
            if !wanted.contains(&c) {
                wanted.push(c);
            }
        }
        wanted.sort();
        Ok(wanted)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A currency code we do not publish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown currency {0:?} (expected USD or EUR)")]
pub struct UnknownCurrency(pub String);

impl FromStr for Currency {
    type Err = UnknownCurrency;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::ALL
            .into_iter()
            .find(|c| c.code().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownCurrency(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        for c in Currency::ALL {
            assert_eq!(Currency::from_topic(c.topic()), Some(c));
        }
        assert_eq!(Currency::USD.topic(), "btc/USD");
        assert_eq!(Currency::EUR.topic(), "btc/EUR");
        assert_eq!(Currency::from_topic("btc/GBP"), None);
        assert_eq!(Currency::from_topic("btc/usd"), None);
    }

    #[test]
    fn lists_parse_without_duplicates() {
        assert_eq!(
            Currency::parse_list("EUR,USD").unwrap(),
            vec![Currency::USD, Currency::EUR]
        );
        assert_eq!(Currency::parse_list("usd").unwrap(), vec![Currency::USD]);
        assert_eq!(
            Currency::parse_list("USD,USD").unwrap(),
            vec![Currency::USD]
        );
        assert_eq!(
            Currency::parse_list("both").unwrap(),
            Currency::ALL.to_vec()
        );
        assert_eq!(
            Currency::parse_list("USD,GBP").unwrap_err(),
            UnknownCurrency("GBP".into())
        );
        assert!(Currency::parse_list("").is_err());
    }
}
