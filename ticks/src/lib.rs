//! What every part of pricefeed must agree on, defined once.
//!
//! A *tick* is one observed BTC price in one currency for one slot of the wall clock. This crate owns
//! its identity (currency + slot start), its wire format (the MQTT payload and the history API's tick
//! object are the same bytes), the topic names, the gaps history reports, and how a broker's address
//! is written. It does no I/O and keeps no state: the store (`history-store`), the publisher, the
//! history API and the `pricesub` SDK build on it, and an SDK user pays for nothing more.
//!
//! # Layout
//!
//! - [`currency`]: the currencies we publish and their topics.
//! - [`price`]: an exact decimal price, parsed from what a source sent, printed without float noise.
//! - [`time`]: [`Timedate`] (a slot start in UTC) and the slot grid.
//! - [`wire`]: the tick and its JSON payload, `{"timedate":…,"price":…}`.
//! - [`gap`]: [`Gap`], a span of slots with no tick, and its [`GapReason`].
//! - [`broker`]: [`BrokerUrl`], where an MQTT broker listens.
//! - [`node`]: a cluster node's [`NodeRole`], as it announces it.

pub mod broker;
pub mod client;
pub mod currency;
pub mod gap;
pub mod node;
pub mod price;
pub mod time;
pub mod wire;

pub use broker::{BadBrokerUrl, BrokerUrl};
pub use currency::{Currency, GAPS_TOPIC, NODES_FILTER, NODES_TOPIC_PREFIX, STATUS_TOPIC};
pub use gap::{BadGap, Gap, GapReason};
pub use node::{NodeRole, NodeState};
pub use price::{Price, PriceError};
pub use time::{Interval, Timedate, TimedateError};
pub use wire::{Tick, WireError, write_wire_from_text};

/// A deterministic pseudo-random sequence (xorshift64) from `state`, for the tests' generated
/// cases: the same cases on every run.
#[cfg(test)]
pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
