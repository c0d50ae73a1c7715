//! [`ClientLimits`]: what one MQTT client may take from the embedded broker (its packets, its
//! keep-alive, its session while it is away); [`ClientGuard`], the per-address part: open
//! connections and new connections per second.
//!
//! rmqtt 0.24 caps sessions only in total (`mqtt_max_sessions`); it has no per-address limit. Its
//! hooks give us one: the listener takes no anonymous shortcut (`allow_anonymous(false)`), so every
//! CONNECT passes `ClientAuthenticate`, where this guard, ahead of the ACL, refuses an address
//! over its limits with CONNACK "not authorized" (the only refusal an authentication hook can give)
//! and admits anonymous subscribers itself; a client with a username goes on to the ACL, which
//! checks the publisher's password as before. `ClientConnected` and `ClientDisconnected` count the
//! connections each address holds. Several handshakes from one address at the same instant are all
//! checked against the count before any of them is connected, so the cap can be passed by the
//! handshakes in progress (`max_handshaking_limit` bounds those).
//!
//! An IPv6 client is keyed by its /64, as in the history API ([`ticks::client::client_key`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, Priority, ReturnType, Type};
use rmqtt::types::AuthResult;
use ticks::client::client_key;

/// Limits per client and per client address. 0 turns a per-address limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The largest MQTT packet a client may send, in bytes; a larger one disconnects it. A
    /// subscriber sends a CONNECT and a SUBSCRIBE of a few dozen bytes; the publisher a tick.
    pub max_packet_bytes: u32,
    /// The longest keep-alive a client may ask for, in seconds; MQTT 3.1.1 clients asking for
    /// more, or for none (0), are refused, MQTT 5 clients get this one. A client silent for 1.5
    /// keep-alives is disconnected, so a dead or stalled connection is freed within that.
    pub max_keepalive_s: u16,
    /// Connections one address may hold open.
    pub connections_per_address: usize,
    /// New connections per second one address may open, sustained.
    pub connect_rate: u32,
    /// New connections one address may open at once above its rate.
    pub connect_burst: u32,
    /// How long the broker keeps the session of a client that went away with clean session off
    /// (MQTT 3.1.1), and the longest session expiry an MQTT 5 client may ask for; the messages
    /// queued for it live as long as the session. At least a second.
    pub session_expiry: Duration,
    /// Messages queued for one session: while it is away, or online with its 16 QoS 1 messages
    /// in flight unacknowledged. Past it, each new QoS 1 message pushes out the oldest queued one;
    /// a new QoS 0 message is dropped. At least 1.
    pub max_queued_messages: usize,
}

impl Default for ClientLimits {
    /// Generous: thousands of displays behind one carrier-grade NAT, and the 10,000 subscribers
    /// of the fan-out benchmark from one loopback address, stay under them.
    fn default() -> ClientLimits {
        ClientLimits {
            max_packet_bytes: 16 * 1024,
            max_keepalive_s: 1_200,
            connections_per_address: 20_000,
            connect_rate: 1_000,
            connect_burst: 20_000,
            // rmqtt's own defaults for MQTT 3.1.1 clients, which it did not apply to MQTT 5.
            session_expiry: Duration::from_secs(2 * 60 * 60),
            max_queued_messages: 1_000,
        }
    }
}

impl ClientLimits {
    /// Checks the values rmqtt would misread: a zero session expiry would mean "no cap" to it for
    /// MQTT 5 clients, and a zero queue would drop every message, online clients' too.
    pub fn validate(&self) -> Result<(), String> {
        if self.session_expiry < Duration::from_secs(1) {
            return Err("the MQTT session expiry must be at least 1s".into());
        }
        if self.max_queued_messages == 0 {
            return Err("the MQTT queue must hold at least 1 message".into());
        }
        Ok(())
    }
}

/// Runs before rmqtt-acl's handlers (priority 10).
const PRIORITY: Priority = 1_000;

