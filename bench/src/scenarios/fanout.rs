//! Scenario 1, fan-out: N MQTT 3.1.1 subscribers on `btc/#`, the feed publishing, latency from the
//! moment a tick is handed to the broker to its receipt by every subscriber.
//!
//! The harness is the timed publisher: it connects with the publisher credential and publishes
//! ticks in the exact wire format on `btc/USD` (QoS 1, retained, like the feed) at a fixed rate,
//! stamping each send with the monotonic clock; the subscribers, in the same process, stamp each
//! receipt with the same clock, so latency = receipt − send with no clock skew. The bench ticks
//! carry timedates in 2001 (`2001-01-01T00:00:00Z` + sequence seconds), so they cannot be confused
//! with the real feed's ticks, which `pricefeed --source demo` keeps publishing meanwhile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use ticks::{Currency, Price, Tick, Timedate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::harness::lean_mqtt as mqtt;
use crate::harness::meters::{self, CpuMeter, Sampler};
use crate::harness::report::{self, Table, fmt_f};
use crate::harness::servers::{BrokerKind, Server};

/// 2001-01-01T00:00:00Z: bench ticks are this plus their sequence number in seconds.
const BENCH_EPOCH_S: i64 = 978_307_200;
const BENCH_PREFIX: &[u8] = br#"{"timedate":"2001-01-01T"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// The harness's lean MQTT 3.1.1 client.
    Raw,
    /// rumqttc 0.25 (one AsyncClient + EventLoop per subscriber).
    Rumqttc,
}

#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Where the workspace binaries are.
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// Subscriber counts (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 5000, 10000])]
    pub subscribers: Vec<usize>,
    /// Brokers to run the same load against, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BrokerKind::Pricefeed, BrokerKind::Mosquitto])]
    pub brokers: Vec<BrokerKind>,
    /// Timed ticks the harness publishes.
    #[arg(long, default_value_t = 100)]
    pub ticks: usize,
    /// Interval between timed ticks.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub tick_every: Duration,
    /// `pricefeed --interval` of the real demo feed running meanwhile.
    #[arg(long, default_value = "100ms")]
    pub feed_interval: String,
    /// Subscriber implementation.
    #[arg(long, value_enum, default_value_t = ClientKind::Raw)]
    pub client: ClientKind,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// After the last timed tick, stop waiting for stragglers once no timed tick has arrived
    /// anywhere for this long (what is still missing then is lost)...
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// ...or once this long has passed since the last timed tick.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub drain_max: Duration,
    /// Name of the result files (`<name>.json`, `<name>.md`); default from the client kind.
    #[arg(long)]
    pub name: Option<String>,
    /// Directory for the raw results.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// On a shared machine: measure again (up to --attempts times in all) when other processes
    /// took more than this share of a core during the measurement (percent).
    #[arg(long, default_value_t = 25.0)]
    pub max_other_cpu: f64,
    #[arg(long, default_value_t = 3)]
    pub attempts: usize,
    /// A line appended to Mosquitto's configuration (repeatable; for experiments).
    #[arg(long)]
    pub mosquitto_extra: Vec<String>,
    /// Fail unless every timed tick reached every subscriber (QoS 1: no loss allowed).
    #[arg(long)]
    pub assert_no_loss: bool,
}

/// One subscriber's record.
struct SubResult {
    /// Receipt time (µs since the shared base) per timed tick; `u64::MAX` = never arrived.
    received: Vec<u64>,
    duplicates: u64,
    feed_messages: u64,
    error: Option<String>,
}

/// What the subscribers share.
struct Shared {
    base: Instant,
    payloads: Vec<Vec<u8>>,
    subscribed: AtomicUsize,
    failed: AtomicUsize,
    bench_received: AtomicU64,
    feed_received: AtomicU64,
    stop: CancellationToken,
}

