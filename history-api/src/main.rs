//! `history-api`: serves the publisher's SQLite store over HTTP, standalone.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use history_api::{ApiState, Metrics};
use ticks::{HistoryStore, Interval};

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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A failure that ends the process, with the exit code it ends with.
struct Fatal {
    code: u8,
    error: anyhow::Error,
}

fn startup(error: anyhow::Error) -> Fatal {
    Fatal { code: 2, error }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line saying what to fix; clap's usage hints are one `--help` away.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            eprintln!("history-api: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    install_tracing(cli.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal { code, error }) => {
            eprintln!("history-api: {error:#}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Fatal> {
    // Bind first: a port in use is the likeliest start-up failure, and should not leave a new,
    // empty store file behind.
    let listener = tokio::net::TcpListener::bind(&cli.http_listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.http_listen))
        .map_err(startup)?;
    // A typo in --db must not become a server answering "no ticks" from a new, empty file.
    if !cli.db.exists() {
        return Err(startup(anyhow::anyhow!(
            "no store at {} (the file pricefeed --db writes)",
            cli.db.display()
        )));
    }
    // StoreError::Open already names the file.
    let store = HistoryStore::open(&cli.db)
        .map_err(anyhow::Error::from)
        .map_err(startup)?;
    // The publisher records its interval and whether it runs on demo data; that beats our flags.
    let (interval, demo) = match store.feed_info().await {
        Ok(Some(info)) => (info.interval, info.demo),
        Ok(None) => (cli.interval, cli.demo),
        Err(e) => return Err(startup(e.into())),
    };
    let state = ApiState {
        store,
        metrics: Arc::new(Metrics::new()),
        broker_connected: None,
        interval,
        demo,
    };
    history_api::serve(listener, state, history_api::shutdown_signal())
        .await
        .context("serving HTTP failed")
        .map_err(|error| Fatal { code: 1, error })?;
    tracing::info!("stopped");
    Ok(())
}

fn install_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
