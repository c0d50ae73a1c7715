//! Scenario 4, footprint: `pricefeed --source demo` at its 5 s interval with no clients — idle
//! CPU over a window, RSS, start-up time to the first tick — and release binary sizes. The peer, in
//! the same window, is Debian's Mosquitto idle with pricefeed's configuration (a bare broker; it
//! does not sample, store or serve history).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use ticks::{Interval, Timedate};

use testkit::Mosquitto;

use crate::harness::lean_mqtt as mqtt;
use crate::harness::meters::{self, CpuMeter};
use crate::harness::report::{self, Table, fmt_f};
use crate::harness::servers::{BrokerKind, Server};

#[derive(Debug, clap::Args)]
pub struct FootprintArgs {
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// Idle window.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct FootprintResult {
    pub idle_seconds: f64,
    pub pricefeed_ready_ms: f64,
    pub pricefeed_first_tick_ms: f64,
    pub first_tick_timedate: String,
    pub first_tick_retained: bool,
    /// Wall-clock time from the first tick's slot start to its receipt.
    pub first_tick_after_slot_start_ms: i64,
    /// The first slot start at or after the process was spawned; the first tick's timedate.
    pub first_slot_expected: String,
    pub interval_ms: i64,
    pub pricefeed_idle_cpu_percent: f64,
    pub pricefeed_rss_kb: u64,
    pub pricefeed_hwm_kb: u64,
    pub pricefeed_threads: u64,
    pub mosquitto_ready_ms: f64,
    pub mosquitto_idle_cpu_percent: f64,
    pub mosquitto_rss_kb: u64,
    pub binaries: Vec<(String, u64)>,
    pub mosquitto_binary_bytes: u64,
    pub profile_dir: String,
}

pub async fn run(args: FootprintArgs) -> anyhow::Result<FootprintResult> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("idle.db");
    let interval = Interval::DEFAULT;

    let spawned_at = Timedate::now();
    let server = Server::start(&args.bin_dir, BrokerKind::Pricefeed, &db, "5s", 1000, &[]).await?;
    let feed = server.feed();
    // Subscribe as soon as the broker listens; the first tick comes at the next slot boundary.
    let (mut stream, mut buf) = mqtt::connect(
        feed.mqtt,
        "bench-footprint",
        None,
        60,
        Duration::from_secs(10),
    )
    .await?;
    mqtt::subscribe(&mut stream, &mut buf, "btc/#", Duration::from_secs(10)).await?;
    let (first, body) = tokio::time::timeout(
        interval.as_duration() * 3,
        mqtt::read_packet(&mut stream, &mut buf),
    )
    .await
    .context("no tick within three intervals")??;
    let first_tick_ms = feed.process.started.elapsed().as_secs_f64() * 1000.0;
    let received_at = Timedate::now();
    let publish = mqtt::parse_publish(first, &body)?;
    let tick = ticks::Tick::from_message(std::str::from_utf8(publish.topic)?, publish.payload)?;
    drop(stream);
    let after_slot_start_ms = received_at.unix_millis() - tick.timedate.unix_millis();

    let mosquitto = Mosquitto::launch(&[]).await?;
    // Let both settle (the subscriber's disconnect, Mosquitto's start) before the idle window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ours = CpuMeter::start(vec![feed.process.pid]);
    let peer = CpuMeter::start(vec![mosquitto.process.pid]);
    let started = Instant::now();
    tokio::time::sleep(args.idle).await;
    let idle_seconds = started.elapsed().as_secs_f64();
    let pricefeed_idle_cpu_percent = ours.percent();
    let mosquitto_idle_cpu_percent = peer.percent();
    let pid = feed.process.pid;
    let result = FootprintResult {
        idle_seconds,
        pricefeed_ready_ms: feed.ready_after.as_secs_f64() * 1000.0,
        pricefeed_first_tick_ms: first_tick_ms,
        first_tick_timedate: tick.timedate.to_string(),
        first_tick_retained: publish.retain,
        first_tick_after_slot_start_ms: after_slot_start_ms,
        first_slot_expected: interval.slot_at_or_after(spawned_at).to_string(),
        interval_ms: interval.as_millis(),
        pricefeed_idle_cpu_percent,
        pricefeed_rss_kb: meters::rss_kb(pid).unwrap_or(0),
        pricefeed_hwm_kb: meters::status_kb(pid, "VmHWM").unwrap_or(0),
        pricefeed_threads: meters::status_kb(pid, "Threads").unwrap_or(0),
        mosquitto_ready_ms: mosquitto.ready_after.as_secs_f64() * 1000.0,
        mosquitto_idle_cpu_percent,
        mosquitto_rss_kb: meters::rss_kb(mosquitto.process.pid).unwrap_or(0),
        binaries: ["pricefeed", "history-api", "pricesub"]
            .iter()
            .map(|b| (b.to_string(), meters::file_size(&args.bin_dir.join(b))))
            .collect(),
        mosquitto_binary_bytes: testkit::which("mosquitto").map_or(0, |p| meters::file_size(&p)),
        profile_dir: args.bin_dir.display().to_string(),
    };
    server.stop().await;
    mosquitto.process.stop(Duration::from_secs(5)).await;

    std::fs::create_dir_all(&args.out)?;
    report::write_json(&args.out.join("footprint.json"), &result)?;
    let table = table(&result);
    report::write_table(&args.out.join("footprint.md"), &table)?;
    println!("{}", table.markdown());
    Ok(result)
}

fn table(r: &FootprintResult) -> Table {
    let mut t = Table::new(
        &format!(
            "Footprint: idle with no clients over {:.0} s (pricefeed --source demo, 5 s interval)",
            r.idle_seconds
        ),
        &["measure", "pricefeed", "mosquitto (bare broker)", "ratio"],
    );
    t.row(vec![
        "idle CPU, % of one core".into(),
        fmt_f(r.pricefeed_idle_cpu_percent, 3),
        fmt_f(r.mosquitto_idle_cpu_percent, 3),
        report::ratio(r.pricefeed_idle_cpu_percent, r.mosquitto_idle_cpu_percent),
    ]);
    t.row(vec![
        "RSS, MB".into(),
        fmt_f(r.pricefeed_rss_kb as f64 / 1024.0, 1),
        fmt_f(r.mosquitto_rss_kb as f64 / 1024.0, 1),
        report::ratio(r.pricefeed_rss_kb as f64, r.mosquitto_rss_kb as f64),
    ]);
    t.row(vec![
        "start-up to listening, ms".into(),
        fmt_f(r.pricefeed_ready_ms, 0),
        fmt_f(r.mosquitto_ready_ms, 0),
        report::ratio(r.pricefeed_ready_ms, r.mosquitto_ready_ms),
    ]);
    t.row(vec![
        format!(
            "start-up to first tick, ms (slot {}, the first at or after start-up; received {} ms after the slot began; retained: {})",
            r.first_tick_timedate, r.first_tick_after_slot_start_ms, r.first_tick_retained
        ),
        fmt_f(r.pricefeed_first_tick_ms, 0),
        "—".into(),
        String::new(),
    ]);
    for (name, bytes) in &r.binaries {
        t.row(vec![
            format!("binary {name}, MB ({})", r.profile_dir),
            fmt_f(*bytes as f64 / 1e6, 1),
            if name == "pricefeed" {
                fmt_f(r.mosquitto_binary_bytes as f64 / 1e6, 2)
            } else {
                "—".into()
            },
            if name == "pricefeed" {
                report::ratio(*bytes as f64, r.mosquitto_binary_bytes as f64)
            } else {
                String::new()
            },
        ]);
    }
    t
}
