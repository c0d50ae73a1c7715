//! [`Limits`]: what one client address may take from the history API, and the server as a whole.
//!
//! - A per-address request rate (a GCRA token bucket from `governor`, keyed by address): over it,
//!   `429 rate_limited` with `Retry-After`.
//! - A cap on requests in flight over all clients (tower's concurrency limit with load shedding):
//!   over it, `503 overloaded` with `Retry-After`, instead of a queue that grows without bound.
//! - A cap on open connections per address, enforced where connections are accepted.
//! - The request target's length (`414`) and the request head's size (hyper answers `431`).
//!
//! An address is the peer's, or, from a peer listed as a trusted proxy, the last address in the
//! header that proxy sets (`X-Forwarded-For`, say). An IPv6 client is keyed by its /64: one host
//! commonly holds a whole /64, and keying by single addresses would let it rotate past every limit.
//!
//! The defaults admit a whole carrier-grade NAT of price displays reconnecting together (a reconnect
//! storm of 5,000 clients from one address passes them), and still keep one address to a small
//! share of what the server answers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use ticks::client::{canonical_ip, client_key};

use crate::error::ApiError;

/// The limits, as flags of `pricefeed` and `history-api`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "History API limits")]
pub struct Limits {
    /// Requests per second one client address may make, sustained; over it, 429 with Retry-After.
    /// 0: no rate limit.
    #[arg(
        long = "http-rate-limit",
        env = "PRICEFEED_HTTP_RATE_LIMIT",
        default_value_t = 1_000
    )]
    pub rate: u32,
    /// Requests one client address may make at once above its rate (the bucket's size).
    #[arg(
        long = "http-rate-burst",
        env = "PRICEFEED_HTTP_RATE_BURST",
        default_value_t = 20_000
    )]
    pub burst: u32,
    /// Requests being answered at once over all clients; over it, 503 with Retry-After. 0: none.
    #[arg(
        long = "http-max-in-flight",
        env = "PRICEFEED_HTTP_MAX_IN_FLIGHT",
        default_value_t = 1_024
    )]
    pub in_flight: usize,
    /// Open HTTP connections from one client address; more are closed at once. 0: no cap.
    /// Trusted proxies are exempt.
    #[arg(
        long = "http-max-connections-per-address",
        env = "PRICEFEED_HTTP_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 4_096
    )]
    pub connections_per_address: usize,
    /// Longest request target (path and query string) in bytes; longer ones get 414.
    #[arg(
        long = "http-max-uri-bytes",
        env = "PRICEFEED_HTTP_MAX_URI_BYTES",
        default_value_t = 2_048
    )]
    pub uri_bytes: usize,
    /// Largest request head (request line and headers) in bytes, at least 8192; larger ones get
    /// 431 and the connection is closed.
    #[arg(
        long = "http-max-header-bytes",
        env = "PRICEFEED_HTTP_MAX_HEADER_BYTES",
        default_value_t = 16_384,
        value_parser = clap::value_parser!(u32).range(8_192..)
    )]
    pub header_bytes: u32,
    /// The header a trusted reverse proxy puts the client's address in (its last value is used),
    /// such as X-Forwarded-For. Read only on connections from a `--http-trusted-proxy` address.
    #[arg(
        long = "http-client-address-header",
        env = "PRICEFEED_HTTP_CLIENT_ADDRESS_HEADER",
        requires = "trusted_proxies"
    )]
    pub address_header: Option<HeaderName>,
    /// An address of a reverse proxy in front of the history API (repeat, or separate with
    /// commas): its requests are limited by the client address it reports, and its connections
    /// are not capped.
    #[arg(
        long = "http-trusted-proxy",
        env = "PRICEFEED_HTTP_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            rate: 1_000,
            burst: 20_000,
            in_flight: 1_024,
            connections_per_address: 4_096,
            uri_bytes: 2_048,
            header_bytes: 16_384,
            address_header: None,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Limits {
    fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.contains(&canonical_ip(peer))
    }
}

/// The peer of the connection a request came on; the accept loop adds it to each request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// How often (in requests) keys that have refilled are dropped, so the limiter's memory follows
/// the addresses active now, not every address ever seen.
const SWEEP_EVERY: u64 = 10_000;

/// The request-level limits, shared by every request of one router.
pub(crate) struct RequestLimits {
    limits: Limits,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
    seen: AtomicU64,
}

impl RequestLimits {
    pub(crate) fn new(limits: &Limits) -> RequestLimits {
        let rate = NonZeroU32::new(limits.rate).map(|rate| {
            let burst = NonZeroU32::new(limits.burst.max(limits.rate)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        RequestLimits {
            limits: limits.clone(),
            rate,
            clock: DefaultClock::default(),
            seen: AtomicU64::new(0),
        }
    }

    /// The address a request is counted against, if it came over a socket.
    fn client(&self, request: &Request) -> Option<IpAddr> {
        let peer = request.extensions().get::<Peer>()?.0.ip();
        if let Some(name) = &self.limits.address_header
            && self.limits.trusts(peer)
        {
            // The last value is the one the trusted proxy added; earlier ones came from the
            // client and prove nothing. A proxy that sent none: count against the proxy.
            let reported = request
                .headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .next_back()
                .and_then(|v| v.trim().parse::<IpAddr>().ok());
            return Some(client_key(reported.unwrap_or(peer)));
        }
        Some(client_key(peer))
    }

    fn check(&self, request: &Request) -> Result<(), ApiError> {
        let uri = request.uri();
        let length = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        if length > self.limits.uri_bytes {
            return Err(ApiError::UriTooLong {
                length,
                max: self.limits.uri_bytes,
            });
        }
        let (Some(limiter), Some(client)) = (&self.rate, self.client(request)) else {
            return Ok(());
        };
        if self.seen.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            ApiError::RateLimited {
                client,
                retry_after: wait,
            }
        })
    }
}

/// The middleware that applies [`RequestLimits`].
pub(crate) async fn limit_request(
    State(limits): State<Arc<RequestLimits>>,
    request: Request,
    next: Next,
) -> Response {
    match limits.check(&request) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// Open connections per client address, for the accept loop.
pub(crate) struct ConnectionCounts {
    limits: Limits,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One accepted connection, counted until dropped.
pub(crate) struct Counted {
    counts: Arc<ConnectionCounts>,
    key: Option<IpAddr>,
}

impl ConnectionCounts {
    pub(crate) fn new(limits: &Limits) -> Arc<ConnectionCounts> {
        Arc::new(ConnectionCounts {
            limits: limits.clone(),
            open: Mutex::default(),
        })
    }

    /// Counts a connection from `peer`, or None when that address already holds its share.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Counted> {
        let cap = self.limits.connections_per_address;
        if cap == 0 || self.limits.trusts(peer) {
            return Some(Counted {
                counts: self.clone(),
                key: None,
            });
        }
        let key = client_key(peer);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Counted {
            counts: self.clone(),
            key: Some(key),
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_cap_frees_a_place_when_a_connection_closes() {
        let counts = ConnectionCounts::new(&Limits {
            connections_per_address: 2,
            trusted_proxies: vec!["10.0.0.1".parse().unwrap()],
            ..Limits::default()
        });
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let first = counts.admit(peer).unwrap();
        let _second = counts.admit(peer).unwrap();
        assert!(counts.admit(peer).is_none());
        assert!(counts.admit("192.0.2.2".parse().unwrap()).is_some());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let proxied: Vec<_> = (0..5).map(|_| counts.admit(proxy).unwrap()).collect();
        drop(first);
        assert!(counts.admit(peer).is_some());
        drop(proxied);
    }
}
