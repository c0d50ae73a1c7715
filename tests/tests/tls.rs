//! TLS as users meet it: the `tls` build of `pricefeed` with a certificate this test makes (a CA
//! and a server certificate for localhost, by the `openssl` command), watched with Debian's
//! `mosquitto_sub --cafile` and `curl --cacert`, and refused by the same clients when they do not
//! trust it or do not speak TLS. Run by `tests/run.sh` after building that binary.

#![cfg(feature = "tls")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::{FeedProcess, FixtureServer, HistoryProcess, assert_refused, log_field, run_command};
use ticks::{Interval, Tick};

const WAIT: Duration = Duration::from_secs(30);

fn require(program: &str) {
    assert!(
        testkit::have(program),
        "{program} is required (apt-get install openssl mosquitto-clients curl); tests/run.sh installs it"
    );
}

/// A CA, and a certificate it signed for `localhost` and 127.0.0.1, in `dir`.
struct Certificates {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

async fn make_certificates(dir: &Path) -> Certificates {
    require("openssl");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let steps: [Vec<String>; 3] = [
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pricefeed test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.pem"),
        ]
        .map(String::from)
        .to_vec(),
        [
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &path("server.key"),
            "-out",
            &path("server.csr"),
        ]
        .map(String::from)
        .to_vec(),
        [
            "x509",
            "-req",
            "-in",
            &path("server.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            &path("server.ext"),
            "-out",
            &path("server.pem"),
        ]
        .map(String::from)
        .to_vec(),
    ];
    for args in &steps {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, _, stderr) = run_command("openssl", &args, WAIT).await;
        assert!(status.success(), "openssl {args:?}: {stderr}");
    }
    Certificates {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// Runs `mosquitto_sub` with `args` (at most 10 s); returns (succeeded, stdout, stderr).
async fn mosquitto_sub(args: &[&str]) -> (bool, String, String) {
    require("mosquitto_sub");
    let mut all = vec!["-W", "10"];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = run_command("mosquitto_sub", &all, WAIT).await;
    (status.success(), stdout, stderr)
}

/// Runs `curl -sS` with `args`, writing the status code last; returns (exit code, body, status).
async fn curl(args: &[&str]) -> (Option<i32>, String, String) {
    require("curl");
    let mut all = vec!["-sS", "--max-time", "10", "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let (status, stdout, _) = run_command("curl", &all, WAIT).await;
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (status.code(), body.to_string(), code.to_string())
}

/// A `mosquitto_sub -v` line as an exact, on-grid tick whose payload has exactly its two fields.
fn tick(line: &str, interval: Interval) -> Tick {
    let (topic, payload) = line.split_once(' ').unwrap();
    let tick =
        Tick::from_message(topic, payload.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(payload, tick.payload(), "exact payload: {line}");
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(payload).unwrap();
    let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 2, "{line}");
    assert!(
        keys.contains(&"timedate") && keys.contains(&"price"),
        "{line}"
    );
    assert!(interval.is_slot_start(tick.timedate), "on the grid: {line}");
    tick
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_and_https_serve_clients_that_trust_the_certificate_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certificates(dir.path()).await;
    let kraken = FixtureServer::kraken().await;
    let db = dir.path().join("feed.db");
    let url = format!("kraken={}", kraken.url());
    let feed = FeedProcess::start(
        &db,
        &[
            "--interval",
            "500ms",
            "--source",
            "kraken",
            "--source-url",
            &url,
            "--tls-cert",
            certs.cert.to_str().unwrap(),
            "--tls-key",
            certs.key.to_str().unwrap(),
            "--mqtts-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let listening = feed
        .process
        .log()
        .into_iter()
        .find(|l| l.contains("listening for MQTT over TLS"))
        .expect("the broker says where it listens for MQTT over TLS");
    let mqtts_addr: std::net::SocketAddr = log_field(&listening, "addr").unwrap().parse().unwrap();
    let mqtts = mqtts_addr.port().to_string();
    let https = feed.http.port().to_string();
    let plain = feed.mqtt.port().to_string();
    let ca = certs.ca.to_str().unwrap();
    let interval: Interval = "500ms".parse().unwrap();

    // A client that opens a connection to the TLS port and says nothing, and one that speaks plain
    // MQTT to it, hold up no one: each handshake is its own task with its own timeout.
    let _silent = tokio::net::TcpStream::connect(mqtts_addr).await.unwrap();
    let (ok, stdout, _) =
        mosquitto_sub(&["-h", "127.0.0.1", "-p", &mqtts, "-t", "btc/USD", "-C", "1"]).await;
    assert!(!ok, "plain MQTT on the TLS port got through: {stdout}");
    assert!(!stdout.contains("timedate"), "{stdout}");

    // (a) MQTT over TLS, verifying the certificate against the test's CA and the name localhost.
    let (ok, stdout, stderr) = mosquitto_sub(&[
        "--cafile",
        ca,
        "-h",
        "localhost",
        "-p",
        &mqtts,
        "-t",
        "btc/USD",
        "-C",
        "1",
        "-v",
    ])
    .await;
    assert!(ok, "mosquitto_sub over TLS: {stderr}");
    let line = stdout.lines().next().unwrap();
    assert!(line.starts_with("btc/USD "), "{line}");
    let seen = tick(line, interval);
    assert_eq!(seen.price.to_string(), "77726.1");

    // The TLS listener has the plain one's ACL: an anonymous client cannot overwrite the price.
    require("mosquitto_pub");
    let (_, _, _) = run_command(
        "mosquitto_pub",
        &[
            "--cafile",
            ca,
            "-h",
            "localhost",
            "-p",
            &mqtts,
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
    let (ok, retained, stderr) = mosquitto_sub(&[
        "--cafile",
        ca,
        "-h",
        "localhost",
        "-p",
        &mqtts,
        "-t",
        "btc/USD",
        "-C",
        "1",
        "--retained-only",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert!(
        !retained.contains("2000-01-01"),
        "the retained price is still ours: {retained}"
    );

    // (d) The plain listener still serves beside it.
    let (ok, stdout, stderr) = mosquitto_sub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &plain,
        "-t",
        "btc/EUR",
        "-C",
        "1",
        "-v",
    ])
    .await;
    assert!(ok, "plain mosquitto_sub: {stderr}");
    assert_eq!(
        tick(stdout.trim_end(), interval).price.to_string(),
        "68644.2"
    );

    // (b) HTTPS: the tick just seen is in history, verified against the test's CA.
    let since = seen.timedate.to_string();
    let history = format!("https://localhost:{https}/v1/ticks?since={since}&currency=USD");
    let (exit, body, code) = curl(&["--cacert", ca, &history]).await;
    assert_eq!((exit, code.as_str()), (Some(0), "200"), "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let first = &body["ticks"]["USD"][0];
    assert_eq!(first["timedate"], since.as_str(), "{body}");
    assert_eq!(first["price"].to_string(), "77726.1", "{body}");

    // The live stream over HTTPS: its backfill comes from a loopback listener in plain HTTP,
    // since the certificate names localhost's public side, not the address the server asks.
    let stream = format!("https://localhost:{https}/v1/stream?since={since}&currency=USD");
    let mut reader = testkit::sse::SseReader::start(&stream, &["--cacert", ca]);
    let first = loop {
        let event = reader.next(WAIT).await.expect("the stream goes on");
        if let Some(tick) = testkit::sse::tick_of(&event) {
            break tick;
        }
    };
    assert_eq!(first.payload(), seen.payload());
    drop(reader);

    // (c) Clients that do not trust the certificate, or do not speak TLS, get nothing.
    let (ok, stdout, _) = mosquitto_sub(&[
        "--tls-use-os-certs",
        "-h",
        "localhost",
        "-p",
        &mqtts,
        "-t",
        "btc/USD",
        "-C",
        "1",
    ])
    .await;
    assert!(
        !ok && !stdout.contains("timedate"),
        "an untrusted certificate was accepted: {stdout}"
    );
    let (exit, body, _) = curl(&[&history]).await;
    assert_eq!(
        exit,
        Some(60),
        "curl without the CA must refuse the certificate: {body}"
    );
    let (exit, body, code) = curl(&[&format!("http://127.0.0.1:{https}/healthz")]).await;
    assert_ne!(
        code, "200",
        "plain HTTP answered on the HTTPS port ({exit:?}): {body}"
    );
    assert_ne!(exit, Some(0), "{body}");
    // Everyone else is served as before.
    let (exit, _, code) = curl(&[
        "--cacert",
        ca,
        &format!("https://localhost:{https}/healthz"),
    ])
    .await;
    assert_eq!((exit, code.as_str()), (Some(0), "200"));

    let status = feed.process.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");

    // The standalone history API takes the same flags.
    let history_api = HistoryProcess::start(
        &db,
        &[
            "--tls-cert",
            certs.cert.to_str().unwrap(),
            "--tls-key",
            certs.key.to_str().unwrap(),
        ],
    )
    .await;
    let url = format!(
        "https://localhost:{}/v1/ticks?since={since}&currency=USD",
        history_api.addr.port()
    );
    let (exit, body, code) = curl(&["--cacert", ca, &url]).await;
    assert_eq!((exit, code.as_str()), (Some(0), "200"), "{body}");
    assert!(body.contains(&seen.payload()), "{body}");
    let (_, _, code) = curl(&[&url.replace("https://localhost", "http://127.0.0.1")]).await;
    assert_ne!(code, "200");
}

#[tokio::test]
async fn an_unusable_certificate_or_key_is_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certificates(dir.path()).await;
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let db = dir.path().join("feed.db");
    let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());
    let (garbage, missing) = (garbage.to_str().unwrap(), missing.to_str().unwrap());
    let base = [
        "--db",
        db.to_str().unwrap(),
        "--mqtt-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--source",
        "demo",
    ];
    for (program, args, needle) in [
        (
            "pricefeed",
            vec!["--tls-cert", missing, "--tls-key", key],
            "missing.pem",
        ),
        (
            "pricefeed",
            vec!["--tls-cert", cert, "--tls-key", garbage],
            "TLS key",
        ),
        (
            "pricefeed",
            vec!["--tls-cert", garbage, "--tls-key", key],
            "TLS certificate",
        ),
        // The CA's certificate with the server's key: a pair that does not go together.
        (
            "pricefeed",
            vec!["--tls-cert", certs.ca.to_str().unwrap(), "--tls-key", key],
            "ca.pem",
        ),
        ("pricefeed", vec!["--tls-cert", cert], "--tls-key"),
        (
            "pricefeed",
            vec!["--mqtts-listen", "127.0.0.1:0"],
            "--tls-cert",
        ),
        (
            "history-api",
            vec!["--tls-cert", cert, "--tls-key", garbage],
            "garbage.pem",
        ),
    ] {
        let bin = testkit::binary(program);
        let mut all: Vec<&str> = if program == "pricefeed" {
            base.to_vec()
        } else {
            vec!["--db", base[1]]
        };
        all.extend_from_slice(&args);
        assert_refused(bin.to_str().unwrap(), &all, needle, WAIT).await;
    }
    assert!(
        !db.exists(),
        "a refused configuration leaves no store behind"
    );
}
