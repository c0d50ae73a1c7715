//! The election of nodes on an operator's broker: etcd's v3 election API (the cargo feature
//! `etcd`; the settings are parsed in every build, so a build without it says so clearly).
//!
//! Plain MQTT has no compare-and-set, so every MQTT-only election has documented failure modes;
//! etcd's election is a raft-replicated key per candidate, ordered by creation, each bound to its
//! candidate's lease. A node:
//!
//! 1. grants a lease of `ttl` and keeps it alive every `ttl / 3` (`LeaseKeepAlive`; a failed
//!    keep-alive is tried again after a fifth of that, on a new stream);
//! 2. campaigns (`Campaign` returns once its key is the oldest: it leads);
//! 3. reads the leader every keep-alive round (`Leader`), to know whose history to ask first, and to
//!    notice its own key gone;
//! 4. on a clean shutdown resigns (`Resign`) and revokes its lease, so the next node's campaign
//!    returns at once.
//!
//! **Fencing.** An etcd lease does not fence its holder (Jepsen's etcd analysis): a leader cut off
//! from etcd still believes it leads while its lease runs out and another node is elected. So the
//! node never trusts its key alone. A keep-alive sent at `t` and answered proves the lease alive
//! until at least `t + ttl` (etcd counts from when the request *arrived*); the node leads only
//! while that instant is more than `ttl / 6` away. A leader whose keep-alives fail stops publishing
//! before etcd can expire its key and elect another node, with a sixth of the TTL to spare for the
//! last publish in flight. All of it uses the monotonic clock.

use std::time::Duration;

/// The election settings of a node on an operator's broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// The members' client URLs (`http://host:port`).
    pub endpoints: Vec<String>,
    /// The election's name: every candidate's key is `<name>/<lease id>`.
    pub name: String,
    /// The lease's time to live: how long a leader that vanished holds the feed (whole seconds).
    pub ttl: Duration,
}

/// The default election name.
pub const DEFAULT_NAME: &str = "/pricefeed/publisher";

/// The shortest and longest lease a node asks for. etcd's own floor is 1.5 election timeouts
/// (1.5 s by default), and a keep-alive every third of it must have time to answer.
pub const TTL_RANGE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(60));

impl EtcdSettings {
    /// `etcd://host:port,host:port,…` (the scheme once, or before every member).
    pub fn parse_endpoints(list: &str) -> Result<Vec<String>, String> {
        let rest = list
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("{list:?}: expected etcd://HOST:PORT[,HOST:PORT…]"))?;
        let mut endpoints = Vec::new();
        for member in rest.split(',') {
            let member = member.trim();
            let member = member.strip_prefix("etcd://").unwrap_or(member);
            let Some((host, port)) = member.rsplit_once(':') else {
                return Err(format!("{member:?} in {list:?}: expected HOST:PORT"));
            };
            if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
                return Err(format!("{member:?} in {list:?}: expected HOST:PORT"));
            }
            endpoints.push(format!("http://{host}:{port}"));
        }
        Ok(endpoints)
    }

    /// Checks the name and TTL.
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("--elect names no etcd member".into());
        }
        if self.name.is_empty() || !self.name.starts_with('/') {
            return Err(format!(
                "--elect-name {:?}: must start with / (an etcd key prefix)",
                self.name
            ));
        }
        let (min, max) = TTL_RANGE;
        if self.ttl < min || self.ttl > max || self.ttl.subsec_nanos() != 0 {
            return Err(format!(
                "--elect-ttl {}: must be whole seconds from {} to {} (etcd leases count whole seconds)",
                humantime::format_duration(self.ttl),
                min.as_secs(),
                max.as_secs()
            ));
        }
        Ok(())
    }

    /// How often the lease is kept alive (and the leader read).
    pub fn keep_alive_every(&self) -> Duration {
        self.ttl / 3
    }

    /// How long before the lease can have expired a leader stops publishing.
    pub fn fence_margin(&self) -> Duration {
        self.ttl / 6
    }
}

#[cfg(feature = "etcd")]
pub use client::EtcdLeadership;

#[cfg(feature = "etcd")]
mod client {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use etcd_client::{
        Client, ConnectOptions, GetOptions, LeaderKey, LeaseKeepAliveStream, LeaseKeeper,
        ResignOptions,
    };
    use tokio::time::{Instant, timeout};
    use tokio_util::sync::CancellationToken;

