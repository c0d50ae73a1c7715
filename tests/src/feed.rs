//! Our servers as a user runs them: [`FeedProcess`] (`pricefeed`) and [`HistoryProcess`] (the
//! standalone `history-api`), on free loopback ports, with the ports they really bound.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::fixtures::FixtureServer;
use crate::process::{Process, bin_dir, binary_in, log_field};

/// How long a server may take to say it runs (a loaded 2-core machine, a debug build).
const START_WITHIN: Duration = Duration::from_secs(60);

/// A running `pricefeed` binary with its real ports.
pub struct FeedProcess {
    pub process: Process,
    /// The broker it publishes to: its own, or the one `--broker` named.
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    /// Where it serves gRPC, if it was started with `--grpc-listen`.
    pub grpc: Option<SocketAddr>,
    /// From spawn to its "pricefeed running" line.
    pub ready_after: Duration,
}

impl FeedProcess {
    /// Starts `pricefeed` on free loopback ports with `extra` flags and waits until it runs;
    /// panics if it does not.
    pub async fn start(db: &Path, extra: &[&str]) -> FeedProcess {
        FeedProcess::launch(&bin_dir(), db, extra)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts `bins/pricefeed` on free loopback ports (`--mqtt-listen`, `--http-listen`) with the
    /// store `db` and `extra` flags, and waits until it runs.
    pub async fn launch(bins: &Path, db: &Path, extra: &[&str]) -> anyhow::Result<FeedProcess> {
        let mut flags = vec![
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ];
        flags.extend_from_slice(extra);
        FeedProcess::launch_with(bins, db, &flags).await
    }

    /// Starts `bins/pricefeed` with the store `db` and exactly `flags` (ports included), and
    /// waits until it runs.
    pub async fn launch_with(
        bins: &Path,
        db: &Path,
        flags: &[&str],
    ) -> anyhow::Result<FeedProcess> {
        FeedProcess::launch_program(&binary_in(bins, "pricefeed")?, db, flags).await
    }

    /// [`FeedProcess::launch_with`] for a `pricefeed` binary anywhere (a cluster build kept
    /// beside the default one, say).
    pub async fn launch_program(
        program: &Path,
        db: &Path,
        flags: &[&str],
    ) -> anyhow::Result<FeedProcess> {
        let db = db.to_str().context("a store path in UTF-8")?;
        let mut args = vec!["--db", db];
        args.extend_from_slice(flags);
        FeedProcess::wait_running(Process::start(program, &args)?).await
    }

    /// Starts `pricefeed` on free loopback ports with `extra` flags, allowed at most `nofile`
    /// open file descriptors (`prlimit --nofile`, as `ulimit -n` would), and waits until it runs.
    pub async fn start_with_nofile(db: &Path, nofile: u64, extra: &[&str]) -> FeedProcess {
        let started = async {
            let program = binary_in(&bin_dir(), "pricefeed")?;
            let limit = format!("--nofile={nofile}");
            let db = db.to_str().context("a store path in UTF-8")?;
            let mut args = vec![
                limit.as_str(),
                "--",
                program.to_str().context("a binary path in UTF-8")?,
                "--db",
                db,
                "--mqtt-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ];
            args.extend_from_slice(extra);
            let prlimit = crate::process::which("prlimit").context("prlimit (util-linux)")?;
            FeedProcess::wait_running(Process::start(&prlimit, &args)?).await
        };
        started
            .await
            .unwrap_or_else(|e: anyhow::Error| panic!("{e:#}"))
    }

    async fn wait_running(mut process: Process) -> anyhow::Result<FeedProcess> {
        let running = process
            .wait_for_log("pricefeed running", START_WITHIN)
            .await?;
        let ready_after = process.started.elapsed();
        let http = log_field(&running, "http")
            .context("no http= in the running line")?
            .parse()?;
        let mqtt = log_field(&running, "broker")
            .context("no broker= in the running line")?
            .trim_start_matches("mqtt://")
            .parse()?;
        let grpc = log_field(&running, "grpc").map(|a| a.parse()).transpose()?;
        Ok(FeedProcess {
            process,
            mqtt,
            http,
            grpc,
            ready_after,
        })
    }

    /// Starts `pricefeed` sampling only the Kraken fixture `kraken` every `interval`.
    pub async fn kraken(db: &Path, kraken: &FixtureServer, interval: &str) -> FeedProcess {
        let url = format!("kraken={}", kraken.url());
        let flags = [
            "--interval",
            interval,
            "--source",
            "kraken",
            "--source-url",
            &url,
        ];
        FeedProcess::start(db, &flags).await
    }
}

/// A running standalone `history-api` over a store.
pub struct HistoryProcess {
    pub process: Process,
    pub addr: SocketAddr,
}

impl HistoryProcess {
    /// Starts `bins/history-api` on a free loopback port over `db`, with `extra` flags.
    pub async fn launch(bins: &Path, db: &Path, extra: &[&str]) -> anyhow::Result<HistoryProcess> {
        let db = db.to_str().context("a store path in UTF-8")?;
        let mut args = vec!["--db", db, "--http-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut process = Process::start(&binary_in(bins, "history-api")?, &args)?;
        let line = process
            .wait_for_log("history API listening", START_WITHIN)
            .await?;
        let addr = log_field(&line, "address")
            .context("no address= in the listening line")?
            .parse()?;
        Ok(HistoryProcess { process, addr })
    }

    /// [`HistoryProcess::launch`] with this workspace's binaries; panics if it does not start.
    pub async fn start(db: &Path, extra: &[&str]) -> HistoryProcess {
        HistoryProcess::launch(&bin_dir(), db, extra)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}
