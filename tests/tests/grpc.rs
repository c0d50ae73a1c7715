//! The gRPC API (pricefeed.v1) as users meet it: the `grpc` build of `pricefeed` with the Kraken
//! fixture, a Rust client generated from the same `.proto`, and a Python client generated with
//! grpcio-tools at run time. What they receive is checked against `curl` on `/v1/ticks`. Run by
//! `tests/run.sh` after building that binary.

#![cfg(feature = "grpc")]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use grpc_api::pb;
use grpc_api::pb::price_feed_client::PriceFeedClient;
use serde::Deserialize;
use testkit::sse::curl_history_paged;
use testkit::{FeedProcess, FixtureServer, Process, free_port_below_ephemeral, run_command, which};
use ticks::wire::WireTick;
use ticks::{Currency, Tick, Timedate};
use tokio::io::AsyncBufReadExt;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const WAIT: Duration = Duration::from_secs(40);

/// A `/v1/ticks` answer, its prices read exactly.
#[derive(Deserialize)]
struct Page {
    ticks: BTreeMap<Currency, Vec<WireTick>>,
    earliest: Option<Timedate>,
    interval: String,
    demo: bool,
    next_cursor: Option<String>,
}

async fn curl_page(http: &str, query: &str) -> Page {
    let url = format!("http://{http}/v1/ticks?{query}");
    let (status, body, stderr) = run_command("curl", &["-sS", "--fail", &url], WAIT).await;
    assert!(status.success(), "curl {url}: {stderr}");
    serde_json::from_str(&body).unwrap()
}

/// The tick a message carries, checked to be in the feed's exact text.
fn tick_of(message: &pb::Tick) -> Tick {
    let currency: Currency = message.currency.parse().unwrap();
    let payload = format!(
        r#"{{"timedate":"{}","price":{}}}"#,
        message.timedate, message.price
    );
    let tick = Tick::from_message(currency.topic(), payload.as_bytes()).unwrap();
    assert_eq!(tick.payload(), payload, "not the feed's exact text");
    tick
}

async fn client(feed: &FeedProcess) -> PriceFeedClient<Channel> {
    let addr = feed.grpc.expect("pricefeed says where it serves gRPC");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    PriceFeedClient::new(channel)
}

/// Reads a stream until each currency has `per_currency` ticks; returns them and whether a LIVE
/// status came before the last of them.
async fn collect(
    stream: &mut tonic::Streaming<pb::Event>,
    per_currency: usize,
) -> (BTreeMap<Currency, Vec<Tick>>, bool) {
    let mut got: BTreeMap<Currency, Vec<Tick>> = BTreeMap::new();
    let mut live = false;
    while got.len() < Currency::ALL.len() || got.values().any(|t| t.len() < per_currency) {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("the stream is not over");
        match event.event.expect("an event has a kind") {
            pb::event::Event::Tick(t) => {
                let tick = tick_of(&t);
                got.entry(tick.currency).or_default().push(tick);
            }
            pb::event::Event::Status(s) => {
                assert_eq!(s.state(), pb::status::State::Live);
                live = true;
            }
            pb::event::Event::Gap(g) => panic!("no gap expected from the fixture: {g:?}"),
        }
    }
    (got, live)
}

