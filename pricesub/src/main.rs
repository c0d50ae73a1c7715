//! `pricesub`: print the BTC price feed, backfilling what was missed, with no gap and no duplicate.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pricesub::{FeedEvent, SubscriberConfig, subscribe};
use ticks::{Currency, Timedate};

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
    broker: Vec<String>,

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
}

fn parse_since(s: &str) -> Result<Timedate, String> {
    if let Ok(t) = Timedate::parse_user(s) {
        return Ok(t);
    }
    match humantime::parse_duration(s) {
        Ok(ago) => Ok(Timedate::now().saturating_sub(ago)),
        Err(_) => Err(format!(
            "--since {s:?} is neither a time (2026-11-24T01:40:00Z, unix seconds) nor a duration (10m)"
        )),
    }
}

fn parse_broker(s: &str) -> Result<(String, u16), String> {
    let rest = s
        .strip_prefix("mqtt://")
        .or_else(|| s.strip_prefix("tcp://"))
        .unwrap_or(s);
    if rest.contains("://") {
        return Err(format!(
            "--broker {s:?}: only mqtt://host:port is supported"
        ));
    }
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .map_err(|_| format!("--broker {s:?}: {p:?} is not a port"))?,
        ),
        None => (rest, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("--broker {s:?} has no host"));
    }
    Ok((host.to_string(), port))
}

fn config(cli: &Cli) -> Result<SubscriberConfig, String> {
    if cli.history_timeout.is_zero() {
        return Err("--history-timeout must be more than 0".into());
    }
    let brokers = cli
        .broker
        .iter()
        .map(|b| parse_broker(b))
        .collect::<Result<Vec<_>, _>>()?;
    let currencies = Currency::parse_list(&cli.currency).map_err(|e| format!("--currency: {e}"))?;
    let since = cli.since.as_deref().map(parse_since).transpose()?;
    let history = if cli.history.is_empty() {
        let (host, _) = &brokers[0];
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        vec![format!("http://{host}:8080")]
    } else {
        cli.history.clone()
    };
    Ok(SubscriberConfig {
        brokers,
        history,
        currencies,
        since,
        history_timeout: cli.history_timeout,
        client_id: "pricesub".into(),
    })
}

async fn run(cli: Cli) -> Result<(), String> {
    let config = config(&cli)?;
    let mut subscription = subscribe(config).map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0u64;
    if cli.count == Some(0) {
        return Ok(());
    }
    loop {
        let event = tokio::select! {
            event = subscription.next() => event,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match event {
            None => return Ok(()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(FeedEvent::Gap(gap))) => {
                eprintln!(
                    "pricesub: gap on {}: no ticks from {} until {} ({})",
                    gap.currency.topic(),
                    gap.from,
                    gap.until,
                    serde_json::to_value(gap.reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                );
            }
            Some(Ok(FeedEvent::Tick(tick))) => {
                match writeln!(stdout, "{}", tick.line()).and_then(|()| stdout.flush()) {
                    Ok(()) => {}
                    // A closed stdout (`pricesub | head -3`) is the reader saying "enough".
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(format!("cannot write the ticks: {e}")),
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
            eprintln!("pricesub: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pricesub: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for background tasks (an MQTT connection mid-handshake) to wind down.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pricesub: {e}");
            ExitCode::from(2)
        }
    }
}
