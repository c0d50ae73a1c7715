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
    /// A price moved further from the last tick than the feed allows in one slot, and no second
    /// source confirmed it: not published as a live price.
    PriceUnconfirmed,
}

impl GapReason {
    pub const ALL: [GapReason; 4] = [
        GapReason::SourcesUnavailable,
        GapReason::PublisherDown,
        GapReason::StoreUnavailable,
        GapReason::PriceUnconfirmed,
    ];

    /// The reason as it is written in answers and in the store: `sources_unavailable`, ….
    pub const fn as_str(self) -> &'static str {
        match self {
            GapReason::SourcesUnavailable => "sources_unavailable",
            GapReason::PublisherDown => "publisher_down",
            GapReason::StoreUnavailable => "store_unavailable",
            GapReason::PriceUnconfirmed => "price_unconfirmed",
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

/// Slots `[from, until)` of one currency that have no tick. Its JSON, in history answers and on
/// [`GAPS_TOPIC`](crate::currency::GAPS_TOPIC), is
/// `{"currency":"USD","from":"…","until":"…","reason":"sources_unavailable"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gap {
    pub currency: Currency,
    pub from: Timedate,
    pub until: Timedate,
    pub reason: GapReason,
}

/// Why a message is not a gap.
#[derive(Debug, thiserror::Error)]
pub enum BadGap {
    #[error("payload is not a gap object: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("the gap ends ({until}) before it starts ({from})")]
    Empty { from: Timedate, until: Timedate },
}

impl Gap {
    /// Its JSON, as published on [`GAPS_TOPIC`](crate::currency::GAPS_TOPIC).
    pub fn payload(&self) -> String {
        serde_json::to_string(self).expect("a gap serializes")
    }

    /// Reads a gap from its JSON.
    pub fn from_payload(payload: &[u8]) -> Result<Gap, BadGap> {
        let gap: Gap = serde_json::from_slice(payload)?;
        if gap.until <= gap.from {
            return Err(BadGap::Empty {
                from: gap.from,
                until: gap.until,
            });
        }
        Ok(gap)
    }

    /// Whether the gap covers the slot starting at `t`.
    pub fn covers(&self, t: Timedate) -> bool {
        self.from <= t && t < self.until
    }
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

    #[test]
    fn a_gap_round_trips_through_its_payload_and_nonsense_does_not() {
        let gap = Gap {
            currency: Currency::EUR,
            from: "2026-11-24T01:40:05Z".parse().unwrap(),
            until: "2026-11-24T01:40:15Z".parse().unwrap(),
            reason: GapReason::PublisherDown,
        };
        assert_eq!(
            gap.payload(),
            r#"{"currency":"EUR","from":"2026-11-24T01:40:05Z","until":"2026-11-24T01:40:15Z","reason":"publisher_down"}"#
        );
        assert_eq!(Gap::from_payload(gap.payload().as_bytes()).unwrap(), gap);
        assert!(gap.covers(gap.from) && !gap.covers(gap.until));
        for bad in [
            &br#"{"currency":"EUR","from":"2026-11-24T01:40:15Z","until":"2026-11-24T01:40:05Z","reason":"publisher_down"}"#[..],
            br#"{"currency":"GBP","from":"2026-11-24T01:40:05Z","until":"2026-11-24T01:40:15Z","reason":"publisher_down"}"#,
            br#"{"currency":"EUR","from":"2026-11-24T01:40:05Z","until":"2026-11-24T01:40:15Z","reason":"bored"}"#,
            br#"{"currency":"EUR","from":"2026-11-24T01:40:05Z","until":"2026-11-24T01:40:15Z","reason":"publisher_down","x":1}"#,
            b"[]",
            b"",
        ] {
            assert!(Gap::from_payload(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