/// Each currency's received ticks equal history from their first one to their last: nothing
/// missing, repeated or out of order.
fn assert_equals_history(
    got: &BTreeMap<Currency, Vec<Tick>>,
    history: &BTreeMap<Currency, Vec<Tick>>,
    since: Timedate,
) {
    for (currency, ticks) in got {
        let last = ticks.last().unwrap().timedate;
        let held: Vec<Tick> = history[currency]
            .iter()
            .filter(|t| t.timedate >= since && t.timedate <= last)
            .copied()
            .collect();
        assert_eq!(ticks, &held, "{currency}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_and_since_streams_equal_history_and_history_equals_v1_ticks_health_and_reflection() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("kraken={}", kraken.url());
    let feed = FeedProcess::start(
        &dir.path().join("feed.db"),
        &[
            "--interval",
            "500ms",
            "--source",
            "kraken",
            "--source-url",
            &url,
            "--grpc-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let http = feed.http.to_string();
    let mut grpc = client(&feed).await;

    // Live: exact ticks, each equal to what history holds.
    let mut live = grpc
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let (got, _) = collect(&mut live, 4).await;
    drop(live);
    let first = got.values().map(|t| t[0].timedate).min().unwrap();
    assert_equals_history(&got, &curl_history_paged(&http, first, 50).await, first);

    // Since: history from `first`, then live, with nothing missing or twice across the seam.
    let mut resumed = grpc
        .subscribe(pb::SubscribeRequest {
            currencies: vec!["USD".into(), "eur".into()],
            since: Some(first.to_string()),
        })
        .await
        .unwrap()
        .into_inner();
    let (got, live) = collect(&mut resumed, 10).await;
    assert!(live, "the stream says when it turns live");
    for ticks in got.values() {
        assert_eq!(ticks[0].timedate, first, "since is inclusive");
    }
    assert_equals_history(&got, &curl_history_paged(&http, first, 50).await, first);
    drop(resumed);

    // History: page for page what /v1/ticks answers, cursor included.
    let mut request = pb::HistoryRequest {
        since: Some(first.to_string()),
        limit: Some(3),
        ..Default::default()
    };
    let mut query = format!("since={first}&limit=3");
    for _ in 0..3 {
        let answer = grpc.history(request.clone()).await.unwrap().into_inner();
        let page = curl_page(&http, &query).await;
        let ticks: Vec<Tick> = answer.ticks.iter().map(tick_of).collect();
        let expected: Vec<Tick> = page
            .ticks
            .iter()
            .flat_map(|(&currency, run)| {
                run.iter().map(move |w| Tick {
                    currency,
                    timedate: w.timedate,
                    price: w.price,
                })
            })
            .collect();
        assert_eq!(ticks, expected);
        assert_eq!(answer.next_cursor, page.next_cursor);
        assert_eq!(answer.earliest, page.earliest.map(|t| t.to_string()));
        assert_eq!(
            (answer.interval.as_str(), answer.demo),
            (page.interval.as_str(), page.demo)
        );
        assert_eq!(answer.currencies, ["USD", "EUR"]);
        let cursor = answer.next_cursor.expect("a cut page has a cursor");
        query = format!("cursor={cursor}&limit=3");
        request = pb::HistoryRequest {
            cursor: Some(cursor),
            limit: Some(3),
            ..Default::default()
        };
    }

    // Standard health checking says the service and the server serve.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", feed.grpc.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "pricefeed.v1.PriceFeed"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
    // Reflection lists the services, so grpcurl needs no .proto.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", feed.grpc.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a list of services: {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in ["pricefeed.v1.PriceFeed", "grpc.health.v1.Health"] {
        assert!(names.contains(&service), "{names:?}");
    }
    assert!(
        feed.process
            .terminate(Duration::from_secs(15))
            .await
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_invalid_argument_and_too_many_streams_resource_exhausted() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("kraken={}", kraken.url());
    let feed = FeedProcess::start(
        &dir.path().join("feed.db"),
        &[
            "--interval",
            "500ms",
            "--source",
            "kraken",
            "--source-url",
            &url,
            "--grpc-listen",
            "127.0.0.1:0",
            "--grpc-max-streams",
            "1",
        ],
    )
    .await;
    let mut grpc = client(&feed).await;
    let subscribe_cases = [
        (vec![], Some("yesterday"), "since: "),
        (vec![], Some(""), "since: "),
        (vec!["GBP"], None, "currencies: "),
        (vec!["USD", ""], Some("0"), "currencies: "),
    ];
    for (currencies, since, field) in subscribe_cases {
        let request = pb::SubscribeRequest {
            currencies: currencies.iter().map(|c| c.to_string()).collect(),
            since: since.map(String::from),
        };
        let status = grpc
            .subscribe(request.clone())
            .await
            .expect_err(&format!("{request:?}"));
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
        assert!(
            status.message().starts_with(field),
            "{request:?}: {}",
            status.message()
        );
    }
    let history_cases = [
        (pb::HistoryRequest::default(), "since: "),
        (
            pb::HistoryRequest {
                since: Some("garbage".into()),
                ..Default::default()
            },
            "since: ",
        ),
        (
            pb::HistoryRequest {
                since: Some("0".into()),
                limit: Some(0),
                ..Default::default()
            },
            "limit: ",
        ),
        (
            pb::HistoryRequest {
                since: Some("0".into()),
                limit: Some(50_001),
                ..Default::default()
            },
            "limit: ",
        ),
        (
            pb::HistoryRequest {
                since: Some("0".into()),
                currencies: vec!["GBP".into()],
                ..Default::default()
            },
            "currencies: ",
        ),
        (
            pb::HistoryRequest {
                cursor: Some("v1.x".into()),
                ..Default::default()
            },
            "cursor: ",
        ),
        (
            pb::HistoryRequest {
                since: Some("0".into()),
                cursor: Some("v1.x".into()),
                ..Default::default()
            },
            "cursor: ",
        ),
    ];
    for (request, field) in history_cases {
        let status = grpc
            .history(request.clone())
            .await
            .expect_err(&format!("{request:?}"));
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
        assert!(
            status.message().starts_with(field),
            "{request:?}: {}",
            status.message()
        );
    }
    // Over --grpc-max-streams, a stream is refused at once; a closed one frees its place.
    let first = grpc
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let status = grpc
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect_err("one stream at most");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(status) = grpc.subscribe(pb::SubscribeRequest::default()).await {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed stream's place is freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The server is still there, and a good request is answered.
    let answer = grpc
        .history(pb::HistoryRequest {
            since: Some("0".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.since, "1970-01-01T00:00:00Z");
    assert!(
        feed.process
            .terminate(Duration::from_secs(15))
            .await
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_resumes_across_a_restart_with_nothing_missing_or_twice() {
    let (ok, _, stderr) = run_command(
        "python3",
        &["-c", "import grpc, grpc_tools.protoc"],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        ok.success(),
        "grpcio and grpcio-tools are required (tests/run.sh installs them): {stderr}"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/grpc_sub.py");
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let url = format!("kraken={}", kraken.url());
    // A fixed port, so the client finds the restarted server where it left the first.
    let listen = format!("127.0.0.1:{}", free_port_below_ephemeral());
    let flags = [
        "--interval",
        "1s",
        "--source",
        "kraken",
        "--source-url",
        &url,
        "--grpc-listen",
        &listen,
    ];
    let feed = FeedProcess::start(&db, &flags).await;
    let http = feed.http.to_string();
    // Start from a tick already stored, so the client backfills before it follows live.
    let deadline = tokio::time::Instant::now() + WAIT;
    let since = loop {
        let page = curl_page(&http, "since=0&currency=USD").await;
        let run = &page.ticks[&Currency::USD];
        if run.len() >= 2 {
            break run[0].timedate;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no two stored ticks in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let total = 16;
    let mut client = Process::start(
        &which("python3").unwrap(),
        &[
            script.to_str().unwrap(),
            listen.as_str(),
            &since.to_string(),
            &total.to_string(),
        ],
    )
    .unwrap();
    let mut stdout = tokio::io::BufReader::new(client.child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    while lines.len() < 6 {
        let line = tokio::time::timeout(WAIT, stdout.next_line()).await;
        lines.push(
            line.expect("a line in time")
                .unwrap()
                .expect("the client goes on"),
        );
    }
    // A restart on the same store and port: the stream fails, the client subscribes again.
    assert!(
        feed.process
            .terminate(Duration::from_secs(15))
            .await
            .success()
    );
    let feed = FeedProcess::start(&db, &flags).await;
    while let Some(line) = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("a line in time")
        .unwrap()
    {
        lines.push(line);
    }
    let status = tokio::time::timeout(WAIT, client.child.wait())
        .await
        .unwrap()
        .unwrap();
    let log = client.log().join("\n");
    assert!(status.success(), "{log}");
    assert!(
        log.contains("resuming"),
        "the stream did fail over the restart: {log}"
    );
    assert_eq!(lines.len(), total);
    let mut got: BTreeMap<Currency, Vec<Tick>> = BTreeMap::new();
    for line in &lines {
        let (topic, payload) = line.split_once(' ').unwrap();
        let tick = Tick::from_message(topic, payload.as_bytes()).unwrap();
        assert_eq!(line, &tick.line(), "exactly the feed's line");
        got.entry(tick.currency).or_default().push(tick);
    }
    assert_equals_history(
        &got,
        &curl_history_paged(&feed.http.to_string(), since, 50).await,
        since,
    );
    for ticks in got.values() {
        assert_eq!(ticks[0].timedate, since);
    }
    assert!(
        feed.process
            .terminate(Duration::from_secs(15))
            .await
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_history_api_serves_grpc_beside_a_feed() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
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
        ],
    )
    .await;
    // A replica of history beside the feed: same store, the feed's broker to follow.
    let broker = format!("mqtt://{}", feed.mqtt);
    let mut replica =
        testkit::HistoryProcess::start(&db, &["--grpc-listen", "127.0.0.1:0", "--broker", &broker])
            .await;
    let line = replica
        .process
        .wait_for_log("gRPC listening", WAIT)
        .await
        .unwrap();
    let addr = testkit::log_field(&line, "address").expect("address= in the line");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = PriceFeedClient::new(channel);
    let http = replica.addr.to_string();

    // Subscribe from a time in the past: history from the replica, then the feed live.
    let since = Timedate::now();
    let mut stream = grpc
        .subscribe(pb::SubscribeRequest {
            currencies: vec![],
            since: Some(since.to_string()),
        })
        .await
        .unwrap()
        .into_inner();
    let (got, live) = collect(&mut stream, 6).await;
    assert!(live, "the stream says when it turns live");
    assert_equals_history(&got, &curl_history_paged(&http, since, 50).await, since);
    drop(stream);

    // History: what the replica's /v1/ticks answers.
    let answer = grpc
        .history(pb::HistoryRequest {
            since: Some(since.to_string()),
            limit: Some(4),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let page = curl_page(&http, &format!("since={since}&limit=4")).await;
    assert_eq!(answer.ticks.len(), 4);
    assert_eq!(answer.next_cursor, page.next_cursor);
    replica.process.stop(Duration::from_secs(10)).await;
    feed.process.stop(Duration::from_secs(10)).await;
}
