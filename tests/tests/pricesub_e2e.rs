//! `pricesub` as a user runs it, against the built `pricefeed`, checked against `curl` on history.

use std::collections::BTreeMap;
use std::time::Duration;

use testkit::sse::curl_history_paged;
use testkit::{FeedProcess, Process, free_port, run_command};
use ticks::{Currency, Tick, Timedate};
use tokio::io::AsyncBufReadExt;

const WAIT: Duration = Duration::from_secs(40);

/// Parses pricesub's stdout into ticks per currency, checking each line is exact.
fn printed(stdout: &str) -> BTreeMap<Currency, Vec<Tick>> {
    let mut out: BTreeMap<Currency, Vec<Tick>> = BTreeMap::new();
    for line in stdout.lines() {
        let (topic, payload) = line.split_once(' ').unwrap();
        let tick = Tick::from_message(topic, payload.as_bytes()).unwrap();
        assert_eq!(line, tick.line());
        out.entry(tick.currency).or_default().push(tick);
    }
    out
}

/// What pricesub printed equals what history holds over the same range.
fn assert_same(printed: &BTreeMap<Currency, Vec<Tick>>, history: &BTreeMap<Currency, Vec<Tick>>) {
    for (c, ticks) in printed {
        let last = ticks.last().unwrap().timedate;
        let held: Vec<Tick> = history[c]
            .iter()
            .filter(|t| t.timedate <= last)
            .copied()
            .collect();
        assert_eq!(ticks, &held, "{c}: printed vs history");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replays_history_then_follows_live_and_survives_a_feed_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let (mqtt_port, http_port) = (free_port(), free_port());
    let mqtt = format!("127.0.0.1:{mqtt_port}");
    let http = format!("127.0.0.1:{http_port}");
    let feed_args = |db: &str| {
        vec![
            "--source".to_string(),
            "demo".into(),
            "--interval".into(),
            "250ms".into(),
            "--mqtt-listen".into(),
            mqtt.clone(),
            "--http-listen".into(),
            http.clone(),
            "--db".into(),
            db.to_string(),
        ]
    };
    let args = feed_args(db.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let since = Timedate::now();
    let mut feed = Process::spawn("pricefeed", &args);
    feed.wait_for_log("pricefeed running", WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let broker = format!("mqtt://{mqtt}");
    let history = format!("http://{http}");
    let since_arg = since.to_string();
    let sub = Process::spawn(
        "pricesub",
        &[
            "--broker",
            &broker,
            "--history",
            &history,
            "--since",
            &since_arg,
        ],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The feed goes away for a while (the client's network path with it) and comes back.
    assert!(feed.terminate(WAIT).await.success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut feed = Process::spawn("pricefeed", &args);
    feed.wait_for_log("pricefeed running", WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;

    let pid = sub.child.id().unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let mut sub = sub;
    let status = tokio::time::timeout(WAIT, sub.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "Ctrl-C ends pricesub cleanly: {status:?}");
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(sub.child.stdout.as_mut().unwrap(), &mut stdout)
        .await
        .unwrap();
    let printed = printed(&stdout);
    let history = curl_history_paged(&http, since, 50).await;
    assert_same(&printed, &history);
    // It followed live after the restart: ticks from the second run were printed.
    let restarted_at = history[&Currency::USD]
        .windows(2)
        .find(|w| w[1].timedate.unix_millis() - w[0].timedate.unix_millis() > 250)
        .map(|w| w[1].timedate)
        .expect("the restart left a hole in history");
    assert!(printed[&Currency::USD].last().unwrap().timedate > restarted_at);
    // The hole was reported, with the reason history gives.
    assert!(
        sub.log()
            .iter()
            .any(|l| l.contains("gap on btc/USD") && l.contains("publisher_down")),
        "{:?}",
        sub.log()
    );
    assert!(feed.terminate(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_head_and_bad_input_end_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let feed = FeedProcess::start(
        &dir.path().join("feed.db"),
        &["--source", "demo", "--interval", "250ms"],
    )
    .await;
    let since = Timedate::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bin = testkit::binary("pricesub");
    let bin = bin.to_str().unwrap();
    let broker = format!("mqtt://{}", feed.mqtt);
    let history = format!("http://{}", feed.http);
    let since_arg = since.to_string();

    let (status, stdout, stderr) = run_command(
        bin,
        &[
            "--broker",
            &broker,
            "--history",
            &history,
            "--since",
            &since_arg,
            "-C",
            "6",
            "--currency",
            "EUR",
        ],
        WAIT,
    )
    .await;
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6);
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("btc/EUR {\"timedate\":"))
    );

    // A closed stdout ends it quietly with success.
    let (status, stdout, stderr) = run_command(
        "bash",
        &[
            "-c",
            &format!(
                "set -o pipefail; {bin} --broker {broker} --history {history} --since 1m | head -3"
            ),
        ],
        WAIT,
    )
    .await;
    assert!(status.success(), "pricesub | head -3: {stderr}");
    assert_eq!(stdout.lines().count(), 3);
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A write error other than a closed pipe is an error, not a silent success.
    let (status, _, stderr) = run_command(
        "bash",
        &[
            "-c",
            &format!("{bin} --broker {broker} --history {history} --since 1m -C 2 > /dev/full"),
        ],
        WAIT,
    )
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot write the ticks"), "{stderr}");

    // A since in the future prints nothing older than it.
    let future = Timedate::now().saturating_add(Duration::from_secs(2));
    let future_arg = future.to_string();
    let (status, stdout, stderr) = run_command(
        bin,
        &[
            "--broker",
            &broker,
            "--history",
            &history,
            "--since",
            &future_arg,
            "-C",
            "2",
        ],
        WAIT,
    )
    .await;
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 2);
    for line in stdout.lines() {
        let (topic, payload) = line.split_once(' ').unwrap();
        let tick = Tick::from_message(topic, payload.as_bytes()).unwrap();
        assert!(tick.timedate >= future, "{line} is before --since {future}");
    }

    for (args, needle) in [
        (vec!["--since", "garbage"], "--since \"garbage\""),
        (vec!["--currency", "GBP"], "GBP"),
        (
            vec!["--broker", "mqtt://127.0.0.1:1", "--start-within", "1s"],
            "cannot subscribe",
        ),
        (
            vec![
                "--history",
                "http://127.0.0.1:1",
                "--since",
                "1m",
                "--start-within",
                "1s",
            ],
            "cannot backfill",
        ),
    ] {
        let mut all = args.clone();
        if !all.contains(&"--broker") {
            all.extend(["--broker", broker.as_str()]);
        }
        let (status, _, stderr) = run_command(bin, &all, WAIT).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
    assert!(feed.process.terminate(WAIT).await.success());
}

#[tokio::test]
async fn curl_on_garbage_since_is_a_400_that_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let feed = FeedProcess::start(&dir.path().join("feed.db"), &["--source", "demo"]).await;
    let url = format!("http://{}/v1/ticks?since=garbage", feed.http);
    let (status, body, _) = run_command("curl", &["-sS", "-w", "\n%{http_code}", &url], WAIT).await;
    assert!(status.success());
    let (json, code) = body.rsplit_once('\n').unwrap();
    assert_eq!(code, "400");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["parameter"], "since");
    assert!(v["message"].as_str().unwrap().contains("garbage"));
    assert!(feed.process.terminate(WAIT).await.success());
}

/// A systemd stop or `docker stop` sends SIGTERM: pricesub ends as cleanly as on Ctrl-C, with
/// status 0 and every line it printed whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_pricesub_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let feed = FeedProcess::start(
        &dir.path().join("feed.db"),
        &["--source", "demo", "--interval", "250ms"],
    )
    .await;
    let broker = format!("mqtt://{}", feed.mqtt);
    let history = format!("http://{}", feed.http);
    let mut sub = Process::spawn(
        "pricesub",
        &["--broker", &broker, "--history", &history, "--since", "1m"],
    );
    // Running and printing: the first line is out.
    let mut stdout = tokio::io::BufReader::new(sub.child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("a first tick within the wait")
        .unwrap()
        .unwrap();
    assert!(first.starts_with("btc/"), "{first}");
    let status = sub.terminate(WAIT).await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM ends pricesub with 0: {status}"
    );
    while let Some(line) = stdout.next_line().await.unwrap() {
        let (topic, payload) = line.split_once(' ').unwrap();
        Tick::from_message(topic, payload.as_bytes()).unwrap();
    }
    assert!(feed.process.terminate(WAIT).await.success());
}

/// A source outage reaches pricesub as it happens: the publisher announces each gap on
/// `pricefeed/gaps`, so the gap is reported while the sources are still down, not only when the
/// next tick reveals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_reported_while_it_lasts() {
    let kraken = testkit::FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let feed = FeedProcess::kraken(&dir.path().join("feed.db"), &kraken, "500ms").await;
    let broker = format!("mqtt://{}", feed.mqtt);
    let history = format!("http://{}", feed.http);
    let mut sub = Process::spawn("pricesub", &["--broker", &broker, "--history", &history]);
    let mut stdout = tokio::io::BufReader::new(sub.child.stdout.take().unwrap()).lines();
    // Following live.
    tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("a first tick")
        .unwrap()
        .unwrap();
    kraken.set_mode(testkit::Mode::Status(503));
    let line = sub
        .wait_for_log("pricesub: gap on btc/USD", WAIT)
        .await
        .unwrap();
    assert!(line.ends_with("(sources_unavailable)"), "{line}");
    let from: Timedate = line
        .split("no ticks from ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    // Reported while still down: what pricesub printed meanwhile is older than the gap.
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(600), stdout.next_line())
        .await
        .unwrap_or(Ok(None))
    {
        let (topic, payload) = line.split_once(' ').unwrap();
        let tick = Tick::from_message(topic, payload.as_bytes()).unwrap();
        assert!(
            tick.timedate < from,
            "{line} printed during the outage from {from}"
        );
    }
    kraken.set_mode(testkit::Mode::Serve);
    tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("ticks again after the outage")
        .unwrap()
        .unwrap();
    assert!(sub.terminate(WAIT).await.success());
    assert!(feed.process.terminate(WAIT).await.success());
}