    use crate::etcd::EtcdSettings;
    use crate::leadership::{Answer, Leadership};

    /// How long a call at shutdown may take.
    const SHUTDOWN_CALL: Duration = Duration::from_secs(2);
    const RETRY_MIN: Duration = Duration::from_millis(250);

    /// What the campaign knows.
    #[derive(Default)]
    struct Shared {
        /// The lease of the current (or last) term, until it is known revoked or expired.
        lease: Option<i64>,
        /// The lease is certainly alive on etcd until then.
        alive_until: Option<Instant>,
        /// This node's key, from the moment its campaign returns until the term ends.
        leading: Option<LeaderKey>,
        /// The leader, as last read.
        leader: Option<u64>,
    }

    /// This node's part in the etcd election. See the module documentation.
    pub struct EtcdLeadership {
        settings: EtcdSettings,
        node: u64,
        client: Client,
        shared: Arc<Mutex<Shared>>,
        stop: CancellationToken,
        task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    }

    /// Why a term ended.
    #[derive(Debug, thiserror::Error)]
    enum TermError {
        #[error("etcd: {0}")]
        Etcd(#[from] etcd_client::Error),
        #[error("etcd did not answer within {0:?}")]
        Timeout(Duration),
        #[error("the lease expired")]
        LeaseExpired,
        #[error("no keep-alive answered for the lease's whole TTL")]
        LeaseUnconfirmed,
        #[error("another node's key leads: {0}")]
        Deposed(String),
        #[error("etcd answered without {0}")]
        Incomplete(&'static str),
    }

    async fn within<T>(
        limit: Duration,
        call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, TermError> {
        match timeout(limit, call).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(TermError::Timeout(limit)),
        }
    }

    fn lease_not_found(e: &etcd_client::Error) -> bool {
        matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("lease not found"))
    }

    impl EtcdLeadership {
        /// Starts campaigning until `shutdown` (or [`Leadership::resign`]). Connects lazily: etcd
        /// being down at start is a retried condition, not an error.
        pub async fn start(
            settings: EtcdSettings,
            node: u64,
            shutdown: CancellationToken,
        ) -> anyhow::Result<Arc<EtcdLeadership>> {
            settings.validate().map_err(anyhow::Error::msg)?;
            let options = ConnectOptions::new()
                .with_connect_timeout(settings.keep_alive_every())
                .with_keep_alive(settings.keep_alive_every(), settings.keep_alive_every())
                // A member cut off from the others answers "no leader" at once instead of waiting.
                .with_require_leader(true);
            let client = Client::connect(&settings.endpoints, Some(options)).await?;
            let election = Arc::new(EtcdLeadership {
                settings,
                node,
                client,
                shared: Arc::default(),
                stop: shutdown.child_token(),
                task: Mutex::new(None),
            });
            let task = tokio::spawn(election.clone().campaign());
            *election.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
            Ok(election)
        }

        fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
            self.shared.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Until when this node's lease is known to be alive (tests).
        pub fn lease_alive_until(&self) -> Option<Instant> {
            self.shared().alive_until
        }

        /// Terms, one after another, until stopped.
        async fn campaign(self: Arc<Self>) {
            let mut retry = RETRY_MIN;
            // Short terms in a row: while etcd is unreachable a term ends every few seconds, and
            // only the first says so at warn.
            let mut failed = 0u32;
            loop {
                let started = Instant::now();
                let ended = tokio::select! {
                    ended = self.term() => ended,
                    _ = self.stop.cancelled() => return,
                };
                let was_leading = {
                    let mut shared = self.shared();
                    shared.alive_until = None;
                    shared.leading.take().is_some()
                };
                // A term that led, or lasted, was not a failure to reach etcd.
                if was_leading || started.elapsed() >= self.settings.ttl {
                    failed = 0;
                    retry = RETRY_MIN;
                }
                failed += 1;
                match ended {
                    Ok(()) => retry = RETRY_MIN,
                    Err(e) if was_leading || failed == 1 => tracing::warn!(
                        node = self.node,
                        error = %e,
                        leading = was_leading,
                        "etcd election: the term ended; campaigning again"
                    ),
                    Err(e) => tracing::debug!(
                        node = self.node,
                        error = %e,
                        failed,
                        "etcd election: the term ended again"
                    ),
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = self.stop.cancelled() => return,
                }
                retry = (retry * 2).min(self.settings.ttl);
            }
        }