impl Shared {
    fn record(&self, rec: &mut SubResult, now_us: u64, topic: &[u8], payload: &[u8]) {
        if topic == b"btc/USD" && payload.starts_with(BENCH_PREFIX) {
            if let Some(seq) = bench_seq(payload)
                && self.payloads.get(seq).is_some_and(|p| p == payload)
            {
                if rec.received[seq] == u64::MAX {
                    rec.received[seq] = now_us;
                    self.bench_received.fetch_add(1, Ordering::Relaxed);
                } else {
                    rec.duplicates += 1;
                }
                return;
            }
            rec.error.get_or_insert_with(|| {
                format!(
                    "unexpected bench payload {}",
                    String::from_utf8_lossy(payload)
                )
            });
        } else if topic.starts_with(b"btc/") {
            rec.feed_messages += 1;
            self.feed_received.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The sequence number of a bench tick from its `HH:MM:SS`.
fn bench_seq(payload: &[u8]) -> Option<usize> {
    let hms = payload.get(BENCH_PREFIX.len()..BENCH_PREFIX.len() + 8)?;
    let num = |i: usize| -> Option<usize> {
        let (a, b) = (hms[i], hms[i + 1]);
        (a.is_ascii_digit() && b.is_ascii_digit())
            .then(|| usize::from(a - b'0') * 10 + usize::from(b - b'0'))
    };
    Some(num(0)? * 3600 + num(3)? * 60 + num(6)?)
}

/// The timed ticks: exact wire payloads, built by the `ticks` crate.
fn bench_payloads(n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    (0..n)
        .map(|i| {
            let tick = Tick {
                currency: Currency::USD,
                timedate: Timedate::from_unix_millis((BENCH_EPOCH_S + i as i64) * 1000)
                    .context("bench time")?,
                price: Price::from_parts(6_000_000 + i as u64, 2)?,
            };
            Ok(tick.payload().into_bytes())
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub broker: BrokerKind,
    pub client: ClientKind,
    pub subscribers: usize,
    pub subscribed: usize,
    pub connect_failures: usize,
    pub connect_seconds: f64,
    pub ticks: usize,
    pub tick_every_ms: u64,
    pub feed_interval: String,
    pub expected_receipts: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub subscriber_errors: usize,
    pub first_error: Option<String>,
    pub publisher_pubacks: u64,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    pub latency_max_ms: f64,
    /// Seconds from the first timed publish to the last receipt (or the drain timeout).
    pub window_seconds: f64,
    /// Messages on btc/# delivered to the subscribers per second in that window.
    pub delivered_per_second: f64,
    pub broker_rss_baseline_kb: u64,
    pub broker_rss_subscribed_kb: u64,
    pub broker_rss_peak_kb: u64,
    pub broker_rss_per_subscriber_kb: f64,
    pub broker_cpu_percent: f64,
    pub broker_cpu_peak_percent: f64,
    pub broker_connect_cpu_percent: f64,
    /// `pricefeed` in --broker mode (Mosquitto runs); None when it is the broker itself.
    pub publisher_cpu_percent: Option<f64>,
    pub harness_cpu_percent: f64,
    pub harness_connect_cpu_percent: f64,
    /// The whole machine's busy CPU in the window; minus broker, publisher and harness, it is what
    /// other processes on this shared machine took.
    pub machine_cpu_percent: f64,
    pub other_cpu_percent: f64,
    /// The busiest of those other processes over the window (long-lived ones only).
    pub other_top: Vec<String>,
}

impl FanoutResult {
    /// The brokers' CPU time per message delivered, in the measured window.
    pub fn broker_cpu_us_per_delivery(&self) -> f64 {
        if self.delivered_per_second > 0.0 {
            self.broker_cpu_percent * 1e4 / self.delivered_per_second
        } else {
            f64::NAN
        }
    }
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<Vec<FanoutResult>> {
    let bins = args.bin_dir.clone();
    let max = args.subscribers.iter().copied().max().unwrap_or(0);
    let nofile = meters::ensure_nofile(max + 100)?;
    eprintln!("fanout: RLIMIT_NOFILE {nofile}");
    let mut results = Vec::new();
    for &n in &args.subscribers {
        for &broker in &args.brokers {
            eprintln!(
                "fanout: {n} subscribers on {broker:?} ({:?} client)",
                args.client
            );
            let mut attempt = 1;
            let r = loop {
                let r = run_one(&bins, &args, broker, n).await?;
                eprintln!("fanout: {}", serde_json::to_string(&r)?);
                if r.other_cpu_percent <= args.max_other_cpu || attempt >= args.attempts {
                    break r;
                }
                eprintln!(
                    "fanout: other processes took {:.0}% of a core ({:?}); measuring again in 15 s",
                    r.other_cpu_percent, r.other_top
                );
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(15)).await;
            };
            results.push(r);
            // Let sockets of the last run close before the next.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    std::fs::create_dir_all(&args.out)?;
    let name = args.name.clone().unwrap_or_else(|| match args.client {
        ClientKind::Raw => "fanout".into(),
        ClientKind::Rumqttc => "fanout-rumqttc".into(),
    });
    report::write_json(&args.out.join(format!("{name}.json")), &results)?;
    let table = table(
        &format!(
            "Fan-out ({}): timed tick every {} ms ({} ticks), real feed --interval {}, {} subscribers{}",
            name,
            args.tick_every.as_millis(),
            args.ticks,
            args.feed_interval,
            match args.client {
                ClientKind::Raw => "lean",
                ClientKind::Rumqttc => "rumqttc",
            },
            if args.mosquitto_extra.is_empty() {
                String::new()
            } else {
                format!(", mosquitto + `{}`", args.mosquitto_extra.join("; "))
            }
        ),
        &results,
    );
    report::write_table(&args.out.join(format!("{name}.md")), &table)?;
    println!("{}", table.markdown());
    if args.assert_no_loss {
        for r in &results {
            anyhow::ensure!(
                r.lost == 0 && r.connect_failures == 0 && r.subscriber_errors == 0,
                "fan-out on {:?} with {} subscribers: {} lost, {} connect failures, {} errors ({:?})",
                r.broker,
                r.subscribers,
                r.lost,
                r.connect_failures,
                r.subscriber_errors,
                r.first_error
            );
        }
    }
    Ok(results)
}

async fn run_one(
    bins: &Path,
    args: &FanoutArgs,
    broker: BrokerKind,
    n: usize,
) -> anyhow::Result<FanoutResult> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("feed.db");
    let max_clients = n + 1000;
    let server = Server::start(
        bins,
        broker,
        &db,
        &args.feed_interval,
        max_clients,
        &args.mosquitto_extra,
    )
    .await?;
    let broker_pids = server.broker_pids();
    let publisher_pid = server.publisher_pid();
    // Subscribers spread over every broker of the server (one, or a cluster's three).
    let addrs = server.mqtt();
    let addr = addrs[0];
    let rss = |pids: &[u32]| pids.iter().filter_map(|&p| meters::rss_kb(p)).sum::<u64>();
    for &addr in &addrs {
        retained_tick(addr, Duration::from_secs(60))
            .await
            .with_context(|| format!("no tick on {addr} within 60 s"))?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_baseline = rss(&broker_pids);

    let shared = Arc::new(Shared {
        base: Instant::now(),
        payloads: bench_payloads(args.ticks)?,
        subscribed: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        bench_received: AtomicU64::new(0),
        feed_received: AtomicU64::new(0),
        stop: CancellationToken::new(),
    });

    // Connect every subscriber, a bounded number at a time.
    let connect_cpu = CpuMeter::start(broker_pids.clone());
    let harness_connect_cpu = CpuMeter::start_self();
    let connect_started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let shared = shared.clone();
        let gate = gate.clone();
        let client = args.client;
        let id = format!("bench-{}-{i}", std::process::id());
        let addr = addrs[i % addrs.len()];
        tasks.push(tokio::spawn(async move {
            match client {
                ClientKind::Raw => raw_subscriber(addr, id, shared, gate).await,
                ClientKind::Rumqttc => rumqttc_subscriber(addr, id, shared, gate).await,
            }
        }));
    }
    let connect_deadline = Instant::now() + Duration::from_secs(300);
    while shared.subscribed.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < n {
        if Instant::now() > connect_deadline {
            eprintln!("fanout: not every subscriber connected within 300 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let broker_connect_cpu = connect_cpu.percent();
    let harness_connect_cpu = harness_connect_cpu.percent();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_subscribed = rss(&broker_pids);

    // The timed publisher.
    let (pub_stream, _) = mqtt::connect(
        addr,
        &format!("bench-publisher-{}", std::process::id()),
        Some((broker_config::PUBLISHER_USER, server.password())),
        60,
        Duration::from_secs(10),
    )
    .await
    .context("the bench publisher could not connect with the publisher credential")?;
    let (mut pub_read, mut pub_write) = pub_stream.into_split();
    let pubacks = Arc::new(AtomicU64::new(0));
    let acks = pubacks.clone();
    let ack_reader = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(4096);
        loop {
            match pub_read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let mut used = 0;
            while let Ok(Some((first, _, total))) = mqtt::next_packet(&buf[used..]) {
                if first & 0xF0 == mqtt::PUBACK {
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                used += total;
            }
            buf.drain(..used);
        }
    });

    let broker_cpu = CpuMeter::start(broker_pids.clone());
    let publisher_cpu = publisher_pid.map(|p| CpuMeter::start(vec![p]));
    let harness_cpu = CpuMeter::start_self();
    let machine_cpu = meters::MachineMeter::start();
    let others = meters::OthersMeter::start();
    let sampler = Sampler::start(broker_pids.clone(), Duration::from_millis(500));
    let feed_before = shared.feed_received.load(Ordering::Relaxed);
    let bench_before = shared.bench_received.load(Ordering::Relaxed);
    let window_start = Instant::now();
    let mut sent_us = vec![0u64; args.ticks];
    for (seq, payload) in shared.payloads.iter().enumerate() {
        tokio::time::sleep_until((window_start + args.tick_every * seq as u32).into()).await;
        let packet = mqtt::publish_packet("btc/USD", (seq % 65_535 + 1) as u16, payload, true);
        sent_us[seq] = shared.base.elapsed().as_micros() as u64;
        pub_write.write_all(&packet).await?;
    }
    let last_send = Instant::now();
    let subscribed = shared.subscribed.load(Ordering::Relaxed);
    let expected = (subscribed * args.ticks) as u64;
    // Wait until every timed tick arrived, or arrivals stalled, or the hard limit. CPU and
    // throughput are taken at the last arrival, so the stall at the end does not dilute them.
    let snapshot = |window_start: Instant| {
        let delivered = (shared.feed_received.load(Ordering::Relaxed) - feed_before)
            + (shared.bench_received.load(Ordering::Relaxed) - bench_before);
        (
            window_start.elapsed().as_secs_f64(),
            delivered,
            broker_cpu.percent(),
            publisher_cpu.as_ref().map(|m| m.percent()),
            harness_cpu.percent(),
            machine_cpu.percent(),
        )
    };
    let mut at_last_arrival = snapshot(window_start);
    let mut seen = shared.bench_received.load(Ordering::Relaxed);
    let mut progress = Instant::now();
    loop {
        let now = shared.bench_received.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            progress = Instant::now();
            at_last_arrival = snapshot(window_start);
        }
        if now >= expected + bench_before
            || progress.elapsed() > args.drain
            || last_send.elapsed() > args.drain_max
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (
        window_seconds,
        delivered,
        broker_cpu_percent,
        publisher_cpu_percent,
        harness_cpu_percent,
        machine_cpu_percent,
    ) = at_last_arrival;
    let mut ours = broker_pids.clone();
    ours.push(std::process::id());
    ours.extend(publisher_pid);
    let other_top = others.top(&ours, 3);
    let peaks = sampler.finish().await;
    // PUBACKs of the last ticks may still be in flight.
    let ack_deadline = Instant::now() + Duration::from_secs(5);
    while pubacks.load(Ordering::Relaxed) < args.ticks as u64 && Instant::now() < ack_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = pub_write.write_all(&[0xE0, 0]).await; // DISCONNECT
    ack_reader.abort();

    shared.stop.cancel();
    let mut subs = Vec::with_capacity(n);
    for task in tasks {
        if let Ok(r) = task.await {
            subs.push(r);
        }
    }

    let mut latencies: Vec<u64> = Vec::with_capacity(subscribed * args.ticks);
    let (mut received, mut duplicates, mut errors) = (0u64, 0u64, 0usize);
    let mut first_error = None;
    for s in &subs {
        duplicates += s.duplicates;
        if let Some(e) = &s.error {
            errors += 1;
            first_error.get_or_insert_with(|| e.clone());
        }
        for (seq, &at) in s.received.iter().enumerate() {
            if at != u64::MAX {
                received += 1;
                latencies.push(at.saturating_sub(sent_us[seq]));
            }
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| report::percentile_ms(&latencies, p);
    let result = FanoutResult {
        broker,
        client: args.client,
        subscribers: n,
        subscribed,
        connect_failures: shared.failed.load(Ordering::Relaxed),
        connect_seconds,
        ticks: args.ticks,
        tick_every_ms: args.tick_every.as_millis() as u64,
        feed_interval: args.feed_interval.clone(),
        expected_receipts: expected,
        received,
        lost: expected.saturating_sub(received),
        duplicates,
        subscriber_errors: errors,
        first_error,
        publisher_pubacks: pubacks.load(Ordering::Relaxed),
        latency_p50_ms: pct(50.0),
        latency_p90_ms: pct(90.0),
        latency_p99_ms: pct(99.0),
        latency_p999_ms: pct(99.9),
        latency_max_ms: latencies.last().map_or(f64::NAN, |&m| m as f64 / 1000.0),
        window_seconds,
        delivered_per_second: delivered as f64 / window_seconds,
        broker_rss_baseline_kb: rss_baseline,
        broker_rss_subscribed_kb: rss_subscribed,
        broker_rss_peak_kb: peaks.peak_rss_kb,
        broker_rss_per_subscriber_kb: (rss_subscribed as f64 - rss_baseline as f64)
            / n.max(1) as f64,
        broker_cpu_percent,
        broker_cpu_peak_percent: peaks.peak_cpu_percent,
        broker_connect_cpu_percent: broker_connect_cpu,
        publisher_cpu_percent,
        harness_cpu_percent,
        harness_connect_cpu_percent: harness_connect_cpu,
        machine_cpu_percent,
        other_cpu_percent: machine_cpu_percent
            - broker_cpu_percent
            - publisher_cpu_percent.unwrap_or(0.0)
            - harness_cpu_percent,
        other_top,
    };
    drop(subs);
    server.stop().await;
    Ok(result)
}

/// Waits until the broker at `addr` holds a retained tick. The feed publishes its first at the
/// first slot boundary after start-up; from then on every subscriber receives it at QoS 1 on
/// subscribing, as a display does, and the memory per subscriber includes what that delivery
/// leaves behind (rmqtt keeps the inflight window's storage and the grown delivery queue).
async fn retained_tick(addr: SocketAddr, within: Duration) -> std::io::Result<()> {
    let id = format!("bench-retained-{}", std::process::id());
    let (mut stream, mut buf) = mqtt::connect(addr, &id, None, 60, within).await?;
    mqtt::subscribe(&mut stream, &mut buf, Currency::USD.topic(), within).await?;
    // The retained tick if there is one, else the feed's first, which is retained from then on.
    tokio::time::timeout(within, async {
        loop {
            let (first, _) = mqtt::read_packet(&mut stream, &mut buf).await?;
            if first & 0xF0 == mqtt::PUBLISH {
                return Ok::<_, std::io::Error>(());
            }
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no tick"))??;
    let _ = stream.write_all(&[0xE0, 0]).await; // DISCONNECT
    Ok(())
}

async fn raw_subscriber(
    addr: SocketAddr,
    id: String,
    shared: Arc<Shared>,
    gate: Arc<tokio::sync::Semaphore>,
) -> SubResult {
    let mut rec = SubResult {
        received: vec![u64::MAX; shared.payloads.len()],
        duplicates: 0,
        feed_messages: 0,
        error: None,
    };
    let permit = gate.acquire_owned().await;
    let setup = async {
        let (mut stream, mut buf) =
            mqtt::connect(addr, &id, None, 120, Duration::from_secs(60)).await?;
        mqtt::subscribe(&mut stream, &mut buf, "btc/#", Duration::from_secs(60)).await?;
        Ok::<_, std::io::Error>((stream, buf))
    };
    let (mut stream, mut buf) = match setup.await {
        Ok(s) => s,
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            rec.error = Some(format!("connect/subscribe: {e}"));
            return rec;
        }
    };
    drop(permit);
    shared.subscribed.fetch_add(1, Ordering::Relaxed);
    let mut ping = tokio::time::interval(Duration::from_secs(60));
    ping.tick().await;
    let mut acks = Vec::with_capacity(256);
    // Packets buffered with the SUBACK (retained ticks) are processed by the first pass below.
    let mut pending = !buf.is_empty();
    loop {
        if !pending {
            if buf.capacity() - buf.len() < 2048 {
                buf.reserve(8192);
            }
            tokio::select! {
                r = stream.read_buf(&mut buf) => match r {
                    Ok(0) => { rec.error = Some("broker closed the connection".into()); break; }
                    Err(e) => { rec.error = Some(format!("read: {e}")); break; }
                    Ok(_) => {}
                },
                _ = ping.tick() => {
                    if let Err(e) = stream.write_all(&[mqtt::PINGREQ, 0]).await {
                        rec.error = Some(format!("ping: {e}"));
                        break;
                    }
                    continue;
                }
                _ = shared.stop.cancelled() => break,
            }
        }
        pending = false;
        let now_us = shared.base.elapsed().as_micros() as u64;
        let mut used = 0;
        loop {
            match mqtt::next_packet(&buf[used..]) {
                Ok(Some((first, body, total))) => {
                    if first & 0xF0 == mqtt::PUBLISH {
                        let start = used + body.start;
                        let end = used + body.end;
                        match mqtt::parse_publish(first, &buf[start..end]) {
                            Ok(p) => {
                                if let Some(id) = p.packet_id {
                                    mqtt::puback(id, &mut acks);
                                }
                                shared.record(&mut rec, now_us, p.topic, p.payload);
                            }
                            Err(e) => {
                                rec.error = Some(e.to_string());
                            }
                        }
                    }
                    used += total;
                }
                Ok(None) => break,
                Err(e) => {
                    rec.error = Some(e.to_string());
                    return rec;
                }
            }
        }
        buf.drain(..used);
        if !acks.is_empty() {
            if let Err(e) = stream.write_all(&acks).await {
                rec.error = Some(format!("puback: {e}"));
                break;
            }
            acks.clear();
        }
    }
    let _ = stream.write_all(&[0xE0, 0]).await;
    rec
}

async fn rumqttc_subscriber(
    addr: SocketAddr,
    id: String,
    shared: Arc<Shared>,
    gate: Arc<tokio::sync::Semaphore>,
) -> SubResult {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut rec = SubResult {
        received: vec![u64::MAX; shared.payloads.len()],
        duplicates: 0,
        feed_messages: 0,
        error: None,
    };
    let permit = gate.acquire_owned().await;
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(60));
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    if client.try_subscribe("btc/#", QoS::AtLeastOnce).is_err() {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        rec.error = Some("subscribe queue full".into());
        return rec;
    }
    let subscribed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = shared.base.elapsed().as_micros() as u64;
                    shared.record(&mut rec, now, p.topic.as_bytes(), &p.payload);
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    match subscribed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            rec.error = Some(format!("connect/subscribe: {e}"));
            return rec;
        }
        Err(_) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            rec.error = Some("no SUBACK within 60 s".into());
            return rec;
        }
    }
    drop(permit);
    shared.subscribed.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = shared.base.elapsed().as_micros() as u64;
                    shared.record(&mut rec, now, p.topic.as_bytes(), &p.payload);
                }
                Ok(_) => {}
                Err(e) => { rec.error = Some(e.to_string()); break; }
            },
            _ = shared.stop.cancelled() => break,
        }
    }
    let _ = client.try_disconnect();
    rec
}

fn table(title: &str, results: &[FanoutResult]) -> Table {
    let mut t = Table::new(
        title,
        &[
            "subscribers",
            "broker",
            "p50 ms",
            "p99 ms",
            "max ms",
            "lost",
            "dup",
            "RSS/sub KB",
            "broker CPU %",
            "broker CPU µs/delivery",
            "publisher CPU %",
            "harness CPU %",
            "other CPU %",
            "msgs/s delivered",
            "connect s",
        ],
    );
    for r in results {
        t.row(vec![
            r.subscribers.to_string(),
            format!("{:?}", r.broker).to_lowercase(),
            fmt_f(r.latency_p50_ms, 2),
            fmt_f(r.latency_p99_ms, 2),
            fmt_f(r.latency_max_ms, 2),
            r.lost.to_string(),
            r.duplicates.to_string(),
            fmt_f(r.broker_rss_per_subscriber_kb, 1),
            fmt_f(r.broker_cpu_percent, 0),
            fmt_f(r.broker_cpu_us_per_delivery(), 1),
            r.publisher_cpu_percent
                .map_or("(same process)".into(), |c| fmt_f(c, 0)),
            fmt_f(r.harness_cpu_percent, 0),
            fmt_f(r.other_cpu_percent.max(0.0), 0),
            fmt_f(r.delivered_per_second, 0),
            fmt_f(r.connect_seconds, 1),
        ]);
    }
    // Ratio rows at each N: pricefeed ÷ mosquitto, and what the cluster's forwarding costs,
    // cluster ÷ pricefeed.
    let pairs = [
        (
            BrokerKind::Pricefeed,
            BrokerKind::Mosquitto,
            "ratio pricefeed/mosquitto",
        ),
        (
            BrokerKind::Cluster,
            BrokerKind::Pricefeed,
            "ratio cluster/pricefeed",
        ),
    ];
    for n in results
        .iter()
        .map(|r| r.subscribers)
        .collect::<std::collections::BTreeSet<_>>()
    {
        for (top, bottom, label) in pairs {
            let find = |kind| {
                results
                    .iter()
                    .find(|r| r.subscribers == n && r.broker == kind)
            };
            let (Some(a), Some(b)) = (find(top), find(bottom)) else {
                continue;
            };
            t.row(vec![
                n.to_string(),
                label.into(),
                report::ratio(a.latency_p50_ms, b.latency_p50_ms),
                report::ratio(a.latency_p99_ms, b.latency_p99_ms),
                report::ratio(a.latency_max_ms, b.latency_max_ms),
                String::new(),
                String::new(),
                report::ratio(
                    a.broker_rss_per_subscriber_kb,
                    b.broker_rss_per_subscriber_kb,
                ),
                report::ratio(a.broker_cpu_percent, b.broker_cpu_percent),
                report::ratio(
                    a.broker_cpu_us_per_delivery(),
                    b.broker_cpu_us_per_delivery(),
                ),
                String::new(),
                String::new(),
                String::new(),
                report::ratio(a.delivered_per_second, b.delivered_per_second),
                report::ratio(a.connect_seconds, b.connect_seconds),
            ]);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_ticks_are_wire_ticks_and_carry_their_sequence() {
        let payloads = bench_payloads(3700).unwrap();
        assert_eq!(
            String::from_utf8(payloads[0].clone()).unwrap(),
            r#"{"timedate":"2001-01-01T00:00:00Z","price":60000}"#
        );
        for (i, p) in payloads.iter().enumerate() {
            assert_eq!(bench_seq(p), Some(i));
            Tick::from_message("btc/USD", p).unwrap();
        }
    }
}
