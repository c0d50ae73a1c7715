//! The harness: what every scenario uses to start, load and measure. It knows no scenario.
//!
//! - [`servers`]: the servers measured and their peers (pricefeed, Mosquitto, nginx), started with
//!   the test kit's processes, and a plain HTTP GET.
//! - [`lean_mqtt`]: the load generator's MQTT 3.1.1 client, thousands per process.
//! - [`meters`]: CPU and RSS from `/proc`, sampled over a run; the descriptor limit.
//! - [`report`]: tables and raw result files.
//! - [`store`]: a history store of generated ticks, fast.

pub mod lean_mqtt;
pub mod meters;
pub mod report;
pub mod servers;
pub mod store;
