//! A cluster node's role, as it announces it, retained, on `pricefeed/nodes/<id>`:
//! `{"node":2,"role":"standby"}`.

use serde::{Deserialize, Serialize};

use crate::currency::NODES_TOPIC_PREFIX;

/// What a node is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Filling its history from a peer: it may not publish yet.
    CatchingUp,
    /// Recording what the active node publishes, ready to take over.
    Standby,
    /// Sampling the sources and publishing.
    Active,
    /// Stopped or vanished (its MQTT will).
    Offline,
}

impl NodeRole {
    pub const fn as_str(self) -> &'static str {
        match self {
            NodeRole::CatchingUp => "catching_up",
            NodeRole::Standby => "standby",
            NodeRole::Active => "active",
            NodeRole::Offline => "offline",
        }
    }
}

/// One node's announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    pub node: u64,
    pub role: NodeRole,
}

impl NodeState {
    /// The topic node `id` announces itself on.
    pub fn topic(id: u64) -> String {
        format!("{NODES_TOPIC_PREFIX}{id}")
    }

    pub fn payload(&self) -> String {
        serde_json::to_string(self).expect("a node state serializes")
    }

    pub fn from_payload(payload: &[u8]) -> Result<NodeState, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_reads_back() {
        let state = NodeState {
            node: 2,
            role: NodeRole::CatchingUp,
        };
        assert_eq!(NodeState::topic(2), "pricefeed/nodes/2");
        assert_eq!(state.payload(), r#"{"node":2,"role":"catching_up"}"#);
        assert_eq!(
            NodeState::from_payload(state.payload().as_bytes()).unwrap(),
            state
        );
        assert_eq!(
            serde_json::to_string(&NodeRole::Active).unwrap(),
            format!("\"{}\"", NodeRole::Active.as_str())
        );
    }
}
