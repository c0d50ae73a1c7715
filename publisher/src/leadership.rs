//! Who may publish, when several nodes could: [`Leadership`] asks an election, [`Gate`] turns its
//! answers into the node's role.
//!
//! The single node needs none of this (it always publishes). In a cluster exactly one node must
//! publish each slot, and the choice belongs to an existing election engine, never to us: the
//! embedded brokers' raft cluster ([`RaftLeadership`]), or etcd for nodes on an operator's broker
//! (`crate::etcd`, with the cargo feature `etcd`).
//! Elections have no change events we can rely on, so the gate polls: a node becomes active only
//! after several answers in a row say it leads (a peer's reachability lags reality by seconds, and
//! a deposed leader must have stepped down before its successor starts), and stops at the first
//! answer that says it does not. The slot loop asks once more just before it stores and publishes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ticks::NodeRole;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A future an election answers with.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An election this node takes part in.
pub trait Leadership: Send + Sync + 'static {
    /// Whether this node may publish now, asked afresh (no cached answer).
    fn check(&self) -> Answer<'_, bool>;

    /// The node that leads, as far as this node knows (its history is asked first).
    fn leader(&self) -> Answer<'_, Option<u64>>;

    /// On shutdown: whether another node can take over once this one is gone.
    fn others_can_take_over(&self) -> Answer<'_, bool>;

    /// On shutdown, after the last slot: gives up leadership (and any place in the election) so
    /// that the next node takes over at once.
    fn resign(&self) -> Answer<'_, ()> {
        Box::pin(async {})
    }

    /// How many answers in a row must say "leader" before the node publishes. An election whose
    /// deposed leader may not know it yet needs several; one that fences its leader needs one.
    fn confirmations(&self) -> u32 {
        ACTIVATE_AFTER
    }
}

/// The embedded brokers' raft cluster: this node leads, and reaches a majority of the configured
/// members.
pub struct RaftLeadership {
    cluster: broker_config::ClusterHandle,
}

impl RaftLeadership {
    pub fn new(cluster: broker_config::ClusterHandle) -> RaftLeadership {
        RaftLeadership { cluster }
    }
}

impl Leadership for RaftLeadership {
    fn check(&self) -> Answer<'_, bool> {
        Box::pin(async move { self.cluster.status().await.leads_a_majority() })
    }

    fn leader(&self) -> Answer<'_, Option<u64>> {
        Box::pin(async move { self.cluster.status().await.leader_id })
    }

    fn others_can_take_over(&self) -> Answer<'_, bool> {
        // Without this node, do the others still make a majority?
        Box::pin(async move {
            self.cluster.status().await.peers_available >= self.cluster.config().majority()
        })
    }
}

/// What a node is doing; see [`NodeRole`].
pub type Role = NodeRole;

/// How often the election is asked.
pub const POLL: Duration = Duration::from_millis(250);
/// Answers in a row that say "leader" before a node starts publishing, unless the election says
/// otherwise ([`Leadership::confirmations`]).
pub const ACTIVATE_AFTER: u32 = 4;

/// The node's role, kept current by a task that polls the election. Cheap to clone.
#[derive(Clone)]
pub struct Gate {
    leadership: Arc<dyn Leadership>,
    role: watch::Receiver<Role>,
}

impl Gate {
    /// Starts polling `leadership` every [`POLL`] until `shutdown`. `caught_up` says whether
    /// this node's history is complete; a node still catching up never becomes active.
    pub fn start(
        leadership: Arc<dyn Leadership>,
        caught_up: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> Gate {
        let (tx, role) = watch::channel(Role::CatchingUp);
        let election = leadership.clone();
        let confirmations = leadership.confirmations().max(1);
        tokio::spawn(async move {
            let mut leading = 0u32;
            loop {
                let leads = election.check().await;
                leading = if leads { leading.saturating_add(1) } else { 0 };
                let role = if !*caught_up.borrow() {
                    Role::CatchingUp
                } else if leading >= confirmations {
                    Role::Active
                } else {
                    Role::Standby
                };
                tx.send_if_modified(|current| {
                    // Once active, only a lost election ends it (not a recorder reconnecting).
                    let role = if *current == Role::Active && leads {
                        Role::Active
                    } else {
                        role
                    };
                    std::mem::replace(current, role) != role
                });
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        Gate { leadership, role }
    }

    /// The role as of the last poll.
    pub fn role(&self) -> Role {
        *self.role.borrow()
    }

    /// Changes of role.
    pub fn watch(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Asks the election once more: called just before a slot's ticks are stored and published.
    pub async fn confirm(&self) -> bool {
        self.role() == Role::Active && self.leadership.check().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    struct Scripted(AtomicBool);

    impl Leadership for Scripted {
        fn check(&self) -> Answer<'_, bool> {
            Box::pin(async move { self.0.load(Ordering::SeqCst) })
        }

        fn leader(&self) -> Answer<'_, Option<u64>> {
            Box::pin(async { None })
        }

        fn others_can_take_over(&self) -> Answer<'_, bool> {
            Box::pin(async { true })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_activates_after_several_answers_and_stops_at_the_first_no() {
        let election = Arc::new(Scripted(AtomicBool::new(false)));
        let (caught_up_tx, caught_up) = watch::channel(false);
        let stop = CancellationToken::new();
        let gate = Gate::start(election.clone(), caught_up, stop.clone());
        tokio::time::sleep(POLL * 3).await;
        assert_eq!(gate.role(), Role::CatchingUp);

        // Leading while still catching up is not enough.
        election.0.store(true, Ordering::SeqCst);
        tokio::time::sleep(POLL * 10).await;
        assert_eq!(gate.role(), Role::CatchingUp);
        assert!(!gate.confirm().await);

        caught_up_tx.send(true).unwrap();
        tokio::time::sleep(POLL).await;
        assert_eq!(gate.role(), Role::Active, "it led all along, so at once");

        // One "no" ends it.
        election.0.store(false, Ordering::SeqCst);
        assert!(!gate.confirm().await, "the fresh check sees it first");
        tokio::time::sleep(POLL + Duration::from_millis(1)).await;
        assert_eq!(gate.role(), Role::Standby);

        // Coming back takes ACTIVATE_AFTER answers in a row again.
        election.0.store(true, Ordering::SeqCst);
        tokio::time::sleep(POLL * (ACTIVATE_AFTER - 2)).await;
        assert_eq!(gate.role(), Role::Standby);
        tokio::time::sleep(POLL * 2).await;
        assert_eq!(gate.role(), Role::Active);
        assert!(gate.confirm().await);

        // An active node whose recorder reconnects stays active.
        caught_up_tx.send(false).unwrap();
        tokio::time::sleep(POLL * 2).await;
        assert_eq!(gate.role(), Role::Active);
        stop.cancel();
    }
}
