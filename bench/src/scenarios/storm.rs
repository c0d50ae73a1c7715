//! Scenario 3, the reconnect storm: K clients start within one second, each subscribing,
//! backfilling the last 10 minutes from history, then following live with no gap and no
//! duplicate; afterwards every client's sequence is compared with the store.
//!
//! The clients are the `pricesub` SDK itself (`pricesub::subscribe`), K subscriptions in this one
//! process: what is measured is the product's hand-off (subscribe and buffer, backfill, drain,
//! follow) against the product's servers, not a copy of it.
//!
//! The store is generated with 30 minutes of 5 s ticks (what a real client backfills in 10
//! minutes: 240 ticks) and the feed then runs at a 1 s interval, so that "live" (a tick newer than
//! the storm's start) comes within a second. The peer, in the same run, is the same storm against
//! Debian's Mosquitto as the broker, with `pricefeed --broker` publishing to it and serving history.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use history_store::HistoryStore;
use serde::Serialize;
use ticks::{BrokerUrl, Currency, Interval, Tick, Timedate};
use tokio_util::sync::CancellationToken;

use crate::harness::meters::{self, CpuMeter, Sampler};
use crate::harness::report::{self, Table, fmt_f};
use crate::harness::servers::{BrokerKind, Server};
use crate::harness::store;

#[derive(Debug, clap::Args)]
pub struct StormArgs {
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// Client counts (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 5000])]
    pub clients: Vec<usize>,
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BrokerKind::Pricefeed, BrokerKind::Mosquitto])]
    pub brokers: Vec<BrokerKind>,
    /// Interval of the live feed.
    #[arg(long, default_value = "1s")]
    pub feed_interval: String,
    /// How far back each client backfills.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub backfill: Duration,
    /// The storm's clients all start within this window.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub within: Duration,
    /// Give up waiting for every client to be live after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Keep following live this long after the last client is live, before checking.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub follow: Duration,
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// On a shared machine: measure again (up to --attempts times in all) when other processes
    /// took more than this share of a core during the storm (percent).
    #[arg(long, default_value_t = 25.0)]
    pub max_other_cpu: f64,
    #[arg(long, default_value_t = 3)]
    pub attempts: usize,
    /// Name of the result files.
    #[arg(long, default_value = "storm")]
    pub name: String,
    /// Fail unless every client went live with no tick missing or duplicated.
    #[arg(long)]
    pub assert_gapless: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormResult {
    pub broker: BrokerKind,
    pub clients: usize,
    pub live: usize,
    pub errors: usize,
    /// What the history API refused during the storm, per its `/metrics`: answers 429 and 503,
    /// and connections closed at its per-address cap. With the default limits this must be 0.
    pub history_refused: u64,
    /// History requests answered with 200 during the run: one backfill per client, plus any
    /// re-asked backfill or hole filled before a live tick.
    pub history_answered: u64,
    pub first_error: Option<String>,
    pub all_live_seconds: Option<f64>,
    /// Per client, from its own start to its first tick newer than the storm's start.
    pub own_live_p50_seconds: f64,
    pub own_live_max_seconds: f64,
    /// Per client, from its own start to having delivered every tick stored before it started.
    pub catch_up_p50_seconds: f64,
    pub catch_up_max_seconds: f64,
    pub caught_up: usize,
    pub live_p50_seconds: f64,
    pub live_p99_seconds: f64,
    pub ticks_delivered: u64,
    pub ticks_per_client_min: usize,
    pub ticks_per_client_max: usize,
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub not_in_store: u64,
    pub gaps_reported: u64,
    pub server_rss_before_kb: u64,
    pub server_rss_peak_kb: u64,
    pub server_cpu_percent: f64,
    pub server_cpu_peak_percent: f64,
    /// Mosquitto runs: the broker's own share (the numbers above cover pricefeed + mosquitto).
    pub broker_rss_peak_kb: Option<u64>,
    pub harness_cpu_percent: f64,
    /// Machine busy CPU in the storm, minus server and harness: other processes.
    pub other_cpu_percent: f64,
    /// The busiest of those other processes (long-lived ones only).
    pub other_top: Vec<String>,
}