        /// One lease: granted, kept alive, campaigned with, until it is lost.
        async fn term(&self) -> Result<(), TermError> {
            let period = self.settings.keep_alive_every();
            let mut client = self.client.clone();
            // A lease of an earlier term may still hold a place in the election, even the lead:
            // revoked first, or this node would queue behind itself.
            let old = self.shared().lease;
            if let Some(old) = old {
                match timeout(period, client.lease_revoke(old)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) if lease_not_found(&e) => {}
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => return Err(TermError::Timeout(period)),
                }
                self.shared().lease = None;
            }
            let sent = Instant::now();
            let ttl = self.settings.ttl.as_secs() as i64;
            let grant = within(period, client.lease_grant(ttl, None)).await?;
            let lease = grant.id();
            {
                let mut shared = self.shared();
                shared.lease = Some(lease);
                shared.alive_until = Some(sent + Duration::from_secs(grant.ttl().max(0) as u64));
            }
            tracing::debug!(
                node = self.node,
                lease,
                ttl = grant.ttl(),
                "etcd lease granted"
            );
            tokio::select! {
                ended = self.keep_alive(lease) => ended,
                ended = self.lead(lease) => ended,
            }
        }

        /// Keeps `lease` alive every third of its TTL; ends when it can no longer be known alive.
        async fn keep_alive(&self, lease: i64) -> Result<(), TermError> {
            let period = self.settings.keep_alive_every();
            let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
            loop {
                let sent = Instant::now();
                // Half a period per try, and a failed try is followed by another soon: an etcd
                // member lost (or its own leader election) must not cost the lease's whole fence
                // in two slow tries against the member that is gone.
                let answer = timeout(period / 2, async {
                    if stream.is_none() {
                        stream = Some(self.client.clone().lease_keep_alive(lease).await?);
                    }
                    let (keeper, answers) = stream.as_mut().expect("opened above");
                    keeper.keep_alive().await?;
                    answers.message().await
                })
                .await;
                let next = match answer {
                    Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                        self.shared().alive_until =
                            Some(sent + Duration::from_secs(answer.ttl() as u64));
                        sent + period
                    }
                    Ok(Ok(Some(_))) => return Err(TermError::LeaseExpired),
                    failed => {
                        if let Ok(Err(e)) = &failed {
                            tracing::debug!(node = self.node, error = %e, "etcd keep-alive failed");
                        }
                        // A new stream next round (the balancer may pick a member that answers).
                        stream = None;
                        let alive = self.shared().alive_until;
                        if alive.is_none_or(|until| Instant::now() >= until) {
                            return Err(TermError::LeaseUnconfirmed);
                        }
                        Instant::now() + period / 5
                    }
                };
                tokio::time::sleep_until(next).await;
            }
        }

        /// Campaigns with `lease`, then reads the leader every round until another key leads.
        async fn lead(&self, lease: i64) -> Result<(), TermError> {
            let period = self.settings.keep_alive_every();
            let mut client = self.client.clone();
            // Standbys wait in the campaign; the leader read runs beside it so that they know who
            // leads meanwhile.
            let won = tokio::select! {
                won = client.campaign(self.settings.name.as_str(), self.node.to_string(), lease) => won?,
                never = self.read_leader_forever() => match never {},
            };
            let key = won
                .leader()
                .cloned()
                .ok_or(TermError::Incomplete("the leader key"))?;
            tracing::info!(node = self.node, lease, "etcd election: this node leads");
            self.shared().leading = Some(key.clone());
            loop {
                if let Some(other) = self.read_leader().await
                    && other != key.key()
                {
                    return Err(TermError::Deposed(String::from_utf8_lossy(&other).into()));
                }
                tokio::time::sleep(period).await;
            }
        }

        async fn read_leader_forever(&self) -> std::convert::Infallible {
            loop {
                self.read_leader().await;
                tokio::time::sleep(self.settings.keep_alive_every()).await;
            }
        }

