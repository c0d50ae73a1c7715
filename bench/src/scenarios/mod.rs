//! The scenarios, one per subcommand; each measures the product against its peer in the same run
//! and writes its raw results and its table.
//!
//! - [`gen_store`]: a history store of N days of ticks in both currencies.
//! - [`fanout`]: N MQTT subscribers, publish→receipt latency, loss, broker RSS and CPU; pricefeed's
//!   embedded broker against Debian's Mosquitto.
//! - [`history`]: `wrk` on `/v1/ticks` over a year of ticks, against nginx serving the same bytes.
//! - [`storm`]: K `pricesub` SDK subscriptions reconnecting within a second, backfilling, going
//!   live, checked gapless against the store.
//! - [`footprint`]: idle CPU, RSS, start-up time, binary sizes.
//! - [`failover`]: SIGKILL of a cluster's publishing node, again and again: slots lost, time to
//!   the next tick.

pub mod failover;
pub mod fanout;
pub mod footprint;
pub mod gen_store;
pub mod history;
pub mod storm;
