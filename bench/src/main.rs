//! `pricefeed-bench`: the benchmark harness of pricefeed. `bench/run.sh` drives it; every
//! subcommand is one scenario, bounded in count and time, on loopback and free ports, and writes
//! its raw results (JSON) and its table (Markdown) to `--out`.
//!
//! # Layout
//!
//! - [`scenarios`]: one module per subcommand (`gen-store`, `fanout`, `history`, `storm`,
//!   `footprint`, `failover`); scenarios use the harness, never each other.
//! - [`harness`]: servers, the lean MQTT load client, meters, reports. Processes come from the
//!   test kit the end-to-end tests use (`tests/src`), and what is measured is the product itself:
//!   its binaries, and the `pricesub` SDK.

mod harness;
mod scenarios;

use scenarios::{failover, fanout, footprint, gen_store, history, storm};

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Benchmarks of pricefeed (see bench/run.sh and docs/BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a store of ticks for both currencies (random-walk prices with 2 decimals).
    GenStore(gen_store::GenStoreArgs),
    /// MQTT fan-out latency, loss and broker cost: pricefeed vs Mosquitto.
    Fanout(fanout::FanoutArgs),
    /// History API throughput and latency with wrk: history-api vs nginx (same bytes).
    History(history::HistoryArgs),
    /// Reconnect storm of pricesub clients: time to live, gaps, duplicates, server peak.
    Storm(storm::StormArgs),
    /// Idle CPU, RSS, start-up time, binary sizes.
    Footprint(footprint::FootprintArgs),
    /// SIGKILL of a 3-node cluster's publishing node, repeated: slots lost, time to the next tick.
    Failover(failover::FailoverArgs),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::GenStore(args) => {
            gen_store::run(&args).await?;
        }
        Command::Fanout(args) => {
            fanout::run(args).await?;
        }
        Command::History(args) => {
            history::run(args).await?;
        }
        Command::Storm(args) => {
            storm::run(args).await?;
        }
        Command::Footprint(args) => {
            footprint::run(args).await?;
        }
        Command::Failover(args) => {
            failover::run(args).await?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pricefeed-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Children are killed on drop; give the runtime a moment to reap them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pricefeed-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