        /// Reads the leader (its node id is its value); returns its key, or None if etcd did not
        /// answer in time.
        async fn read_leader(&self) -> Option<Vec<u8>> {
            let mut client = self.client.clone();
            let name = self.settings.name.as_str();
            let answer = within(self.settings.keep_alive_every(), client.leader(name)).await;
            match answer {
                Ok(answer) => {
                    let kv = answer.kv()?;
                    let node = std::str::from_utf8(kv.value())
                        .ok()
                        .and_then(|v| v.parse().ok());
                    self.shared().leader = node;
                    Some(kv.key().to_vec())
                }
                Err(e) => {
                    // "election: no leader" is an answer too: nobody leads.
                    if let TermError::Etcd(etcd_client::Error::GRpcStatus(s)) = &e
                        && s.message().contains("no leader")
                    {
                        self.shared().leader = None;
                    }
                    None
                }
            }
        }
    }

    impl Leadership for EtcdLeadership {
        fn check(&self) -> Answer<'_, bool> {
            let shared = self.shared();
            let leads = shared.leading.is_some()
                && shared
                    .alive_until
                    .is_some_and(|until| Instant::now() + self.settings.fence_margin() < until);
            Box::pin(async move { leads })
        }

        fn leader(&self) -> Answer<'_, Option<u64>> {
            let leader = self.shared().leader;
            Box::pin(async move { leader })
        }

        fn others_can_take_over(&self) -> Answer<'_, bool> {
            Box::pin(async move {
                let own = self.shared().lease;
                let prefix = format!("{}/", self.settings.name);
                let mut client = self.client.clone();
                let candidates = within(
                    SHUTDOWN_CALL,
                    client.get(prefix, Some(GetOptions::new().with_prefix())),
                )
                .await;
                match candidates {
                    Ok(answer) => answer.kvs().iter().any(|kv| Some(kv.lease()) != own),
                    // etcd unreachable: nobody can be elected.
                    Err(_) => false,
                }
            })
        }

        fn resign(&self) -> Answer<'_, ()> {
            Box::pin(async move {
                self.stop.cancel();
                let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(task) = task {
                    let _ = task.await;
                }
                let (leading, lease) = {
                    let mut shared = self.shared();
                    shared.alive_until = None;
                    (shared.leading.take(), shared.lease.take())
                };
                let mut client = self.client.clone();
                if let Some(key) = leading {
                    let resigned = within(
                        SHUTDOWN_CALL,
                        client.resign(Some(ResignOptions::new().with_leader(key))),
                    )
                    .await;
                    match resigned {
                        Ok(_) => tracing::info!(node = self.node, "etcd election: resigned"),
                        Err(e) => tracing::warn!(node = self.node, error = %e,
                            "etcd election: cannot resign; the next node waits for the lease to expire"),
                    }
                }
                if let Some(lease) = lease {
                    let _ = within(SHUTDOWN_CALL, client.lease_revoke(lease)).await;
                }
            })
        }

        fn confirmations(&self) -> u32 {
            // A deposed leader has stopped before etcd can elect another (fencing), so the elected
            // node may start at once.
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_from_one_url_with_many_members() {
        assert_eq!(
            EtcdSettings::parse_endpoints("etcd://a:2379,10.0.0.2:2379,etcd://[::1]:2379").unwrap(),
            ["http://a:2379", "http://10.0.0.2:2379", "http://[::1]:2379"]
        );
        for bad in [
            "a:2379",
            "etcd://",
            "etcd://a",
            "etcd://a:x",
            "etcd://a:2379,",
            "etcd://a:2379/path:1",
            "http://a:2379",
        ] {
            assert!(
                EtcdSettings::parse_endpoints(bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn ttl_must_be_whole_seconds_within_range() {
        let settings = |ttl: Duration| EtcdSettings {
            endpoints: vec!["http://a:2379".into()],
            name: DEFAULT_NAME.into(),
            ttl,
        };
        assert!(settings(Duration::from_secs(3)).validate().is_ok());
        for bad in [
            Duration::from_secs(1),
            Duration::from_millis(2500),
            Duration::from_secs(61),
        ] {
            let error = settings(bad).validate().unwrap_err();
            assert!(error.contains("--elect-ttl"), "{error}");
        }
        let mut unnamed = settings(Duration::from_secs(3));
        unnamed.name = "pricefeed".into();
        assert!(unnamed.validate().unwrap_err().contains("--elect-name"));
    }
}