/// How often (in CONNECTs) addresses whose rate bucket has refilled are forgotten.
const SWEEP_EVERY: u64 = 10_000;

struct Shared {
    limits: ClientLimits,
    open: Mutex<HashMap<IpAddr, usize>>,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    seen: AtomicU64,
    refused: AtomicU64,
}

/// The guard's hook handler; one instance per hook type, sharing the counts.
#[derive(Clone)]
pub(crate) struct ClientGuard(Arc<Shared>);

impl ClientGuard {
    pub(crate) fn new(limits: ClientLimits) -> ClientGuard {
        let rate = NonZeroU32::new(limits.connect_rate).map(|rate| {
            let burst =
                NonZeroU32::new(limits.connect_burst.max(limits.connect_rate)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        ClientGuard(Arc::new(Shared {
            limits,
            open: Mutex::default(),
            rate,
            seen: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }))
    }

    /// Registers the guard's hooks on the broker.
    pub(crate) async fn register(&self, scx: &ServerContext) {
        let register = scx.extends.hook_mgr().register();
        for typ in [
            Type::ClientAuthenticate,
            Type::ClientConnected,
            Type::ClientDisconnected,
        ] {
            register
                .add_priority(typ, PRIORITY, Box::new(self.clone()))
                .await;
        }
        register.start().await;
    }

    /// Why a new connection from `address` is refused, if it is.
    fn refusal(&self, address: IpAddr) -> Option<&'static str> {
        let shared = &self.0;
        let key = client_key(address);
        let cap = shared.limits.connections_per_address;
        if cap > 0 {
            let open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
            if open.get(&key).is_some_and(|n| *n >= cap) {
                return Some("its address holds its share of connections");
            }
        }
        if let Some(rate) = &shared.rate {
            if shared.seen.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
                rate.retain_recent();
                rate.shrink_to_fit();
            }
            if rate.check_key(&key).is_err() {
                return Some("its address connects faster than its rate");
            }
        }
        None
    }

    fn count(&self, address: IpAddr, opened: bool) {
        let key = client_key(address);
        let mut open = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        if opened {
            *open.entry(key).or_insert(0) += 1;
        } else if let Some(n) = open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

#[async_trait::async_trait]
impl Handler for ClientGuard {
    #[allow(elided_lifetimes_in_paths)] // as the trait declares it
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => {
                let address = info.id().remote_addr.map(|a| a.ip());
                if let Some(why) = address.and_then(|a| self.refusal(a)) {
                    let refused = self.0.refused.fetch_add(1, Ordering::Relaxed) + 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            address = ?address,
                            count = refused,
                            "MQTT connection refused: {why}"
                        );
                    }
                    return (
                        false,
                        Some(HookResult::AuthResult(AuthResult::NotAuthorized)),
                    );
                }
                if info.username().is_none() {
                    // Anonymous subscribers are welcome; the ACL decides what they may do.
                    return (
                        false,
                        Some(HookResult::AuthResult(AuthResult::Allow(false, None))),
                    );
                }
                (true, acc)
            }
            Parameter::ClientConnected(session) => {
                if let Some(address) = session.id.remote_addr {
                    self.count(address.ip(), true);
                }
                (true, acc)
            }
            Parameter::ClientDisconnected(session, _) => {
                if let Some(address) = session.id.remote_addr {
                    self.count(address.ip(), false);
                }
                (true, acc)
            }
            _ => (true, acc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_connected_clients_per_address() {
        let guard = ClientGuard::new(ClientLimits {
            connections_per_address: 2,
            connect_rate: 0,
            connect_burst: 0,
            ..ClientLimits::default()
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        guard.count(a, true);
        assert!(guard.refusal(a).is_none());
        guard.count(a, true);
        assert!(guard.refusal(a).is_some());
        assert!(guard.refusal(b).is_none());
        guard.count(a, false);
        assert!(guard.refusal(a).is_none());
    }
}
