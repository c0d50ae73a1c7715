//! What one client address may take: the request rate (429 with Retry-After), open connections,
//! the request's size; and the cap on requests in flight (503 with Retry-After). Over real sockets
//! from two loopback addresses, 127.0.0.1 and 127.0.0.2, so "another address" is a real one.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{get, state, store_with};
use history_api::{Limits, ServeOptions, app, serve_router};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ONE: &str = "127.0.0.1";
const TWO: &str = "127.0.0.2";

/// A history server on a free loopback port with these limits; stops when the test ends.
async fn server(limits: Limits) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state = state(store_with(3).await).with_limits(limits.clone());
    let options = ServeOptions {
        limits,
        metrics: state.metrics.clone(),
        ..Default::default()
    };
    tokio::spawn(serve_router(
        listener,
        app(state),
        options,
        std::future::pending(),
    ));
    address
}

/// A connection to `server` from the loopback address `from`.
async fn connect(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(server).await.unwrap()
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One request with `Connection: close` from `from`, read to the end. None when the server
/// closed the connection without answering.
async fn send(from: &str, server: SocketAddr, target: &str, headers: &str) -> Option<Reply> {
    let mut stream = connect(from, server).await;
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n");
    // A refused connection may be closed before the request is even written.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    if response.is_empty() {
        return None;
    }
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    Some(Reply {
        status: head.split(' ').nth(1).unwrap().parse().unwrap(),
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// Requests from `from` until one is refused with 429, which it returns. Each before it must be
/// served, and there must be `burst` of them, plus at most one per second the requests took (the
/// rate used here is 1/s).
async fn until_refused(
    from: &str,
    server: SocketAddr,
    target: &str,
    headers: &str,
    burst: u64,
) -> Reply {
    let started = std::time::Instant::now();
    let mut served = 0;
    loop {
        let reply = send(from, server, target, headers).await.unwrap();
        if reply.status == 429 {
            assert!(served >= burst, "refused after {served} requests");
            return reply;
        }
        assert_eq!(reply.status, 200, "{}", reply.head);
        served += 1;
        assert!(
            served <= burst + started.elapsed().as_secs() + 1,
            "{served} requests served, none refused"
        );
    }
}

async fn status(from: &str, server: SocketAddr, target: &str) -> u16 {
    send(from, server, target, "").await.unwrap().status
}

#[tokio::test]
async fn a_burst_from_one_address_meets_429_while_another_address_is_served() {
    let server = server(Limits {
        rate: 1,
        burst: 5,
        ..Limits::default()
    })
    .await;
    let refused = until_refused(ONE, server, "/v1/ticks?since=0", "", 5).await;
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let body = refused.json();
    assert_eq!(body["error"], "rate_limited");
    assert!(
        body["message"].as_str().unwrap().contains("127.0.0.1"),
        "{body}"
    );
    // Another address is untouched by the first one's burst.
    assert_eq!(status(TWO, server, "/v1/ticks?since=0").await, 200);
    // After Retry-After, the first address is served again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(status(ONE, server, "/healthz").await, 200);
    // The refusals are counted (the scrape itself is the second address's request).
    let metrics = send(TWO, server, "/metrics", "").await.unwrap().body;
    assert!(
        metrics.contains("pricefeed_history_requests_total{status=\"429\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_clients_are_limited_by_the_address_it_reports() {
    let server = server(Limits {
        rate: 1,
        burst: 2,
        address_header: Some("x-forwarded-for".parse().unwrap()),
        trusted_proxies: vec![ONE.parse().unwrap()],
        ..Limits::default()
    })
    .await;
    // The proxy (127.0.0.1) reports two clients; what a client wrote itself, first, is ignored.
    let a = "X-Forwarded-For: 198.51.100.9, 203.0.113.1\r\n";
    let b = "X-Forwarded-For: 203.0.113.2\r\n";
    let refused = until_refused(ONE, server, "/healthz", a, 2).await;
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("203.0.113.1")
    );
    assert_eq!(send(ONE, server, "/healthz", b).await.unwrap().status, 200);

    // A peer that is not a trusted proxy cannot escape its limit by writing the header.
    let started = std::time::Instant::now();
    let mut served = 0;
    loop {
        let spoofed = format!("X-Forwarded-For: 192.0.2.{served}\r\n");
        let reply = send(TWO, server, "/healthz", &spoofed).await.unwrap();
        if reply.status == 429 {
            break;
        }
        assert_eq!(reply.status, 200);
        served += 1;
        assert!(
            served <= 2 + started.elapsed().as_secs() + 1,
            "{served} requests with a forged header were served"
        );
    }
}

#[tokio::test]
async fn connections_over_an_address_cap_are_closed_and_others_are_served() {
    let server = server(Limits {
        connections_per_address: 2,
        ..Limits::default()
    })
    .await;
    let held = [connect(ONE, server).await, connect(ONE, server).await];
    // The server counts a connection once it has accepted it: wait until the cap shows.
    let mut refused = false;
    for _ in 0..50 {
        if send(ONE, server, "/healthz", "").await.is_none() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "a third connection from one address was served");
    assert_eq!(status(TWO, server, "/healthz").await, 200);

    // Closing one frees a place.
    drop(held);
    let mut served = false;
    for _ in 0..100 {
        if let Some(reply) = send(ONE, server, "/healthz", "").await {
            assert_eq!(reply.status, 200);
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served,
        "the address stayed refused after its connections closed"
    );
    let metrics = send(TWO, server, "/metrics", "").await.unwrap().body;
    let refusals: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pricefeed_history_connections_refused_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refusals >= 1, "{metrics}");
}

#[tokio::test]
async fn a_long_request_target_gets_414_and_a_large_head_431() {
    let server = server(Limits::default()).await;
    let long = format!("/v1/ticks?since=0&{}", "x".repeat(3_000));
    let reply = send(ONE, server, &long, "").await.unwrap();
    assert_eq!(reply.status, 414);
    assert_eq!(reply.json()["error"], "uri_too_long");
    // Just under the limit is read (and refused for its unknown parameter, not its length).
    let fits = format!("/v1/ticks?x={}", "y".repeat(2_048 - 12));
    assert_eq!(fits.len(), 2_048);
    assert_eq!(status(ONE, server, &fits).await, 400);

    let big = format!("X-Padding: {}\r\n", "p".repeat(20_000));
    let reply = send(ONE, server, "/healthz", &big).await.unwrap();
    assert_eq!(reply.status, 431, "{}", reply.head);
    // A head under the limit is fine.
    let fine = format!("X-Padding: {}\r\n", "p".repeat(8_000));
    assert_eq!(
        send(ONE, server, "/healthz", &fine).await.unwrap().status,
        200
    );
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_are_shed_with_503() {
    let store = store_with(1).await;
    let app = app(state(store.clone()).with_limits(Limits {
        in_flight: 1,
        ..Limits::default()
    }));
    // An in-memory store reads through its one connection: holding it stalls the first request.
    let (held, is_held) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        store
            .tamper_blocking(|_| {
                held.send(()).unwrap();
                let _ = released.recv_timeout(Duration::from_secs(10));
                Ok(())
            })
            .unwrap();
    });
    is_held.recv().unwrap();
    let slow = {
        let app = app.clone();
        tokio::spawn(async move { get(&app, "/v1/ticks?since=0").await })
    };
    // The stalled request holds the only place; the next is shed at once.
    let mut shed = None;
    for _ in 0..100 {
        let answer = get(&app, "/healthz").await;
        if answer.status == 503 {
            shed = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shed = shed.expect("a request past the in-flight cap was not shed");
    assert_eq!(shed.headers["retry-after"], "1");
    assert_eq!(shed.json()["error"], "overloaded");
    release.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(get(&app, "/healthz").await.status, 200);
}

#[test]
fn the_defaults_are_what_the_flags_say() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: Limits,
    }
    let parsed = Cli::parse_from(["x"]).limits;
    let default = Limits::default();
    assert_eq!(parsed.rate, default.rate);
    assert_eq!(parsed.burst, default.burst);
    assert_eq!(parsed.in_flight, default.in_flight);
    assert_eq!(
        parsed.connections_per_address,
        default.connections_per_address
    );
    assert_eq!(parsed.uri_bytes, default.uri_bytes);
    assert_eq!(parsed.header_bytes, default.header_bytes);
    assert!(parsed.address_header.is_none() && parsed.trusted_proxies.is_empty());
}
