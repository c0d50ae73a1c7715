//! Scenario 2, the history API: `wrk` against `/v1/ticks` on a store of a year of 5 s ticks, and,
//! in the same run, against nginx serving a static file with the same bytes as our answer. One run
//! asks for a closed page with its own `ETag` in `If-None-Match`: what a `304` costs beside the
//! full answer (and beside nginx's `304` for the same file).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use history_store::HistoryStore;
use serde::Serialize;
use ticks::{Currency, Interval, Timedate};

use testkit::HistoryProcess;

use crate::harness::meters::{self, CpuMeter};
use crate::harness::report::{self, Table, fmt_f};
use crate::harness::servers::{Nginx, http_get, http_get_with};
use crate::harness::store::{self, GenReport};

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// Days of 5 s ticks in the generated store.
    #[arg(long, default_value_t = 365.0)]
    pub days: f64,
    /// Use this existing store instead of generating one (its generation is then not reported).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Where to generate the store (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Length of each wrk run.
    #[arg(long, default_value = "10s")]
    pub wrk_duration: String,
    /// Loaded runs per query and server, alternating history-api and nginx; each server's run
    /// with the median rate is reported. nginx's rate on this shared 2-core machine moves by a
    /// factor of two between runs of the same file, so one run of each makes a ratio by chance.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    #[arg(long, default_value_t = 2)]
    pub wrk_threads: usize,
    #[arg(long, default_value_t = 16)]
    pub wrk_connections: usize,
    /// Length of each single-connection wrk run (latency without queueing; 0s: skip).
    #[arg(long, default_value = "10s")]
    pub wrk_single_duration: String,
    /// On a shared machine: run wrk again (up to --attempts times in all) when other processes
    /// took more than this share of a core during it (percent).
    #[arg(long, default_value_t = 25.0)]
    pub max_other_cpu: f64,
    #[arg(long, default_value_t = 3)]
    pub attempts: usize,
    /// Repetitions of each query at the store level.
    #[arg(long, default_value_t = 50)]
    pub store_reps: usize,
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Wrk {
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: String,
    pub server_cpu_percent: f64,
    /// The machine's busy CPU minus the server's: wrk and anything else running.
    pub wrk_and_other_cpu_percent: f64,
    /// Other long-lived processes that used the CPU meanwhile (not wrk, not the server).
    pub other_top: Vec<String>,
    pub other_percent: f64,
    pub raw: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    pub name: String,
    pub path: String,
    pub ticks: usize,
    pub bytes: usize,
    pub store_median_ms: f64,
    pub store_p99_ms: f64,
    /// The run with the median rate of each server's rounds.
    pub ours: Wrk,
    pub nginx: Wrk,
    /// Every round's rate, in the order run.
    pub ours_rounds: Vec<f64>,
    pub nginx_rounds: Vec<f64>,
    /// `wrk -t1 -c1`: one request at a time.
    pub ours_single: Option<Wrk>,
    pub nginx_single: Option<Wrk>,
    pub ratio_rps: f64,
    /// Answered `304 Not Modified` (the client held the page), by both servers.
    pub not_modified: bool,
    /// Where history-api's answers to our wrk runs came from, per its `/metrics`:
    /// `pricefeed_history_answers_total` for cache, memory (the tail), blocks (older ticks held in
    /// memory) and store (SQLite).
    pub answered_from: AnsweredFrom,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AnsweredFrom {
    pub cache: u64,
    pub memory: u64,
    pub blocks: u64,
    pub store: u64,
    /// Requests answered `304 Not Modified` (`pricefeed_history_requests_total{status="304"}`).
    pub not_modified: u64,
}

impl AnsweredFrom {
    async fn read(api: std::net::SocketAddr) -> anyhow::Result<AnsweredFrom> {
        let (status, body) = http_get(api, "/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics: HTTP {status}");
        let text = String::from_utf8(body)?;
        let count = |source: &str| -> anyhow::Result<u64> {
            let prefix = format!("pricefeed_history_answers_total{{source=\"{source}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .context("no pricefeed_history_answers_total in /metrics")?
                .trim()
                .parse()
                .context("bad pricefeed_history_answers_total")
        };
        // Absent until the first 304.
        let not_modified = text
            .lines()
            .find_map(|l| l.strip_prefix("pricefeed_history_requests_total{status=\"304\"} "))
            .map_or(Ok(0), |n| n.trim().parse())
            .context("bad pricefeed_history_requests_total")?;
        Ok(AnsweredFrom {
            cache: count("cache")?,
            memory: count("memory")?,
            // Absent before the blocks existed: the harness also measures older servers.
            blocks: count("blocks").unwrap_or(0),
            store: count("store")?,
            not_modified,
        })
    }

    fn since(self, before: AnsweredFrom) -> AnsweredFrom {
        AnsweredFrom {
            cache: self.cache - before.cache,
            memory: self.memory - before.memory,
            blocks: self.blocks - before.blocks,
            store: self.store - before.store,
            not_modified: self.not_modified - before.not_modified,
        }
    }

    fn describe(self) -> String {
        let total = (self.cache + self.memory + self.blocks + self.store).max(1) as f64;
        let pct = |n: u64| 100.0 * n as f64 / total;
        format!(
            "{:.0}/{:.0}/{:.0}/{:.0}",
            pct(self.cache),
            pct(self.memory),
            pct(self.blocks),
            pct(self.store)
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryResult {
    pub generated: Option<GenReport>,
    pub store_file_bytes: u64,
    pub store_ticks: u64,
    pub bytes_per_tick: f64,
    pub wrk_threads: usize,
    pub wrk_connections: usize,
    pub wrk_duration: String,
    pub wrk_single_duration: String,
    pub rounds: usize,
    pub queries: Vec<QueryResult>,
}

pub async fn run(args: HistoryArgs) -> anyhow::Result<HistoryResult> {
    anyhow::ensure!(
        testkit::have("wrk"),
        "wrk is required (apt-get install -y wrk)"
    );
    let tmp = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::tempdir_in(dir)?
        }
        None => tempfile::tempdir()?,
    };
    let (db, generated) = match &args.db {
        Some(db) => (db.clone(), None),
        None => {
            let db = tmp.path().join("year.db");
            eprintln!("history: generating {} days of 5 s ticks", args.days);
            let r = store::generate(
                db.clone(),
                Duration::from_secs_f64(args.days * 86_400.0),
                Interval::DEFAULT,
                Timedate::now(),
                1,
                100_000,
            )
            .await?;
            eprintln!("history: {}", serde_json::to_string(&r)?);
            (db, Some(r))
        }
    };
    let store = HistoryStore::open(&db)?;
    let (first, last) = store
        .read(move |s| s.bounds(Currency::USD))
        .await?
        .context("the store holds no USD tick")?;
    let (first, last) = (first.timedate, last.timedate);
    let store_ticks = store.read(|s| s.tick_count()).await?;
    let store_file_bytes = meters::file_size(&db);

    let hour_ago = last.saturating_sub(Duration::from_secs(3600));
    let day_ago = last
        .saturating_sub(Duration::from_secs(86_400))
        .next(Interval::DEFAULT);
    let hour_ticks = 2 * (last.duration_since(hour_ago).as_secs() / 5 + 1) as usize;
    let queries = [
        (
            "last hour",
            hour_ago,
            None,
            format!("/v1/ticks?since={hour_ago}&currency=USD,EUR"),
        ),
        (
            "last day (limit=50000)",
            day_ago,
            Some(50_000),
            format!("/v1/ticks?since={day_ago}&currency=USD,EUR&limit=50000"),
        ),
        (
            "deep: start of the store, same size as last hour",
            first,
            Some(hour_ticks),
            format!("/v1/ticks?since={first}&currency=USD,EUR&limit={hour_ticks}"),
        ),
    ];

    // Store level: the reads one answer makes (limit + 1 per currency, as the handler asks).
    let mut store_times = Vec::new();
    for (_, since, limit, _) in &queries {
        let limit = limit.unwrap_or(history_api::DEFAULT_LIMIT) + 1;
        let mut us = Vec::with_capacity(args.store_reps);
        for _ in 0..args.store_reps.max(1) {
            let started = Instant::now();
            let since = *since;
            store
                .read(move |s| {
                    for c in Currency::ALL {
                        s.ticks_since(c, since, limit)?;
                    }
                    Ok(())
                })
                .await?;
            us.push(started.elapsed().as_micros() as u64);
        }
        us.sort_unstable();
        store_times.push((
            report::percentile_ms(&us, 50.0),
            report::percentile_ms(&us, 99.0),
        ));
    }
    drop(store);

    // Our answers, saved as nginx's files. wrk is one client address asking as fast as it can:
    // this measures what the server answers, not one client's share of it, so the per-address
    // rate limit (which would answer 429 past its burst) is off, as nginx has none.
    let api = HistoryProcess::launch(
        &args.bin_dir,
        &db,
        &["--interval", "5s", "--http-rate-limit", "0"],
    )
    .await?;
    let root = tmp.path().join("www");
    std::fs::create_dir_all(&root)?;
    let mut bodies = Vec::new();
    for (i, (name, _, _, path)) in queries.iter().enumerate() {
        let (status, body) = http_get(api.addr, path).await?;
        if status != 200 {
            bail!("{name}: HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        let (_, again) = http_get(api.addr, path).await?;
        anyhow::ensure!(
            again == body,
            "{name}: two answers differ; the store is changing"
        );
        let parsed: serde_json::Value = serde_json::from_slice(&body)?;
        let ticks: usize = ["USD", "EUR"]
            .iter()
            .map(|c| parsed["ticks"][c].as_array().map_or(0, Vec::len))
            .sum();
        std::fs::write(root.join(format!("q{i}.json")), &body)?;
        bodies.push((body, ticks));
    }
    let nginx = Nginx::start(&root).await?;
    let nginx_addr: std::net::SocketAddr = ([127, 0, 0, 1], nginx.port).into();
    for (i, (body, _)) in bodies.iter().enumerate() {
        let (status, same) = http_get(nginx_addr, &format!("/q{i}.json")).await?;
        anyhow::ensure!(
            status == 200 && &same == body,
            "nginx does not serve the same bytes"
        );
    }
    let nginx_pids = meters::with_children(nginx.process.pid);

    let mut runs: Vec<Run> = queries
        .iter()
        .enumerate()
        .map(|(i, (name, _, _, path))| Run {
            name: name.to_string(),
            path: path.clone(),
            ours_url: format!("http://{}{path}", api.addr),
            script: None,
            nginx_script: None,
            same_as: i,
            held: None,
        })
        .collect();
    // The deep page is closed (the limit cut it long before the newest tick): a client or a cache
    // that holds it asks with its ETag and gets a 304. nginx answers the same for its file, with
    // its own ETag.
    let deep = 2;
    let deep_path = &queries[deep].3;
    let (status, fields, full) = http_get_with(api.addr, deep_path, &[]).await?;
    anyhow::ensure!(
        status == 200 && full == bodies[deep].0,
        "deep: HTTP {status}"
    );
    let field = |fields: &[(String, String)], name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .with_context(|| format!("no {name} header"))
    };
    let control = field(&fields, "cache-control")?;
    anyhow::ensure!(control.contains("immutable"), "deep: not closed: {control}");
    let ours_held = format!("If-None-Match: {}", field(&fields, "etag")?);
    let (_, nginx_fields, _) = http_get_with(nginx_addr, &format!("/q{deep}.json"), &[]).await?;
    let nginx_held = format!("If-None-Match: {}", field(&nginx_fields, "etag")?);
    for (addr, path, held) in [
        (api.addr, deep_path.clone(), &ours_held),
        (nginx_addr, format!("/q{deep}.json"), &nginx_held),
    ] {
        let (status, _, body) = http_get_with(addr, &path, std::slice::from_ref(held)).await?;
        anyhow::ensure!(
            status == 304 && body.is_empty(),
            "{path} with {held}: HTTP {status}, {} bytes",
            body.len()
        );
    }
    runs.push(Run {
        name: "deep, 304 (If-None-Match holds the page)".into(),
        path: format!("{deep_path} + If-None-Match"),
        ours_url: format!("http://{}{deep_path}", api.addr),
        script: None,
        nginx_script: None,
        same_as: deep,
        held: Some((ours_held, nginx_held)),
    });
    // The answers above are cached by history-api (same URL, unchanged store). Defeat the cache:
    // each request asks for a different `since` (1,000 values, one second apart), so every answer
    // is computed; nginx serves the file of the same query. Near the end of the store the answers
    // come from the tail history-api holds in memory; at the start of the store, from the blocks
    // of older ticks it holds once a question has read them. The last run defeats those too:
    // 1,000 starts an hour apart, more blocks than it keeps, so every page is read from SQLite.
    let hour_ago_s = hour_ago.unix_millis() / 1000;
    let first_s = first.unix_millis() / 1000 + 1000;
    let spread_s = first.unix_millis() / 1000 + 3600;
    let defeated = [
        (
            "last hour, cache defeated (1,000 distinct since values, up to 1,000 s earlier)",
            format!("currency=USD,EUR&since=\" .. ({hour_ago_s} - n % 1000)"),
            format!("/v1/ticks?currency=USD,EUR&since=<{hour_ago_s} - n % 1000>"),
            0,
        ),
        (
            "deep, cache defeated (1,000 distinct since values at the start of the store)",
            format!("currency=USD,EUR&limit={hour_ticks}&since=\" .. ({first_s} - n % 1000)"),
            format!("/v1/ticks?currency=USD,EUR&limit={hour_ticks}&since=<{first_s} - n % 1000>"),
            2,
        ),
        (
            "deep, cache and blocks defeated (1,000 since values an hour apart over the store)",
            format!(
                "currency=USD,EUR&limit={hour_ticks}&since=\" .. ({spread_s} + 3600 * (n % 1000))"
            ),
            format!(
                "/v1/ticks?currency=USD,EUR&limit={hour_ticks}&since=<{spread_s} + 3600 * (n % 1000)>"
            ),
            2,
        ),
    ];
    // nginx gets the same requests, to its file of the same query (it ignores the query
    // string): wrk's Lua work per request is then the same in both runs, on the same two cores.
    for (i, (name, lua_query, path, same_as)) in defeated.into_iter().enumerate() {
        let script = |server: &str, target: &str| -> anyhow::Result<PathBuf> {
            let script = tmp.path().join(format!("uncached{i}-{server}.lua"));
            std::fs::write(
                &script,
                format!(
                    "local n = 0\n\
                     request = function()\n\
                     \x20 n = n + 1\n\
                     \x20 return wrk.format(\"GET\", \"{target}?{lua_query})\n\
                     end\n"
                ),
            )?;
            Ok(script)
        };
        runs.push(Run {
            name: name.to_string(),
            path,
            ours_url: format!("http://{}/", api.addr),
            script: Some(script("ours", "/v1/ticks")?),
            nginx_script: Some(script("nginx", &format!("/q{same_as}.json"))?),
            same_as,
            held: None,
        });
    }

    let mut results = Vec::new();
    for run in runs {
        let Run {
            name,
            path,
            ours_url,
            script,
            nginx_script,
            same_as,
            held,
        } = run;
        eprintln!("history: wrk {name}");
        let nginx_url = match nginx_script {
            Some(_) => format!("http://{nginx_addr}/"),
            None => format!("http://{nginx_addr}/q{same_as}.json"),
        };
        let load = (
            args.wrk_threads,
            args.wrk_connections,
            args.wrk_duration.as_str(),
        );
        let single = (1, 1, args.wrk_single_duration.as_str());
        let single_too = !args.wrk_single_duration.starts_with('0');
        let script = script.as_deref();
        let ours_pids = vec![api.process.pid];
        let (ours_headers, nginx_headers): (Vec<String>, Vec<String>) = match &held {
            Some((ours, nginx)) => (vec![ours.clone()], vec![nginx.clone()]),
            None => Default::default(),
        };
        let ours_req = (script, ours_headers.as_slice(), ours_url.as_str());
        let nginx_req = (
            nginx_script.as_deref(),
            nginx_headers.as_slice(),
            nginx_url.as_str(),
        );

        let before = AnsweredFrom::read(api.addr).await?;
        let (mut ours_rounds, mut nginx_rounds) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds.max(1) {
            ours_rounds.push(wrk_script(args.retry(), ours_req, load, ours_pids.clone()).await?);
            nginx_rounds.push(wrk_script(args.retry(), nginx_req, load, nginx_pids.clone()).await?);
        }
        let ours_single = if single_too {
            Some(wrk_script(args.retry(), ours_req, single, ours_pids).await?)
        } else {
            None
        };
        let answered_from = AnsweredFrom::read(api.addr).await?.since(before);
        if held.is_some() {
            // wrk counts only 4xx and 5xx as errors: make sure every answer was a 304.
            let not_modified = answered_from.not_modified;
            let requests = ours_rounds.iter().map(|w| w.requests).sum::<u64>()
                + ours_single.as_ref().map_or(0, |w| w.requests);
            anyhow::ensure!(
                not_modified >= requests,
                "{name}: {not_modified} answers were 304 of {requests} requests"
            );
        }
        let nginx_single = if single_too {
            Some(wrk_script(args.retry(), nginx_req, single, nginx_pids.clone()).await?)
        } else {
            None
        };
        let rates = |runs: &[Wrk]| runs.iter().map(|w| w.requests_per_second).collect();
        let (ours_rates, nginx_rates): (Vec<f64>, Vec<f64>) =
            (rates(&ours_rounds), rates(&nginx_rounds));
        let ours = median_run(ours_rounds);
        let peer = median_run(nginx_rounds);
        // A 304 carries no body: what it costs is measured against the full page's row.
        let (ticks, bytes) = match held {
            Some(_) => (0, 0),
            None => (bodies[same_as].1, bodies[same_as].0.len()),
        };
        let (store_median_ms, store_p99_ms) = store_times[same_as];
        results.push(QueryResult {
            name,
            path,
            ticks,
            bytes,
            store_median_ms,
            store_p99_ms,
            ratio_rps: ours.requests_per_second / peer.requests_per_second,
            not_modified: held.is_some(),
            ours,
            nginx: peer,
            ours_rounds: ours_rates,
            nginx_rounds: nginx_rates,
            ours_single,
            nginx_single,
            answered_from,
        });
    }
    api.process.stop(Duration::from_secs(20)).await;
    nginx.process.stop(Duration::from_secs(5)).await;

    let result = HistoryResult {
        bytes_per_tick: store_file_bytes as f64 / store_ticks as f64,
        generated,
        store_file_bytes,
        store_ticks,
        wrk_threads: args.wrk_threads,
        wrk_connections: args.wrk_connections,
        wrk_duration: args.wrk_duration.clone(),
        wrk_single_duration: args.wrk_single_duration.clone(),
        rounds: args.rounds.max(1),
        queries: results,
    };
    std::fs::create_dir_all(&args.out)?;
    report::write_json(&args.out.join("history.json"), &result)?;
    let mut raw = String::new();
    for q in &result.queries {
        raw.push_str(&format!(
            "## {} (history-api)\n{}\n## {} (nginx)\n{}\n",
            q.name, q.ours.raw, q.name, q.nginx.raw
        ));
        if let (Some(a), Some(b)) = (&q.ours_single, &q.nginx_single) {
            raw.push_str(&format!(
                "## {} (history-api, 1 connection)\n{}\n## {} (nginx, 1 connection)\n{}\n",
                q.name, a.raw, q.name, b.raw
            ));
        }
    }
    std::fs::write(args.out.join("history-wrk.txt"), raw)?;
    let (store_table, table) = tables(&result);
    report::write_table(&args.out.join("history.md"), &table)?;
    report::write_table(&args.out.join("store.md"), &store_table)?;
    println!("{}\n{}", store_table.markdown(), table.markdown());
    Ok(result)
}

/// One wrk run of the history scenario.
struct Run {
    name: String,
    /// The path it reports.
    path: String,
    ours_url: String,
    /// The wrk scripts that write our requests and nginx's, if any.
    script: Option<PathBuf>,
    nginx_script: Option<PathBuf>,
    /// Which query's file nginx serves beside it.
    same_as: usize,
    /// The `If-None-Match` header line sent to us and to nginx: each names the page it serves.
    held: Option<(String, String)>,
}

/// What wrk asks: its Lua script if any, extra header lines, the URL.
type Asked<'a> = (Option<&'a std::path::Path>, &'a [String], &'a str);

/// How often to measure again while other processes on this shared machine are busy.
#[derive(Debug, Clone, Copy)]
struct Retry {
    attempts: usize,
    max_other_cpu: f64,
}

impl HistoryArgs {
    fn retry(&self) -> Retry {
        Retry {
            attempts: self.attempts,
            max_other_cpu: self.max_other_cpu,
        }
    }
}

/// Of runs of the same load, the one with the median rate (the higher of the middle two).
fn median_run(mut runs: Vec<Wrk>) -> Wrk {
    runs.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
    let middle = runs.len() / 2;
    runs.swap_remove(middle)
}

/// [`wrk_script_once`], measured again (up to `retry.attempts` times in all) while other processes
/// take more than `retry.max_other_cpu` percent of a core.
async fn wrk_script(
    retry: Retry,
    asked: Asked<'_>,
    load: (usize, usize, &str),
    pids: Vec<u32>,
) -> anyhow::Result<Wrk> {
    let mut attempt = 1;
    loop {
        let w = wrk_script_once(asked, load, pids.clone()).await?;
        if w.other_percent <= retry.max_other_cpu || attempt >= retry.attempts {
            return Ok(w);
        }
        eprintln!(
            "history: other processes took {:.0}% of a core ({:?}); measuring again in 15 s",
            w.other_percent, w.other_top
        );
        attempt += 1;
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
}

/// One wrk run with (threads, connections, duration).
async fn wrk_script_once(
    (script, headers, url): Asked<'_>,
    (threads, connections, duration): (usize, usize, &str),
    pids: Vec<u32>,
) -> anyhow::Result<Wrk> {
    let cpu = CpuMeter::start(pids.clone());
    let machine = meters::MachineMeter::start();
    let others = meters::OthersMeter::start();
    let mut wrk_args = vec![
        format!("-t{threads}"),
        format!("-c{connections}"),
        format!("-d{duration}"),
        "--timeout".into(),
        "10s".into(),
        "--latency".into(),
    ];
    if let Some(script) = script {
        wrk_args.extend(["-s".into(), script.display().to_string()]);
    }
    for header in headers {
        wrk_args.extend(["-H".into(), header.clone()]);
    }
    wrk_args.push(url.to_string());
    let raw = testkit::command_stdout("wrk", &wrk_args, Duration::from_secs(600)).await?;
    let server_cpu_percent = cpu.percent();
    let machine_percent = machine.percent();
    let mut w = parse_wrk(&raw).with_context(|| format!("cannot read wrk's output:\n{raw}"))?;
    w.server_cpu_percent = server_cpu_percent;
    w.wrk_and_other_cpu_percent = machine_percent - server_cpu_percent;
    let mut ours = pids;
    ours.push(std::process::id());
    w.other_percent = others.sum(&ours);
    w.other_top = others.top(&ours, 3);
    Ok(w)
}

/// A wrk duration such as `812.00us`, `3.21ms`, `1.02s`, in milliseconds.
fn wrk_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = text.split_at(split);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

fn parse_wrk(raw: &str) -> Option<Wrk> {
    let mut w = Wrk {
        requests_per_second: f64::NAN,
        p50_ms: f64::NAN,
        p90_ms: f64::NAN,
        p99_ms: f64::NAN,
        requests: 0,
        non_2xx: 0,
        socket_errors: String::new(),
        server_cpu_percent: f64::NAN,
        wrk_and_other_cpu_percent: f64::NAN,
        other_top: Vec::new(),
        other_percent: 0.0,
        raw: raw.to_string(),
    };
    for line in raw.lines() {
        let line = line.trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Requests/sec:") => w.requests_per_second = words.next()?.parse().ok()?,
            Some("50%") => w.p50_ms = wrk_ms(words.next()?)?,
            Some("90%") => w.p90_ms = wrk_ms(words.next()?)?,
            Some("99%") => w.p99_ms = wrk_ms(words.next()?)?,
            Some("Non-2xx") => w.non_2xx = line.rsplit(' ').next()?.parse().ok()?,
            Some("Socket") => w.socket_errors = line.to_string(),
            Some(n) if line.contains(" requests in ") => w.requests = n.parse().ok()?,
            _ => {}
        }
    }
    w.requests_per_second.is_finite().then_some(w)
}

/// The lowest and highest of some rates.
fn spread(rates: &[f64]) -> String {
    let low = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let high = rates.iter().copied().fold(0.0, f64::max);
    format!("{}–{}", fmt_f(low, 0), fmt_f(high, 0))
}

fn single(w: &Option<Wrk>) -> String {
    w.as_ref().map_or("—".into(), |w| {
        format!("{} / {}", fmt_f(w.p50_ms, 2), fmt_f(w.p99_ms, 2))
    })
}

fn tables(r: &HistoryResult) -> (Table, Table) {
    let mut store = Table::new(
        "History store",
        &[
            "ticks",
            "generation s",
            "ticks/s written",
            "file MB",
            "bytes/tick",
            "last-hour query at store level, median ms",
            "p99 ms",
        ],
    );
    let hour = r.queries.first();
    store.row(vec![
        r.store_ticks.to_string(),
        r.generated
            .as_ref()
            .map_or("(existing store)".into(), |g| fmt_f(g.seconds, 1)),
        r.generated
            .as_ref()
            .map_or("".into(), |g| fmt_f(g.ticks_per_second, 0)),
        fmt_f(r.store_file_bytes as f64 / 1e6, 1),
        fmt_f(r.bytes_per_tick, 1),
        hour.map_or("n/a".into(), |q| fmt_f(q.store_median_ms, 2)),
        hour.map_or("n/a".into(), |q| fmt_f(q.store_p99_ms, 2)),
    ]);
    let mut t = Table::new(
        &format!(
            "History API vs nginx (same bytes): wrk -t{} -c{} -d{} --latency, {} rounds alternating, the median round of each; then wrk -t1 -c1 -d{}",
            r.wrk_threads, r.wrk_connections, r.wrk_duration, r.rounds, r.wrk_single_duration
        ),
        &[
            "query",
            "ticks",
            "bytes",
            "store ms",
            "history-api req/s",
            "nginx req/s",
            "ratio",
            "rounds' req/s, history-api / nginx: min–max",
            "history-api p50 ms",
            "history-api p99 ms",
            "nginx p99 ms",
            "history-api CPU %",
            "nginx CPU %",
            "wrk+other CPU % (ours/nginx runs)",
            "errors (ours/nginx)",
            "1 connection: history-api p50 / p99 ms",
            "1 connection: nginx p50 / p99 ms",
            "answered from cache/memory/blocks/store %",
        ],
    );
    for q in &r.queries {
        t.row(vec![
            q.name.clone(),
            q.ticks.to_string(),
            q.bytes.to_string(),
            fmt_f(q.store_median_ms, 2),
            fmt_f(q.ours.requests_per_second, 0),
            fmt_f(q.nginx.requests_per_second, 0),
            report::ratio(q.ours.requests_per_second, q.nginx.requests_per_second),
            format!("{} / {}", spread(&q.ours_rounds), spread(&q.nginx_rounds)),
            fmt_f(q.ours.p50_ms, 2),
            fmt_f(q.ours.p99_ms, 2),
            fmt_f(q.nginx.p99_ms, 2),
            fmt_f(q.ours.server_cpu_percent, 0),
            fmt_f(q.nginx.server_cpu_percent, 0),
            format!(
                "{}/{}",
                fmt_f(q.ours.wrk_and_other_cpu_percent, 0),
                fmt_f(q.nginx.wrk_and_other_cpu_percent, 0)
            ),
            format!("{}/{}", q.ours.non_2xx, q.nginx.non_2xx),
            single(&q.ours_single),
            single(&q.nginx_single),
            q.answered_from.describe(),
        ]);
    }
    (store, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let raw = "Running 2s test @ http://127.0.0.1:1/x
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  300.00us   5.00ms   90.00%
    Req/Sec     6.00k   100.00     6.20k    80.00%
  Latency Distribution
     50%  812.00us
     75%    1.00ms
     90%    2.00ms
     99%    1.02s
  24000 requests in 2.00s, 1.00GB read
  Non-2xx or 3xx responses: 3
Requests/sec:  12000.50
Transfer/sec:    500.00MB
";
        let w = parse_wrk(raw).unwrap();
        assert_eq!(w.requests_per_second, 12000.5);
        assert_eq!(w.p50_ms, 0.812);
        assert_eq!(w.p99_ms, 1020.0);
        assert_eq!(w.requests, 24000);
        assert_eq!(w.non_2xx, 3);
    }
}
