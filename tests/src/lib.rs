//! The kit that the crates' integration tests, the end-to-end tests and the benchmark harness
//! share: it starts real things and gets out of the way. It is not a test framework.
//!
//! # Layout
//!
//! - [`process`]: child processes (our binaries, Mosquitto, curl, wrk) with their stderr
//!   collected; where the binaries are; free ports; `key=value` fields of our log lines.
//! - [`feed`]: [`FeedProcess`] and [`HistoryProcess`], our servers on free ports.
//! - [`mosquitto`]: [`Mosquitto`], Debian's broker with pricefeed's ACL.
//! - [`fixtures`]: [`FixtureServer`], the recorded price-API bodies served locally, switchable to
//!   failing modes. No test reaches the internet.
//! - [`subscriber`]: [`TickSubscriber`], a real MQTT 3.1.1 client collecting ticks.
//! - [`proxy`]: [`Proxy`], a TCP proxy to cut.
//! - [`cluster`]: [`Cluster`], nodes of one raft cluster (the `cluster` build of `pricefeed`), or
//!   nodes on one external broker elected with etcd (the `etcd` build).
//! - [`etcd`]: [`Etcd`], Debian's etcd members on loopback.
//! - [`browser`]: [`Browser`], Debian's Chromium, headless, driven from Node by playwright-core.
//! - [`promql`]: the metric names a PromQL expression reads and the series a scrape exports, for
//!   the checks that dashboards and alert rules name only real metrics.

pub mod browser;
pub mod cluster;
pub mod etcd;
pub mod feed;
pub mod fixtures;
pub mod mosquitto;
pub mod process;
pub mod promql;
pub mod proxy;
pub mod sse;
pub mod subscriber;

use std::time::Duration;

pub use browser::Browser;
pub use cluster::Cluster;
pub use etcd::Etcd;
pub use feed::{FeedProcess, HistoryProcess};
pub use fixtures::{FixtureServer, Mode, fixture};
pub use mosquitto::Mosquitto;
pub use process::{
    Process, assert_refused, bin_dir, binary, binary_in, command_stdout, free_port,
    free_port_below_ephemeral, have, log_field, run_command, wait_listening, which,
};
pub use proxy::Proxy;
pub use subscriber::{Received, TickSubscriber};

/// Polls `check` every 50 ms until it is true; panics with `what` after `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
