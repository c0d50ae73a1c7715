//! The built `pricefeed` binary as a user runs it, watched with Debian's `mosquitto_sub`.

use std::time::Duration;

use testkit::{
    FeedProcess, FixtureServer, Mosquitto, Process, assert_refused, log_field, run_command,
};
use ticks::{Interval, Tick};

const WAIT: Duration = Duration::from_secs(30);

fn require(program: &str) {
    assert!(
        testkit::have(program),
        "{program} is required (apt-get install mosquitto mosquitto-clients); .ci/run installs it"
    );
}

/// `mosquitto_sub -v` lines: `topic payload`.
async fn mosquitto_sub(port: u16, args: &[&str]) -> Vec<String> {
    require("mosquitto_sub");
    let port = port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-v", "-W", "25"];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = run_command("mosquitto_sub", &all, WAIT).await;
    assert!(status.success(), "mosquitto_sub {all:?} failed: {stderr}");
    stdout.lines().map(str::to_string).collect()
}

/// Parses a `mosquitto_sub -v` line into an exact, on-grid tick.
fn tick(line: &str, interval: Interval) -> Tick {
    let (topic, payload) = line.split_once(' ').unwrap();
    let tick =
        Tick::from_message(topic, payload.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(payload, tick.payload(), "exact payload: {line}");
    assert!(interval.is_slot_start(tick.timedate), "on the grid: {line}");
    tick
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_sees_exact_ticks_retained_ticks_and_a_clean_sigterm() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let feed = FeedProcess::kraken(&dir.path().join("feed.db"), &kraken, "500ms").await;
    let port = feed.mqtt.port();
    let interval: Interval = "500ms".parse().unwrap();

    let lines = mosquitto_sub(port, &["-t", "btc/#", "-C", "6"]).await;
    let ticks: Vec<Tick> = lines.iter().map(|l| tick(l, interval)).collect();
    assert!(lines.iter().any(|l| l.starts_with("btc/USD ")));
    assert!(lines.iter().any(|l| l.starts_with("btc/EUR ")));
    for t in &ticks {
        let expected = match t.currency {
            ticks::Currency::USD => "77726.1",
            ticks::Currency::EUR => "68644.2",
        };
        assert_eq!(t.price.to_string(), expected);
    }

    // `btc/+` and MQTT 5 work too.
    let plus = mosquitto_sub(port, &["-t", "btc/+", "-C", "2", "-V", "mqttv5"]).await;
    assert_eq!(plus.len(), 2);
    for l in &plus {
        tick(l, interval);
    }

    // A late subscriber gets the retained tick at once, and only ticks live under btc/.
    let retained = mosquitto_sub(port, &["-t", "btc/EUR", "-C", "1", "--retained-only"]).await;
    assert_eq!(retained.len(), 1);
    assert!(retained[0].starts_with("btc/EUR {\"timedate\":"));

    // An anonymous client cannot overwrite the price every display shows.
    let (status, _, _) = run_command(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "btc/USD",
            "-r",
            "-q",
            "1",
            "-m",
            r#"{"timedate":"2000-01-01T00:00:00Z","price":1}"#,
        ],
        WAIT,
    )
    .await;
    let _ = status; // the broker drops the publish and may close the connection; either is fine
    let after = mosquitto_sub(port, &["-t", "btc/USD", "-C", "1", "--retained-only"]).await;
    assert!(
        !after[0].contains("2000-01-01"),
        "the retained price is still ours: {after:?}"
    );

    // Operators see it: readiness, and metrics counting what was published.
    let (_, ready, _) = run_command(
        "curl",
        &["-sS", &format!("http://{}/readyz", feed.http)],
        WAIT,
    )
    .await;
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["broker"], "connected");
    let (_, metrics, _) = run_command(
        "curl",
        &["-sS", &format!("http://{}/metrics", feed.http)],
        WAIT,
    )
    .await;
    let published = metrics
        .lines()
        .find(|l| l.starts_with(r#"pricefeed_ticks_published_total{currency="USD"}"#))
        .unwrap_or_else(|| panic!("no USD counter in {metrics}"));
    let count: f64 = published.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3.0, "{published}");

    let status = feed.process.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_broker_mode_against_debian_mosquitto() {
    require("mosquitto");
    let mosquitto = Mosquitto::start().await;
    let coindesk = FixtureServer::coindesk().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let broker = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let url = format!("coindesk={}", coindesk.url());
    let mut feed = Process::spawn(
        "pricefeed",
        &[
            "--broker",
            &broker,
            "--broker-password",
            &mosquitto.password,
            "--http-listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
            "--interval",
            "500ms",
            "--source",
            "coindesk",
            "--source-url",
            &url,
        ],
    );
    let running = feed.wait_for_log("pricefeed running", WAIT).await.unwrap();
    assert_eq!(
        log_field(&running, "broker").as_deref(),
        Some(broker.as_str())
    );
    let lines = mosquitto_sub(mosquitto.port, &["-t", "btc/#", "-C", "4"]).await;
    let interval: Interval = "500ms".parse().unwrap();
    for l in &lines {
        let t = tick(l, interval);
        assert!(
            ["59524.4038", "53958.5744"].contains(&t.price.to_string().as_str()),
            "{l}"
        );
    }
    let status = feed.terminate(Duration::from_secs(15)).await;
    assert!(status.success());
    mosquitto.stop().await;
}

#[tokio::test]
async fn bad_configuration_is_one_line_naming_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let db = db.to_str().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let bin = testkit::binary("pricefeed");
    let bin = bin.to_str().unwrap();
    for (args, needle) in [
        (vec!["--interval", "5 parsecs"], "interval"),
        (vec!["--interval", "10ms"], "100ms"),
        (vec!["--currency", "GBP"], "GBP"),
        (vec!["--source", "coinbase,nosuch"], "nosuch"),
        (
            vec![
                "--source-url",
                "bitstamp=http://127.0.0.1:1",
                "--source",
                "kraken",
            ],
            "bitstamp",
        ),
        (
            vec!["--http-listen", &taken, "--mqtt-listen", "127.0.0.1:0"],
            &taken,
        ),
        (
            vec!["--mqtt-listen", &taken, "--http-listen", "127.0.0.1:0"],
            &taken,
        ),
        (vec!["--broker", "mqtts://x:8883"], "mqtt://"),
        (
            vec![
                "--broker",
                "mqtt://127.0.0.1:1883",
                "--http-listen",
                "127.0.0.1:0",
            ],
            "--broker-password",
        ),
        (vec!["--source", "kraken,demo"], "demo cannot be combined"),
        (vec!["--request-timeout", "0s"], "more than 0"),
        (
            vec![
                "--db",
                "/nonexistent-dir/feed.db",
                "--mqtt-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ],
            "/nonexistent-dir/feed.db",
        ),
    ] {
        let mut all = args.clone();
        if !all.contains(&"--db") {
            all.extend(["--db", db]);
        }
        assert_refused(bin, &all, needle, WAIT).await;
    }
}

#[tokio::test]
async fn standalone_history_reports_the_feeds_interval_and_demo_and_refuses_a_missing_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let feed = FeedProcess::start(&db, &["--source", "demo", "--interval", "250ms"]).await;
    assert!(feed.process.terminate(WAIT).await.success());

    let mut history = Process::spawn(
        "history-api",
        &["--db", db.to_str().unwrap(), "--http-listen", "127.0.0.1:0"],
    );
    let line = history
        .wait_for_log("history API listening", WAIT)
        .await
        .unwrap();
    let addr = log_field(&line, "address").unwrap();
    let url = format!("http://{addr}/v1/ticks?since=0&limit=1");
    let (_, body, _) = run_command("curl", &["-sS", &url], WAIT).await;
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["interval"], "250ms", "{body}");
    assert_eq!(page["demo"], true, "{body}");
    assert!(history.terminate(WAIT).await.success());

    let missing = dir.path().join("typo.db");
    let bin = testkit::binary("history-api");
    let (status, _, stderr) = run_command(
        bin.to_str().unwrap(),
        &[
            "--db",
            missing.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
        ],
        WAIT,
    )
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no store at"), "{stderr}");
    assert!(!missing.exists(), "no empty store was created");
}

/// The default build of the standalone `history-api` has no gRPC: asking for it is one line that
/// says how to get it, and `--grpc-listen` without `--broker` is refused by any build. (The gRPC
/// build itself is tested in `tests/tests/grpc.rs`.)
#[tokio::test]
async fn standalone_history_refuses_grpc_it_was_not_built_with() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let feed = FeedProcess::start(&db, &["--source", "demo", "--interval", "250ms"]).await;
    assert!(feed.process.terminate(WAIT).await.success());
    let bin = testkit::binary("history-api");
    let base = ["--db", db.to_str().unwrap(), "--http-listen", "127.0.0.1:0"];
    let mut without_broker = base.to_vec();
    without_broker.extend(["--grpc-listen", "127.0.0.1:0"]);
    assert_refused(bin.to_str().unwrap(), &without_broker, "--broker", WAIT).await;
    let mut with_broker = without_broker.clone();
    with_broker.extend(["--broker", "mqtt://127.0.0.1:1"]);
    assert_refused(
        bin.to_str().unwrap(),
        &with_broker,
        "built without gRPC: build with --features history-server/grpc",
        WAIT,
    )
    .await;
}