/// What one client delivered.
struct ClientLog {
    ticks: Vec<(Currency, Timedate)>,
    /// When this client started, after the storm's start.
    started_after: Duration,
    /// The slot before the one in progress when the client started: once it has delivered a tick
    /// this recent, it holds everything that existed when it started (it has caught up).
    catch_up_target: Timedate,
    /// From the client's start to catching up.
    caught_up_after: Option<Duration>,
    live_after: Option<Duration>,
    gaps: u64,
    error: Option<String>,
}

pub async fn run(args: StormArgs) -> anyhow::Result<Vec<StormResult>> {
    let bins = args.bin_dir.clone();
    let max = args.clients.iter().copied().max().unwrap_or(0);
    // An MQTT connection per client; their backfills share one HTTP client, whose pool holds as
    // many connections as requests were in flight at once, far fewer than the clients.
    let nofile = meters::ensure_nofile(max + 1000)?;
    eprintln!("storm: RLIMIT_NOFILE {nofile}");
    let mut results = Vec::new();
    for &k in &args.clients {
        for &broker in &args.brokers {
            eprintln!("storm: {k} pricesub clients on {broker:?}");
            let mut attempt = 1;
            let r = loop {
                let r = run_one(&bins, &args, broker, k).await?;
                eprintln!("storm: {}", serde_json::to_string(&r)?);
                if r.other_cpu_percent <= args.max_other_cpu || attempt >= args.attempts {
                    break r;
                }
                eprintln!(
                    "storm: other processes took {:.0}% of a core ({:?}); measuring again in 15 s",
                    r.other_cpu_percent, r.other_top
                );
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(15)).await;
            };
            results.push(r);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    std::fs::create_dir_all(&args.out)?;
    let name = &args.name;
    report::write_json(&args.out.join(format!("{name}.json")), &results)?;
    let table = table(&args, &results);
    report::write_table(&args.out.join(format!("{name}.md")), &table)?;
    println!("{}", table.markdown());
    if args.assert_gapless {
        for r in &results {
            anyhow::ensure!(
                r.live == r.clients
                    && r.caught_up == r.clients
                    && r.errors == 0
                    && r.history_refused == 0
                    && r.missing == 0
                    && r.duplicated == 0
                    && r.out_of_order == 0
                    && r.not_in_store == 0,
                "storm of {} on {:?}: {} live, {} errors ({:?}), {} refused by the history API, {} missing, {} duplicated, {} out of order, {} not in store",
                r.clients,
                r.broker,
                r.live,
                r.errors,
                r.first_error,
                r.history_refused,
                r.missing,
                r.duplicated,
                r.out_of_order,
                r.not_in_store
            );
        }
    }
    Ok(results)
}

async fn run_one(
    bins: &Path,
    args: &StormArgs,
    broker: BrokerKind,
    k: usize,
) -> anyhow::Result<StormResult> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("storm.db");
    // Ticks for the backfill window and more, ending now, at the product's 5 s interval.
    store::generate(
        db.clone(),
        args.backfill * 3,
        Interval::DEFAULT,
        Timedate::now(),
        2,
        100_000,
    )
    .await?;
    // Every client is on one loopback address, and their backfills share one HTTP client, which
    // opens a connection per request in flight: on a loaded machine 10,000 clients held more than
    // the history API's 4,096 connections per address, and the refused ones backed off for
    // seconds. Real clients come from as many addresses, so the cap is off here (the MQTT limits
    // per address stay at their defaults, which 10,000 clients in a second stay under).
    let server = Server::start_with(
        bins,
        broker,
        &db,
        &args.feed_interval,
        k + 1000,
        &[],
        &["--http-max-connections-per-address", "0"],
    )
    .await?;
    let server_pids = server.pids();
    let feed = server.feed();
    // A few live ticks first, so the broker holds retained ones and the feed is warm.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before: u64 = server_pids.iter().filter_map(|&p| meters::rss_kb(p)).sum();

    let broker_url = BrokerUrl::new(feed.mqtt.ip().to_string(), feed.mqtt.port());
    let history = format!("http://{}", feed.http);
    let storm_start = Timedate::now();
    let since = storm_start.saturating_sub(args.backfill);
    let t0 = Instant::now();
    let stop = CancellationToken::new();
    let live = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let sampler = Sampler::start(server_pids.clone(), Duration::from_millis(250));
    let broker_sampler = server
        .mosquitto()
        .map(|m| Sampler::start(vec![m.process.pid], Duration::from_millis(250)));
    let server_cpu = CpuMeter::start(server_pids.clone());
    let harness_cpu = CpuMeter::start_self();
    let machine_cpu = meters::MachineMeter::start();
    let others = meters::OthersMeter::start();

    let ctx = Arc::new(StormCtx {
        storm_start,
        t0,
        live: live.clone(),
        done: done.clone(),
        stop: stop.clone(),
    });
    let interval: Interval = args
        .feed_interval
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let mut tasks = Vec::with_capacity(k);
    for i in 0..k {
        let at = t0 + args.within.mul_f64(i as f64 / k as f64);
        let ctx = ctx.clone();
        let mut config = pricesub::SubscriberConfig::new(vec![broker_url.clone()]);
        config.history = vec![history.clone()];
        config.since = Some(since);
        config.history_timeout = Duration::from_secs(30);
        config.client_id = format!("bench-storm-{i}");
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let now = Timedate::now();
            let mut log = ClientLog {
                ticks: Vec::with_capacity(300),
                started_after: t0.elapsed(),
                catch_up_target: Timedate::from_unix_millis(
                    interval.slot_of(now).unix_millis() - interval.as_millis(),
                )
                .unwrap_or(now),
                caught_up_after: None,
                live_after: None,
                gaps: 0,
                error: None,
            };
            let outcome = sdk_client(config, &ctx, &mut log).await;
            if let Err(e) = outcome {
                log.error = Some(e);
                if log.live_after.is_none() {
                    ctx.done.fetch_add(1, Ordering::Relaxed);
                }
            }
            log
        }));
    }
    let deadline = t0 + args.timeout;
    while done.load(Ordering::Relaxed) < k && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let server_cpu_percent = server_cpu.percent();
    let harness_cpu_percent = harness_cpu.percent();
    let other_cpu_percent = machine_cpu.percent() - server_cpu_percent - harness_cpu_percent;
    let mut ours = server_pids.clone();
    ours.push(std::process::id());
    let other_top = others.top(&ours, 3);
    tokio::time::sleep(args.follow).await;
    stop.cancel();
    let (history_refused, history_answered) = history_counts(feed.http).await?;
    let peaks = sampler.finish().await;
    let broker_peaks = match broker_sampler {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    let mut logs = Vec::with_capacity(k);
    for task in tasks {
        if let Ok(log) = task.await {
            logs.push(log);
        }
    }

    // Every client's sequence per currency must be exactly the store's from `since` through the
    // last tick it delivered.
    let store = HistoryStore::open(&db)?;
    let mut expected = std::collections::BTreeMap::new();
    for c in Currency::ALL {
        let ticks: Vec<Timedate> = store
            .read(move |s| s.ticks_since(c, since, 10_000_000))
            .await?
            .into_iter()
            .map(|t| t.timedate)
            .collect();
        expected.insert(c, ticks);
    }
    drop(store);
    let (mut missing, mut duplicated, mut out_of_order, mut not_in_store) =
        (0u64, 0u64, 0u64, 0u64);
    let mut live_times = Vec::new();
    let mut own_live = Vec::new();
    let mut catch_up = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut gaps = 0;
    let mut delivered = 0u64;
    let (mut min_ticks, mut max_ticks) = (usize::MAX, 0);
    for log in &logs {
        if let Some(e) = &log.error {
            errors += 1;
            first_error.get_or_insert_with(|| e.clone());
        }
        if let Some(t) = log.live_after {
            live_times.push(t.as_micros() as u64);
            own_live.push(t.saturating_sub(log.started_after).as_micros() as u64);
        }
        if let Some(t) = log.caught_up_after {
            catch_up.push(t.as_micros() as u64);
        }
        gaps += log.gaps;
        delivered += log.ticks.len() as u64;
        min_ticks = min_ticks.min(log.ticks.len());
        max_ticks = max_ticks.max(log.ticks.len());
        for c in Currency::ALL {
            let got: Vec<Timedate> = log
                .ticks
                .iter()
                .filter(|(cur, _)| *cur == c)
                .map(|(_, t)| *t)
                .collect();
            out_of_order += got.windows(2).filter(|w| w[1] < w[0]).count() as u64;
            let mut sorted = got.clone();
            sorted.sort_unstable();
            let before = sorted.len();
            sorted.dedup();
            duplicated += (before - sorted.len()) as u64;
            let Some(&last) = sorted.last() else {
                // A client that failed before delivering anything is counted in `errors`; one
                // that delivered ticks of the other currency only misses all of this one.
                if !log.ticks.is_empty() {
                    missing += expected[&c].len() as u64;
                }
                continue;
            };
            let want: Vec<Timedate> = expected[&c]
                .iter()
                .copied()
                .filter(|t| *t <= last)
                .collect();
            let want_set: std::collections::BTreeSet<_> = want.iter().copied().collect();
            let got_set: std::collections::BTreeSet<_> = sorted.iter().copied().collect();
            missing += want_set.difference(&got_set).count() as u64;
            not_in_store += got_set.difference(&want_set).count() as u64;
        }
    }
    live_times.sort_unstable();
    own_live.sort_unstable();
    catch_up.sort_unstable();
    let live_count = live_times.len();
    let result = StormResult {
        broker,
        own_live_p50_seconds: report::percentile_ms(&own_live, 50.0) / 1000.0,
        own_live_max_seconds: report::percentile_ms(&own_live, 100.0) / 1000.0,
        catch_up_p50_seconds: report::percentile_ms(&catch_up, 50.0) / 1000.0,
        catch_up_max_seconds: report::percentile_ms(&catch_up, 100.0) / 1000.0,
        caught_up: catch_up.len(),
        clients: k,
        live: live_count,
        errors,
        history_refused,
        history_answered,
        first_error,
        all_live_seconds: (live_count == k)
            .then(|| report::percentile_ms(&live_times, 100.0) / 1000.0),
        live_p50_seconds: report::percentile_ms(&live_times, 50.0) / 1000.0,
        live_p99_seconds: report::percentile_ms(&live_times, 99.0) / 1000.0,
        ticks_delivered: delivered,
        ticks_per_client_min: if logs.is_empty() { 0 } else { min_ticks },
        ticks_per_client_max: max_ticks,
        missing,
        duplicated,
        out_of_order,
        not_in_store,
        gaps_reported: gaps,
        server_rss_before_kb: rss_before,
        server_rss_peak_kb: peaks.peak_rss_kb,
        server_cpu_percent,
        server_cpu_peak_percent: peaks.peak_cpu_percent,
        broker_rss_peak_kb: broker_peaks.map(|p| p.peak_rss_kb),
        harness_cpu_percent,
        other_cpu_percent,
        other_top,
    };
    drop(logs);
    server.stop().await;
    Ok(result)
}

