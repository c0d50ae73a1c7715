//! `history-api`: serves the publisher's SQLite store over HTTP, standalone.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use history_api::{ApiState, FeedFacts, HttpListener, TlsArgs};
use history_store::HistoryStore;
use startup::{Fatal, LogFormat, Runtime};
use ticks::Interval;

/// Serves the BTC ticks the publisher stored: GET /v1/ticks?since=…, /healthz, /readyz, /metrics
/// and /openapi.json.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The SQLite file the publisher writes.
    #[arg(long, env = "PRICEFEED_DB", default_value = "pricefeed.db")]
    db: PathBuf,

    /// Address and port to listen on for HTTP.
    #[arg(long, env = "PRICEFEED_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    http_listen: String,

    #[command(flatten)]
    limits: history_api::Limits,

    /// The publish interval of the feed, as reported in answers, if the store does not record it
    /// (a publisher records its interval and demo flag in the store, and those win).
    #[arg(long, env = "PRICEFEED_INTERVAL", default_value = "5s")]
    interval: Interval,

    /// The feed runs on the demo price source, if the store does not record it.
    #[arg(long, env = "PRICEFEED_DEMO")]
    demo: bool,

    /// Log lines as human-readable text or as JSON objects. RUST_LOG sets the level (default info).
    #[arg(long, env = "PRICEFEED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(flatten)]
    tls: TlsArgs,
}

fn main() -> ExitCode {
    let cli: Cli = match startup::parse("history-api") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    startup::init_tracing(cli.log_format, "info");
    startup::run("history-api", Runtime::MultiThread, run(cli))
}

async fn run(cli: Cli) -> Result<(), Fatal> {
    // TlsError names the file to fix.
    let tls = cli.tls.files().map(|f| f.acceptor()).transpose()?;
    // Bind first: a port in use is the likeliest start-up failure, and should not leave a new,
    // empty store file behind.
    let listener = tokio::net::TcpListener::bind(&cli.http_listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.http_listen))?;
    // A typo in --db must not become a server answering "no ticks" from a new, empty file.
    if !cli.db.exists() {
        return Err(anyhow::anyhow!(
            "no store at {} (the file pricefeed --db writes)",
            cli.db.display()
        )
        .into());
    }
    // StoreError::Open already names the file.
    let store = HistoryStore::open(&cli.db)?;
    // The publisher records its interval and whether it runs on demo data; that beats our flags.
    let feed = match store.feed_info().await? {
        Some(info) => FeedFacts {
            interval: info.interval,
            demo: info.demo,
        },
        None => FeedFacts {
            interval: cli.interval,
            demo: cli.demo,
        },
    };
    let state = ApiState::new(store, feed).with_limits(cli.limits);
    let listener = match tls {
        Some(tls) => HttpListener::https(listener, tls),
        None => listener.into(),
    };
    history_api::serve(listener, state, startup::shutdown_signal())
        .await
        .context("serving HTTP failed")
        .map_err(Fatal::runtime)?;
    tracing::info!("stopped");
    Ok(())
}
