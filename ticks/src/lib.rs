//! What every part of pricefeed must agree on, defined once.
//!
//! A *tick* is one observed BTC price in one currency for one slot of the wall clock. This crate owns
//! its identity (currency + slot start), its wire format (the MQTT payload and the history API's tick
//! object are the same bytes), the topic names, and the SQLite store that keeps every tick and every
//! gap. It does no networking: the publisher, the history API and `pricesub` build on it.
//!
//! # Layout
//!
//! - [`currency`]: the currencies we publish and their topics.
//! - [`price`]: an exact decimal price, parsed from what a source sent, printed without float noise.
//! - [`time`]: [`Timedate`] (a slot start in UTC) and the slot grid.
//! - [`wire`]: the tick and its JSON payload, `{"timedate":…,"price":…}`.
//! - [`store`]: [`HistoryStore`], the ticks and gaps in SQLite.

pub mod currency;
pub mod price;
pub mod store;
pub mod time;
pub mod wire;

pub use currency::{Currency, STATUS_TOPIC, TOPIC_FILTER_ALL};
pub use price::{Price, PriceError};
pub use store::{FeedInfo, Gap, GapReason, HistoryStore, Snapshot, StoreError};
pub use time::{Interval, Timedate, TimedateError};
pub use wire::{Tick, WireError};
