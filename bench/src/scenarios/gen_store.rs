//! `gen-store`: a history store with a span of ticks in both currencies, as a command (the
//! history and storm scenarios generate theirs with the same harness function).

use std::path::PathBuf;
use std::time::Duration;

use ticks::{Interval, Timedate};

use crate::harness::store::{GenReport, generate};

#[derive(Debug, clap::Args)]
pub struct GenStoreArgs {
    /// The SQLite file to create (must not exist).
    #[arg(long)]
    pub db: PathBuf,
    /// Days of ticks, ending now.
    #[arg(long, default_value_t = 365.0)]
    pub days: f64,
    /// Span of ticks instead of --days (e.g. 30m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Slot length.
    #[arg(long, default_value = "5s")]
    pub interval: Interval,
    /// Last slot (default: the slot containing now).
    #[arg(long)]
    pub end: Option<Timedate>,
    /// Seed of the random walk.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Slots per transaction.
    #[arg(long, default_value_t = 100_000)]
    pub batch: usize,
}

pub async fn run(args: &GenStoreArgs) -> anyhow::Result<GenReport> {
    let span = match args.duration {
        Some(d) => d,
        None => Duration::from_secs_f64(args.days * 86_400.0),
    };
    let report = generate(
        args.db.clone(),
        span,
        args.interval,
        args.end.unwrap_or_else(Timedate::now),
        args.seed,
        args.batch,
    )
    .await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(report)
}
