//! `pricefeed`: the BTC price feed, broker and history API in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use price_sources::{DEFAULT_CHAIN, SourceConfig, SourceKind};
use publisher::clock::WallClock;
use publisher::mqtt::BrokerUrl;
use publisher::{BrokerMode, Config, Feed};
use ticks::{Currency, Interval};
use tokio_util::sync::CancellationToken;

/// BTC price feed over MQTT: a tick per currency every interval on btc/USD and btc/EUR, stored in
/// SQLite and served as history over HTTP.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Slot length: one tick per currency per slot, aligned to the wall clock (100ms to 24h).
    #[arg(long, env = "PRICEFEED_INTERVAL", default_value = "5s")]
    interval: Interval,

    /// Currencies to publish: USD, EUR or both.
    #[arg(long, env = "PRICEFEED_CURRENCY", default_value = "both", value_parser = parse_currencies)]
    currency: CurrencyList,

    /// Price sources, tried in this order every slot: kraken, coinbase, bitstamp, coingecko,
    /// coindesk, demo (offline random walk; never use for real prices).
    #[arg(long, env = "PRICEFEED_SOURCE", value_delimiter = ',', default_values_t = DEFAULT_CHAIN.to_vec())]
    source: Vec<SourceKind>,

    /// Base URL of a source, NAME=URL (repeatable), e.g. coindesk=http://127.0.0.1:9000 for a mirror.
    #[arg(long = "source-url", env = "PRICEFEED_SOURCE_URL", value_delimiter = ',', value_parser = parse_source_url)]
    source_url: Vec<(SourceKind, String)>,

    /// Timeout of one source request (also cut short by the slot's deadline). Default: 2s, or
    /// 60% of the interval if that is shorter.
    #[arg(long, env = "PRICEFEED_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,

    /// SQLite file holding every tick and gap.
    #[arg(long, env = "PRICEFEED_DB", default_value = "pricefeed.db")]
    db: PathBuf,

    /// Address of the embedded MQTT broker (ignored with --broker).
    #[arg(long, env = "PRICEFEED_MQTT_LISTEN", default_value = "0.0.0.0:1883")]
    mqtt_listen: SocketAddr,

    /// Most MQTT clients the embedded broker accepts at once.
    #[arg(long, env = "PRICEFEED_MAX_CLIENTS", default_value_t = 100_000)]
    max_clients: usize,

    /// Publish to this external broker (mqtt://host:port) instead of running one.
    #[arg(long, env = "PRICEFEED_BROKER")]
    broker: Option<BrokerUrl>,

    /// Password of the `pricefeed-publisher` user on the broker. Required with --broker; with the
    /// embedded broker a random one is made if unset.
    #[arg(long, env = "PRICEFEED_BROKER_PASSWORD", hide_env_values = true)]
    broker_password: Option<String>,

    /// Address of the history API, health, readiness and metrics.
    #[arg(long, env = "PRICEFEED_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    http_listen: SocketAddr,

    /// Log format.
    #[arg(long, env = "PRICEFEED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
struct CurrencyList(Vec<Currency>);

fn parse_currencies(s: &str) -> Result<CurrencyList, String> {
    Currency::parse_list(s)
        .map(CurrencyList)
        .map_err(|e| e.to_string())
}

fn parse_source_url(s: &str) -> Result<(SourceKind, String), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=URL"))?;
    let kind: SourceKind = name.parse().map_err(|e| format!("{e}"))?;
    Ok((kind, url.to_string()))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // rmqtt logs every refused connection at info, and its ACL plugin logs its configuration,
        // password included: keep the broker's crates at warn unless RUST_LOG says otherwise.
        tracing_subscriber::EnvFilter::new(
            "info,rmqtt=warn,rmqtt_acl=warn,rmqtt_retainer=warn,rmqtt_net=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

impl Cli {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut sources: Vec<SourceConfig> = self
            .source
            .iter()
            .map(|&kind| SourceConfig {
                kind,
                base_url: kind.default_base_url().to_string(),
            })
            .collect();
        for (kind, url) in self.source_url {
            let source = sources
                .iter_mut()
                .find(|s| s.kind == kind)
                .with_context(|| format!("--source-url names {kind}, which is not in --source"))?;
            source.base_url = url;
        }
        let request_timeout = self.request_timeout.unwrap_or_else(|| {
            Duration::from_secs(2).min(self.interval.as_duration().mul_f64(0.6))
        });
        let broker = match self.broker {
            Some(url) => BrokerMode::External { url },
            None => BrokerMode::Embedded {
                listen: self.mqtt_listen,
                max_sessions: self.max_clients,
            },
        };
        Ok(Config {
            interval: self.interval,
            currencies: self.currency.0,
            sources,
            request_timeout,
            db: self.db,
            broker,
            publisher_password: self.broker_password,
            http_listen: self.http_listen,
            clock: WallClock::System,
        })
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.into_config()?;
    let feed = Feed::build(config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    feed.run(shutdown).await
}

/// Ctrl-C or SIGTERM (what `docker stop` and systemd send) stop the feed cleanly.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}

fn main() -> ExitCode {
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
            eprintln!("pricefeed: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pricefeed: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what failed and why, causes joined.
            eprintln!("pricefeed: {e:#}");
            ExitCode::from(2)
        }
    }
}
