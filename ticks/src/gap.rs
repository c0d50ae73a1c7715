//! Gaps: spans of slots with no tick, and why. History answers carry them, so a client can tell
//! "nothing happened" from "we missed it".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Currency, Timedate};

/// Why a span of slots has no tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The publisher ran, but no source gave a valid price for the slot.
    SourcesUnavailable,
    /// No publisher was running (found at start-up: the slots between the last tick and now).
    PublisherDown,
    /// A price was fetched but could not be stored (e.g. a full disk), so it was not published.
    StoreUnavailable,
}

impl GapReason {
    pub const ALL: [GapReason; 3] = [
        GapReason::SourcesUnavailable,
        GapReason::PublisherDown,
        GapReason::StoreUnavailable,
    ];

    /// The reason as it is written in answers and in the store: `sources_unavailable`, ….
    pub const fn as_str(self) -> &'static str {
        match self {
            GapReason::SourcesUnavailable => "sources_unavailable",
            GapReason::PublisherDown => "publisher_down",
            GapReason::StoreUnavailable => "store_unavailable",
        }
    }
}

impl fmt::Display for GapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gap reason we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown gap reason {0:?}")]
pub struct UnknownGapReason(pub String);

impl FromStr for GapReason {
    type Err = UnknownGapReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GapReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownGapReason(s.to_string()))
    }
}

/// Slots `[from, until)` of one currency that have no tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub currency: Currency,
    pub from: Timedate,
    pub until: Timedate,
    pub reason: GapReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_back_as_written() {
        for reason in GapReason::ALL {
            assert_eq!(reason.as_str().parse::<GapReason>(), Ok(reason));
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                format!("\"{reason}\"")
            );
        }
        assert!("down".parse::<GapReason>().is_err());
    }
}
