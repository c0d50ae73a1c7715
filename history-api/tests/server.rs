//! Health, readiness, metrics, timeouts, and the server on a real socket with graceful shutdown.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use history_api::{MqttClients, app, app_with_timeout, serve};
use history_store::HistoryStore;
use serde_json::json;
use ticks::{Currency, Tick, Timedate};

#[tokio::test]
async fn healthz_is_always_ok() {
    let answer = get(
        &app(state_with_broker(store_with(0).await, false)),
        "/healthz",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), r#"{"status":"ok"}"#);
}

/// A store whose newest USD tick is about `age` old, and no EUR tick.
async fn store_with_usd_tick_aged(age: Duration) -> HistoryStore {
    let store = HistoryStore::open_in_memory().unwrap();
    let when =
        Timedate::from_unix_millis(Timedate::now().saturating_sub(age).unix_millis() / 1000 * 1000)
            .unwrap();
    store
        .insert_tick(Tick {
            currency: Currency::USD,
            timedate: when,
            price: "97001.5".parse().unwrap(),
        })
        .await
        .unwrap();
    store
}

/// The `pricefeed_ready` gauge of a scrape.
async fn ready_gauge(app: &axum::Router) -> String {
    get(app, "/metrics")
        .await
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("pricefeed_ready "))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn readyz_follows_the_store_and_the_broker() {
    let store = store_with_usd_tick_aged(Duration::from_secs(3)).await;

    let standalone = get(&app(state(store.clone())), "/readyz").await;
    assert_eq!(standalone.status, 200);
    let body = standalone.json();
    assert_eq!(body["ready"], true);
    assert_eq!(body["store"], "ok");
    assert_eq!(body["broker"], "not_used");
    assert_eq!(body["demo"], false);
    let usd_age = body["newest_tick_age_seconds"]["USD"].as_f64().unwrap();
    assert!((3.0..60.0).contains(&usd_age), "{usd_age}");
    assert_eq!(body["newest_tick_age_seconds"]["EUR"], json!(null));

    let state = state_with_broker(store.clone(), false);
    let flag = state.broker_connected.clone().unwrap();
    let app = app(state);
    let disconnected = get(&app, "/readyz").await;
    assert_eq!(
        ready_gauge(&app).await,
        "0",
        "/metrics says what /readyz says"
    );
    assert_eq!(disconnected.status, 503);
    assert_eq!(disconnected.json()["ready"], false);
    assert_eq!(disconnected.json()["broker"], "disconnected");
    assert_eq!(disconnected.json()["store"], "ok");

    flag.store(true, Ordering::Release);
    let connected = get(&app, "/readyz").await;
    assert_eq!(ready_gauge(&app).await, "1");
    assert_eq!(connected.status, 200);
    assert_eq!(connected.json()["broker"], "connected");

    store
        .tamper_blocking(|conn| conn.execute_batch("DROP TABLE ticks"))
        .unwrap();
    let broken = get(&app, "/readyz").await;
    assert_eq!(ready_gauge(&app).await, "0");
    assert_eq!(broken.status, 503);
    assert_eq!(
        broken.json(),
        json!({
            "ready": false,
            "store": "store query failed: no such table: ticks: Error code 1: SQL error or missing database",
            "broker": "connected",
            "newest_tick_age_seconds": {"USD": null, "EUR": null},
            "demo": false
        })
    );
}

