//! `pricesub`: print the BTC price feed, backfilling what was missed, with no gap and no duplicate.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Parser;
use pricesub::{FeedEvent, SubscriberConfig, subscribe};
use startup::{Fatal, Runtime};
use ticks::{BrokerUrl, Currency, Timedate};

/// Follow the BTC price feed. Prints `btc/USD {"timedate":…,"price":…}` per tick (as
/// `mosquitto_sub -v` does), in timedate order per currency, never twice; gaps the server recorded
/// go to stderr. With --since it first replays history from that time.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// MQTT broker, mqtt://host:port (repeatable: tried in turn on reconnect).
    #[arg(
        long,
        env = "PRICESUB_BROKER",
        value_delimiter = ',',
        default_value = "mqtt://127.0.0.1:1883"
    )]
    broker: Vec<BrokerUrl>,

    /// History API base URL (repeatable: tried in order). Default: port 8080 on the first broker's host.
    #[arg(long, env = "PRICESUB_HISTORY", value_delimiter = ',')]
    history: Vec<String>,

    /// USD, EUR or both.
    #[arg(long, env = "PRICESUB_CURRENCY", default_value = "both")]
    currency: String,

    /// Replay from this time first: RFC 3339 (2026-11-24T01:40:00Z), unix seconds, or a duration
    /// ago (10m, 2h).
    #[arg(long, env = "PRICESUB_SINCE")]
    since: Option<String>,

    /// Exit after printing this many ticks.
    #[arg(short = 'C', long)]
    count: Option<u64>,

    /// Timeout of one history request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    history_timeout: Duration,

    /// At start-up, how long to keep trying brokers and history servers that refuse or do not
    /// answer (a display often starts before its network is up) before giving up with an error.
    #[arg(long, env = "PRICESUB_START_WITHIN", default_value = "30s", value_parser = humantime::parse_duration)]
    start_within: Duration,
}

fn config(cli: &Cli) -> anyhow::Result<SubscriberConfig> {
    if cli.history_timeout.is_zero() {
        return Err(anyhow!("--history-timeout must be more than 0"));
    }
    let mut config = SubscriberConfig::new(cli.broker.clone());
    if !cli.history.is_empty() {
        config.history = cli.history.clone();
    }
    config.currencies = Currency::parse_list(&cli.currency).context("--currency")?;
    config.since = cli
        .since
        .as_deref()
        .map(|s| pricesub::parse_since(s, Timedate::now()))
        .transpose()
        .map_err(|e| anyhow!("--since {e}"))?;
    config.history_timeout = cli.history_timeout;
    config.start_within = cli.start_within;
    Ok(config)
}

async fn run(cli: Cli) -> Result<(), Fatal> {
    let config = config(&cli)?;
    let mut subscription = subscribe(config)?;
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0u64;
    let mut gaps_printed = std::collections::HashSet::new();
    if cli.count == Some(0) {
        return Ok(());
    }
    let mut stop = std::pin::pin!(startup::shutdown_signal());
    loop {
        let event = tokio::select! {
            event = subscription.next() => event,
            () = &mut stop => return Ok(()),
        };
        match event {
            None => return Ok(()),
            Some(Err(e)) => return Err(e.into()),
            // A gap still growing is reported again; the line is printed when it is first heard of.
            Some(Ok(FeedEvent::Gap(gap))) => {
                if gaps_printed.insert((gap.currency, gap.from)) {
                    eprintln!(
                        "pricesub: gap on {}: no ticks from {} until {} ({})",
                        gap.currency.topic(),
                        gap.from,
                        gap.until,
                        gap.reason
                    );
                }
            }
            Some(Ok(FeedEvent::Live | FeedEvent::Status(_))) => {}
            Some(Ok(FeedEvent::Tick(tick))) => {
                match writeln!(stdout, "{}", tick.line()).and_then(|()| stdout.flush()) {
                    Ok(()) => {}
                    // A closed stdout (`pricesub | head -3`) is the reader saying "enough".
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context("cannot write the ticks")
                            .into());
                    }
                }
                printed += 1;
                if cli.count.is_some_and(|n| printed >= n) {
                    return Ok(());
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli: Cli = match startup::parse("pricesub") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // Logs are diagnostics only (stdout is the data): warnings and worse unless RUST_LOG says more.
    startup::init_tracing(startup::LogFormat::Text, "warn");
    startup::run("pricesub", Runtime::CurrentThread, run(cli))
}
