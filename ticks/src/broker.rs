//! [`BrokerUrl`]: where an MQTT broker listens, as every binary reads it from its flags.

use std::fmt;
use std::str::FromStr;

/// The MQTT port when a URL names none.
pub const DEFAULT_MQTT_PORT: u16 = 1883;

/// Where an MQTT broker listens: `mqtt://host:port`, `tcp://host:port` or `host:port` (port 1883
/// when omitted; IPv6 hosts in brackets, `mqtt://[::1]:1883`). Plain MQTT only: TLS belongs to the
/// broker's listener or a proxy in front of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerUrl {
    /// A host name or an IP address, without brackets.
    pub host: String,
    pub port: u16,
}

/// Why a text is not a [`BrokerUrl`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadBrokerUrl {
    #[error("{0:?}: only plain MQTT (mqtt://host:port) is supported")]
    Scheme(String),
    #[error("{url:?}: {port:?} is not a port number")]
    Port { url: String, port: String },
    #[error("{0:?} is not a broker URL such as mqtt://127.0.0.1:1883")]
    Host(String),
}

impl BrokerUrl {
    /// A broker on `host` (a name or an IP address) and `port`.
    pub fn new(host: impl Into<String>, port: u16) -> BrokerUrl {
        BrokerUrl {
            host: host.into(),
            port,
        }
    }

    /// The host as it goes into a URL: IPv6 addresses in brackets.
    pub fn url_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = BadBrokerUrl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("mqtt://")
            .or_else(|| s.strip_prefix("tcp://"))
            .unwrap_or(s);
        if rest.contains("://") {
            return Err(BadBrokerUrl::Scheme(s.to_string()));
        }
        let rest = rest.trim_end_matches('/');
        // `[v6]:port`, `[v6]`, `host:port` or `host`; a bare IPv6 address has several colons.
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| BadBrokerUrl::Host(s.to_string()))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(BadBrokerUrl::Host(s.to_string())),
                },
            }
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                Some(_) => (rest, None),
                None => (rest, None),
            }
        };
        let port = match port {
            None => DEFAULT_MQTT_PORT,
            Some(port) => port.parse().map_err(|_| BadBrokerUrl::Port {
                url: s.to_string(),
                port: port.to_string(),
            })?,
        };
        if host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@' | '[' | ']'))
        {
            return Err(BadBrokerUrl::Host(s.to_string()));
        }
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mqtt://{}:{}", self.url_host(), self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Result<BrokerUrl, BadBrokerUrl> {
        s.parse()
    }

    #[test]
    fn every_accepted_form() {
        let local = BrokerUrl::new("127.0.0.1", 1884);
        assert_eq!(url("mqtt://127.0.0.1:1884"), Ok(local.clone()));
        assert_eq!(url("tcp://127.0.0.1:1884"), Ok(local.clone()));
        assert_eq!(url("127.0.0.1:1884"), Ok(local.clone()));
        assert_eq!(url("mqtt://127.0.0.1:1884/"), Ok(local.clone()));
        assert_eq!(local.to_string(), "mqtt://127.0.0.1:1884");
        assert_eq!(url("tcp://broker"), Ok(BrokerUrl::new("broker", 1883)));
        assert_eq!(url("broker:2000"), Ok(BrokerUrl::new("broker", 2000)));
        let v6 = url("mqtt://[::1]:1883").unwrap();
        assert_eq!(v6, BrokerUrl::new("::1", 1883));
        assert_eq!(v6.to_string(), "mqtt://[::1]:1883");
        assert_eq!(v6.url_host(), "[::1]");
        assert_eq!(url("[::1]"), Ok(BrokerUrl::new("::1", 1883)));
        assert_eq!(url("::1"), Ok(BrokerUrl::new("::1", 1883)));
    }

    /// The publisher and `pricesub` once had a parser each, and they disagreed about `/` in a host.
    #[test]
    fn what_is_refused_and_why() {
        assert_eq!(
            url("mqtts://broker:8883"),
            Err(BadBrokerUrl::Scheme("mqtts://broker:8883".into()))
        );
        assert_eq!(
            url("http://broker"),
            Err(BadBrokerUrl::Scheme("http://broker".into()))
        );
        assert_eq!(
            url("mqtt://broker:http").unwrap_err().to_string(),
            "\"mqtt://broker:http\": \"http\" is not a port number"
        );
        assert!(matches!(
            url("mqtt://host:99999"),
            Err(BadBrokerUrl::Port { .. })
        ));
        for bad in [
            "mqtt://:1883",
            "",
            "mqtt://",
            "mqtt://host/path:1883",
            "broker/x",
            "user@broker:1883",
            "[::1",
            "[::1]x",
            "two words",
        ] {
            assert!(
                matches!(url(bad), Err(BadBrokerUrl::Host(_))),
                "{bad:?}: {:?}",
                url(bad)
            );
        }
    }
}