#[tokio::test]
async fn metrics_count_requests_and_show_tick_age() {
    let state = state(store_with_usd_tick_aged(Duration::from_secs(3)).await);
    let metrics = state.metrics.clone();
    metrics.tick_published(Currency::EUR);
    metrics.source_error("kraken", "timeout");
    let app = app(state);
    for uri in [
        "/v1/ticks?since=0",
        "/v1/ticks?since=0",
        "/v1/ticks?since=x",
        "/nope",
    ] {
        get(&app, uri).await;
    }
    let answer = get(&app, "/metrics").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.content_type(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = answer.text();
    for line in [
        "pricefeed_history_requests_total{status=\"200\"} 2",
        "pricefeed_history_requests_total{status=\"400\"} 1",
        "pricefeed_history_requests_total{status=\"404\"} 1",
        "pricefeed_history_request_duration_seconds_count 4",
        "pricefeed_ticks_published_total{currency=\"EUR\"} 1",
        "pricefeed_ticks_published_total{currency=\"USD\"} 0",
        "pricefeed_source_errors_total{source=\"kraken\",kind=\"timeout\"} 1",
        "pricefeed_store_up 1",
        "pricefeed_ready 1",
        "pricefeed_interval_seconds 5",
        "# TYPE pricefeed_newest_tick_age_seconds gauge",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let age: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("pricefeed_newest_tick_age_seconds{currency=\"USD\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((3.0..60.0).contains(&age), "{age}");
    assert!(!text.contains("pricefeed_newest_tick_age_seconds{currency=\"EUR\"}"));
    // The scrape itself is counted once it is answered.
    assert_eq!(
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with("pricefeed_history_requests_total{status=\"200\"}")),
        Some("pricefeed_history_requests_total{status=\"200\"} 3")
    );
}

/// The embedded broker's clients are read at each scrape; a process without one exports neither
/// gauge (an empty series would read as "no clients").
#[tokio::test]
async fn metrics_report_the_embedded_brokers_clients_only_where_there_is_one() {
    let sessions = Arc::new(AtomicU64::new(3));
    let read = sessions.clone();
    let with = app(
        state(store_with(1).await).with_mqtt_clients(Arc::new(move || MqttClients {
            sessions: read.load(Ordering::Relaxed),
            connections: 2,
        })),
    );
    let text = get(&with, "/metrics").await.text().to_string();
    for line in [
        "# TYPE pricefeed_mqtt_sessions gauge",
        "pricefeed_mqtt_sessions 3",
        "# TYPE pricefeed_mqtt_connections gauge",
        "pricefeed_mqtt_connections 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    sessions.store(7, Ordering::Relaxed);
    let text = get(&with, "/metrics").await.text().to_string();
    assert!(
        text.lines().any(|l| l == "pricefeed_mqtt_sessions 7"),
        "{text}"
    );

    let without = app(state(store_with(1).await));
    let text = get(&without, "/metrics").await.text().to_string();
    assert!(!text.contains("pricefeed_mqtt_"), "{text}");
}

#[tokio::test]
async fn a_slow_store_times_out_with_a_json_503() {
    let store = store_with(1).await;
    let state = state(store.clone());
    let metrics = state.metrics.clone();
    let app = app_with_timeout(state, Duration::from_millis(200));
    // An in-memory store reads through its one connection: holding it stalls every query.
    let (held, is_held) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        store
            .tamper_blocking(|_| {
                held.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(1500));
                Ok(())
            })
            .unwrap();
    });
    is_held.recv().unwrap();
    let answer = get(&app, "/v1/ticks?since=0").await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.json(),
        json!({"error": "timeout", "message": "the request took longer than 0.2s"})
    );
    assert!(
        metrics
            .render()
            .contains("pricefeed_history_requests_total{status=\"503\"} 1")
    );
    holder.join().unwrap();
}

#[tokio::test]
async fn serves_a_file_store_on_a_real_socket_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let store = HistoryStore::open(dir.path().join("feed.db")).unwrap();
    store
        .insert_ticks(vec![tick(Currency::USD, 0), tick(Currency::EUR, 0)])
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state(store), async move {
        let _ = stopped.await;
    }));

    let (status, body) = http_get(
        address,
        b"/v1/ticks?since=2026-11-24T01:40:00Z&currency=EUR",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!(
            r#""ticks":{{"EUR":[{}]}}"#,
            tick(Currency::EUR, 0).payload()
        )),
        "{body}"
    );
    let (status, body) = http_get(address, b"/v1/ticks?since=%FF").await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["parameter"],
        "since"
    );
    let (status, _) = http_get(address, b"/healthz").await;
    assert_eq!(status, 200);

    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = tokio::net::TcpStream::connect(address).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut idle, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut idle, &mut first)
        .await
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    assert!(!server.is_finished());
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns once shutdown resolves")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(tokio::net::TcpStream::connect(address).await.is_err());
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let timeout = Duration::from_millis(500);
    let server = tokio::spawn(history_api::serve_router(
        listener,
        history_api::app(state(common::store_with(1).await)),
        history_api::ServeOptions {
            header_read_timeout: timeout,
            ..Default::default()
        },
        async move {
            let _ = stopped.await;
        },
    ));

    // Slow headers: a header line now and then, never the blank line that ends the head.
    let connected = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    slow.write_all(b"X-Drip: 1\r\n").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection was still open after 5 s");
    let held = connected.elapsed();
    assert!(held >= timeout, "closed after {held:?}, before the timeout");
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "an unfinished request was answered: {}",
        String::from_utf8_lossy(&rest)
    );

    // Everyone else is served as before.
    let (status, _) = http_get(address, b"/healthz").await;
    assert_eq!(status, 200);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The alert rules an operator loads (`ops/prometheus/alerts.yml`) name only series that
/// `/metrics` exports: a renamed metric would leave its alert silent forever.
#[tokio::test]
async fn every_metric_the_alert_rules_use_is_exported() {
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/prometheus/alerts.yml"),
    )
    .unwrap();
    // A node of several (so the node series are there) whose store holds a tick, after one
    // request of each kind the histogram and counters count.
    let (_role_tx, role) = tokio::sync::watch::channel(ticks::NodeRole::Active);
    let state = state_with_broker(store_with_usd_tick_aged(Duration::from_secs(3)).await, true)
        .with_node(1, role);
    let metrics = state.metrics.clone();
    metrics.tick_published(Currency::USD);
    metrics.slot_missed(Currency::USD);
    metrics.store_error();
    metrics.source_error("kraken", "timeout");
    let app = app(state);
    get(&app, "/v1/ticks?since=0").await;
    let exported: std::collections::BTreeSet<String> = get(&app, "/metrics")
        .await
        .text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let mut used: Vec<&str> = rules
        .match_indices("pricefeed_")
        .map(|(i, _)| {
            let rest = &rules[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 8, "the rules use {used:?}");
    for name in used {
        // A histogram is exported as its _bucket, _sum and _count series.
        assert!(
            exported.contains(name)
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| exported.contains(&format!("{name}{s}"))),
            "the alert rules use {name}, which /metrics does not export: {exported:?}"
        );
    }
}

