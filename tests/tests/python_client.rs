//! A second-language MQTT client, Eclipse Paho for Python, on MQTT 3.1.1 and 5 against the built
//! `pricefeed` binary.

use std::path::Path;
use std::time::Duration;

use testkit::{FeedProcess, FixtureServer, run_command};
use ticks::{Interval, Tick};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_311_and_5_receive_exact_ticks_and_cannot_subscribe_elsewhere() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/paho_sub.py");
    let script = script.to_str().unwrap();
    let (ok, _, _) = run_command(
        "python3",
        &["-c", "import paho.mqtt.client"],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        ok.success(),
        "paho-mqtt is required (tests/run.sh installs it)"
    );

    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let feed = FeedProcess::kraken(&dir.path().join("feed.db"), &kraken, "500ms").await;
    let port = feed.mqtt.port().to_string();
    let interval: Interval = "500ms".parse().unwrap();
    for version in ["3.1.1", "5"] {
        let (status, stdout, stderr) = run_command(
            "python3",
            &[script, "127.0.0.1", &port, "btc/+", "4", version],
            Duration::from_secs(30),
        )
        .await;
        assert!(status.success(), "paho {version}: {stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 4, "paho {version}: {stdout}");
        for line in lines {
            let mut parts = line.splitn(3, ' ');
            let (topic, payload) = (parts.next().unwrap(), parts.next().unwrap());
            let tick = Tick::from_message(topic, payload.as_bytes()).unwrap();
            assert_eq!(payload, tick.payload());
            assert!(interval.is_slot_start(tick.timedate));
        }
    }
    // An anonymous subscription outside the feed is refused.
    let (status, _, stderr) = run_command(
        "python3",
        &[script, "127.0.0.1", &port, "#", "1", "3.1.1"],
        Duration::from_secs(30),
    )
    .await;
    assert!(!status.success());
    assert!(stderr.contains("subscription refused"), "{stderr}");
    assert!(
        feed.process
            .terminate(Duration::from_secs(15))
            .await
            .success()
    );
}