/// What every client of one storm shares.
struct StormCtx {
    storm_start: Timedate,
    t0: Instant,
    live: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl StormCtx {
    /// Records a delivered tick; the first one newer than the storm's start makes the client live.
    fn delivered(&self, log: &mut ClientLog, tick: &Tick) {
        log.ticks.push((tick.currency, tick.timedate));
        if log.caught_up_after.is_none() && tick.timedate >= log.catch_up_target {
            log.caught_up_after = Some(self.t0.elapsed().saturating_sub(log.started_after));
        }
        if log.live_after.is_none() && tick.timedate > self.storm_start {
            log.live_after = Some(self.t0.elapsed());
            self.live.fetch_add(1, Ordering::Relaxed);
            self.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The pricesub SDK.
async fn sdk_client(
    config: pricesub::SubscriberConfig,
    ctx: &StormCtx,
    log: &mut ClientLog,
) -> Result<(), String> {
    let mut sub = pricesub::subscribe(config).map_err(|e| e.to_string())?;
    // Waited on once, not once per event: every client shares the token, and registering with it
    // for each of millions of events was the harness's own cost, not the SDK's.
    let stopped = ctx.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            event = sub.next() => match event {
                Some(Ok(pricesub::FeedEvent::Tick(t))) => ctx.delivered(log, &t),
                Some(Ok(pricesub::FeedEvent::Gap(_))) => log.gaps += 1,
                Some(Ok(pricesub::FeedEvent::Live | pricesub::FeedEvent::Status(_))) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(()),
            },
            _ = &mut stopped => return Ok(()),
        }
    }
}

fn table(args: &StormArgs, results: &[StormResult]) -> Table {
    let mut t = Table::new(
        &format!(
            "Reconnect storm (pricesub SDK clients): start within {}, backfill {}, then live (feed interval {})",
            humantime::format_duration(args.within),
            humantime::format_duration(args.backfill),
            args.feed_interval
        ),
        &[
            "clients",
            "server",
            "all live s",
            "p50 live s",
            "per-client catch-up p50 / max s",
            "live/clients",
            "errors",
            "history refused",
            "history answers",
            "missing",
            "duplicated",
            "ticks delivered",
            "server peak RSS MB",
            "server CPU % (avg)",
            "server CPU % (peak 250 ms)",
            "harness CPU %",
            "other CPU %",
        ],
    );
    for r in results {
        t.row(vec![
            r.clients.to_string(),
            r.broker.label().into(),
            r.all_live_seconds.map_or("not all".into(), |s| fmt_f(s, 2)),
            fmt_f(r.live_p50_seconds, 2),
            format!(
                "{} / {}",
                fmt_f(r.catch_up_p50_seconds, 2),
                fmt_f(r.catch_up_max_seconds, 2)
            ),
            format!("{}/{}", r.live, r.clients),
            r.errors.to_string(),
            r.history_refused.to_string(),
            r.history_answered.to_string(),
            r.missing.to_string(),
            r.duplicated.to_string(),
            r.ticks_delivered.to_string(),
            fmt_f(r.server_rss_peak_kb as f64 / 1024.0, 1),
            fmt_f(r.server_cpu_percent, 0),
            fmt_f(r.server_cpu_peak_percent, 0),
            fmt_f(r.harness_cpu_percent, 0),
            fmt_f(r.other_cpu_percent.max(0.0), 0),
        ]);
    }
    for k in results
        .iter()
        .map(|r| r.clients)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let ours = results
            .iter()
            .find(|r| r.clients == k && r.broker == BrokerKind::Pricefeed);
        let peer = results
            .iter()
            .find(|r| r.clients == k && r.broker == BrokerKind::Mosquitto);
        if let (Some(a), Some(b)) = (ours, peer) {
            t.row(vec![
                k.to_string(),
                "ratio pricefeed/mosquitto".into(),
                report::ratio(
                    a.all_live_seconds.unwrap_or(f64::NAN),
                    b.all_live_seconds.unwrap_or(f64::NAN),
                ),
                report::ratio(a.live_p50_seconds, b.live_p50_seconds),
                report::ratio(a.catch_up_max_seconds, b.catch_up_max_seconds),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                report::ratio(a.server_rss_peak_kb as f64, b.server_rss_peak_kb as f64),
                report::ratio(a.server_cpu_percent, b.server_cpu_percent),
                report::ratio(a.server_cpu_peak_percent, b.server_cpu_peak_percent),
                String::new(),
                String::new(),
            ]);
        }
    }
    t
}

/// Requests and connections the history API refused (429, 503, per-address connection cap), and
/// requests it answered (200), per its `/metrics`.
async fn history_counts(http: std::net::SocketAddr) -> anyhow::Result<(u64, u64)> {
    let (status, body) = crate::harness::servers::http_get(http, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics: HTTP {status}");
    let text = String::from_utf8_lossy(&body);
    let sum = |prefixes: &[&str]| -> u64 {
        text.lines()
            .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let refused = sum(&[
        "pricefeed_history_requests_total{status=\"429\"}",
        "pricefeed_history_requests_total{status=\"503\"}",
        "pricefeed_history_connections_refused_total ",
    ]);
    let answered = sum(&["pricefeed_history_requests_total{status=\"200\"}"]);
    Ok((refused, answered))
}