/// An answer from the ticks held in memory is sent in pieces: on the wire it is one body with its
/// exact `Content-Length` (not chunked), byte for byte the answer read from SQLite.
#[tokio::test]
async fn an_answer_sent_in_pieces_is_whole_on_the_wire() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let store = HistoryStore::open(dir.path().join("feed.db")).unwrap();
    store
        .insert_ticks(
            (0..3000)
                .flat_map(|i| Currency::ALL.map(|c| tick(c, i)))
                .collect(),
        )
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state = state(store);
    let metrics = state.metrics.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let raw_get = |since: i64| async move {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!(
            "GET /v1/ticks?since={}&limit=50000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            slot(since)
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(response[..split].to_vec()).unwrap();
        (head.to_ascii_lowercase(), response[split + 4..].to_vec())
    };
    let answers_from = |source: &str| {
        let prefix = format!("pricefeed_history_answers_total{{source=\"{source}\"}} ");
        let text = metrics.render();
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix)?.parse::<u64>().ok())
            .unwrap()
    };
    // The first question is answered from SQLite and starts reading the tail into memory.
    let (_, from_sqlite) = raw_get(100).await;
    assert_eq!(answers_from("store"), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut since = 100;
    loop {
        since += 1;
        let (head, body) = raw_get(since).await;
        if answers_from("memory") == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the tail was never used"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{head}"
        );
        // Ticks 101.. of both currencies: the SQLite answer from 100, less its first slot.
        let text = String::from_utf8(body).unwrap();
        let page: serde_json::Value = serde_json::from_str(&text).unwrap();
        let expected: serde_json::Value = serde_json::from_slice(&from_sqlite).unwrap();
        for currency in ["USD", "EUR"] {
            let got = page["ticks"][currency].as_array().unwrap();
            let all = expected["ticks"][currency].as_array().unwrap();
            assert_eq!(got.len(), 3000 - since as usize);
            assert_eq!(got[..], all[(since - 100) as usize..]);
        }
        assert!(text.len() > 100_000, "several pieces: {}", text.len());
        break;
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// One response on a keep-alive connection: its head, lower-cased, and then exactly the bytes its
/// `Content-Length` announces (none after a HEAD).
async fn read_response(
    stream: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    head_only: bool,
) -> (String, Vec<u8>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};

    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stream.read_line(&mut line).await.unwrap() > 0,
            "closed in a head: {head}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap_or_else(|| panic!("no content-length: {head}"))
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; if head_only { 0 } else { length }];
    stream.read_exact(&mut body).await.unwrap();
    (head, body)
}

/// A page larger than hyper's write buffer is held in pieces that share the tail's memory and sent
/// as one buffer: on the wire it is every tick in order, exactly; so is the same page again (from
/// the answer cache, joined); a HEAD of it has the same length and no body; and the connection
/// stays in step for the next request.
#[tokio::test]
async fn a_page_sent_in_pieces_is_the_whole_answer_on_a_kept_connection() {
    use tokio::io::AsyncWriteExt;

    // 1,000 ticks a currency: about 50 KB each, well over the 16 KB a piece needs to be shared.
    let app = app(state(store_with(1_000).await));
    let big = format!("/v1/ticks?since={T0}&limit=5000");
    let small = format!("/v1/ticks?since={T0}&limit=3");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(history_api::serve_router(
        listener,
        app.clone(),
        history_api::ServeOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut stream =
        tokio::io::BufReader::new(tokio::net::TcpStream::connect(address).await.unwrap());
    let mut ask = async |method: &str, target: &str| {
        let request = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        read_response(&mut stream, method == "HEAD").await
    };
    let (head, first) = ask("GET", &big).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    let page = Answer {
        status: axum::http::StatusCode::OK,
        headers: Default::default(),
        body: first.clone(),
    };
    for currency in Currency::ALL {
        let stored: Vec<String> = (0..1_000).map(|i| tick(currency, i).payload()).collect();
        assert!(page.raw_ticks(currency) == stored, "{currency:?}");
    }
    assert!(first.len() > 90_000, "{}", first.len());
    let (_, again) = ask("GET", &big).await;
    assert!(again == first, "the cached answer differs");
    let (head, none) = ask("HEAD", &big).await;
    assert!(none.is_empty());
    assert!(
        head.contains(&format!("\r\ncontent-length: {}\r\n", first.len())),
        "{head}"
    );
    let (head, small_body) = ask("GET", &small).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(small_body, get(&app, &small).await.body);
    assert_eq!(first, get(&app, &big).await.body);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
