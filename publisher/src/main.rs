//! `pricefeed`: the BTC price feed, broker and history API in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use price_sources::{DEFAULT_CHAIN, SourceConfig, SourceKind};
use publisher::clock::WallClock;
use publisher::{BrokerMode, Config, Feed};
use startup::{Fatal, LogFormat, Runtime};
use ticks::{BrokerUrl, Currency, Interval};
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

/// rmqtt logs every refused connection at info, and its ACL plugin logs its configuration, password
/// included: the broker's crates stay at warn unless RUST_LOG says otherwise.
const DEFAULT_LOG: &str = "info,rmqtt=warn,rmqtt_acl=warn,rmqtt_retainer=warn,rmqtt_net=warn";

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

async fn run(cli: Cli) -> Result<(), Fatal> {
    let config = cli.into_config()?;
    let feed = Feed::build(config).await?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        startup::shutdown_signal().await;
        stop.cancel();
    });
    Ok(feed.run(shutdown).await?)
}

fn main() -> ExitCode {
    let cli: Cli = match startup::parse("pricefeed") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    startup::init_tracing(cli.log_format, DEFAULT_LOG);
    startup::run("pricefeed", Runtime::MultiThread, run(cli))
}
