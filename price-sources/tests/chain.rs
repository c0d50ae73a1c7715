//! `SourceChain::sample` against fake vendors on 127.0.0.1:0 serving the recorded fixtures: the
//! fall-through, partial answers, time limits and what is sent on the wire. Nothing here reaches
//! the internet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use price_sources::{ConfigError, DEFAULT_CHAIN, Sample, SourceChain, SourceConfig, SourceKind};
use ticks::Currency::{self, EUR, USD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// What the fake server does for one request target (path and query).
#[derive(Clone)]
enum Reply {
    Send {
        status: u16,
        body: Vec<u8>,
        /// Without a Content-Length the body ends when the connection closes, so the client cannot
        /// know its size up front.
        content_length: bool,
    },
    /// Reads the request and never answers.
    Hang,
}

#[derive(Debug, Clone)]
struct Seen {
    target: String,
    /// Header names lowercased.
    headers: HashMap<String, String>,
}

/// A minimal HTTP/1.1 server: one request per connection, canned replies by exact target.
struct FakeVendor {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    routes: Routes,
}

type Routes = Arc<Mutex<HashMap<String, Reply>>>;

impl FakeVendor {
    async fn start(routes: Vec<(&str, Reply)>) -> FakeVendor {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let routes: Routes = Arc::new(Mutex::new(
            routes
                .into_iter()
                .map(|(target, reply)| (target.to_string(), reply))
                .collect(),
        ));
        let routes_of_server = Arc::clone(&routes);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_by_server = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(
                    stream,
                    Arc::clone(&routes_of_server),
                    Arc::clone(&seen_by_server),
                ));
            }
        });
        FakeVendor {
            base_url,
            seen,
            routes,
        }
    }

    /// From now on, answers `target` with `reply`.
    fn set(&self, target: &str, reply: Reply) {
        self.routes
            .lock()
            .unwrap()
            .insert(target.to_string(), reply);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn targets(&self) -> Vec<String> {
        let mut targets: Vec<String> = self.seen().into_iter().map(|s| s.target).collect();
        targets.sort();
        targets
    }
}

async fn answer(mut stream: TcpStream, routes: Routes, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("")
        .to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    seen.lock().unwrap().push(Seen {
        target: target.clone(),
        headers,
    });

    let reply = routes
        .lock()
        .unwrap()
        .get(&target)
        .cloned()
        .unwrap_or(Reply::Send {
            status: 404,
            body: b"no such route in the fake vendor".to_vec(),
            content_length: true,
        });
    match reply {
        Reply::Hang => std::future::pending::<()>().await,
        Reply::Send {
            status,
            body,
            content_length,
        } => {
            let reason = match status {
                200 => "OK",
                404 => "Not Found",
                429 => "Too Many Requests",
                500 => "Internal Server Error",
                _ => "Whatever",
            };
            let mut head = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nConnection: close\r\n"
            );
            if content_length {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            head.push_str("\r\n");
            // The client may hang up early (an oversized body); that is the point, not an error.
            if stream.write_all(head.as_bytes()).await.is_ok() {
                let _ = stream.write_all(&body).await;
            }
            let _ = stream.shutdown().await;
        }
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../tests/fixtures/sources/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ok(name: &str) -> Reply {
    status(200, fixture(name))
}

fn status(status: u16, body: impl Into<Vec<u8>>) -> Reply {
    Reply::Send {
        status,
        body: body.into(),
        content_length: true,
    }
}

const KRAKEN_BOTH: &str = "/0/public/Ticker?pair=XBTUSD,XBTEUR";
const COINBASE_USD: &str = "/v2/prices/BTC-USD/spot";
const COINBASE_EUR: &str = "/v2/prices/BTC-EUR/spot";

/// Coinbase answering both currencies from its fixtures: USD 81401.385, EUR 41191.91.
async fn healthy_coinbase() -> FakeVendor {
    FakeVendor::start(vec![
        (COINBASE_USD, ok("coinbase.json")),
        (COINBASE_EUR, ok("coinbase_spot_btc_eur.json")),
    ])
    .await
}

fn chain(sources: &[(SourceKind, &FakeVendor)], request_timeout: Duration) -> SourceChain {
    let configs = sources
        .iter()
        .map(|(kind, vendor)| SourceConfig::with_base_url(*kind, vendor.base_url.clone()))
        .collect();
    SourceChain::new(configs, request_timeout).unwrap()
}

fn in_ms(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

fn quotes(sample: &Sample) -> Vec<(Currency, String, SourceKind)> {
    sample
        .quotes
        .iter()
        .map(|q| (q.currency, q.price.to_string(), q.source))
        .collect()
}

fn failures(sample: &Sample) -> Vec<(SourceKind, &'static str, String)> {
    sample
        .failures
        .iter()
        .map(|f| (f.source, f.error.kind(), f.error.to_string()))
        .collect()
}

fn from_coinbase() -> Vec<(Currency, String, SourceKind)> {
    vec![
        (USD, "81401.385".into(), SourceKind::Coinbase),
        (EUR, "41191.91".into(), SourceKind::Coinbase),
    ]
}

#[tokio::test]
async fn the_first_healthy_source_answers_and_later_ones_are_not_asked() {
    let kraken = FakeVendor::start(vec![(KRAKEN_BOTH, ok("kraken.json"))]).await;
    let coinbase = healthy_coinbase().await;
    let chain = chain(
        &[
            (SourceKind::Kraken, &kraken),
            (SourceKind::Coinbase, &coinbase),
        ],
        Duration::from_secs(2),
    );
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(
        quotes(&sample),
        [
            (USD, "77726.1".to_string(), SourceKind::Kraken),
            (EUR, "68644.2".to_string(), SourceKind::Kraken),
        ]
    );
    assert!(sample.failures.is_empty(), "{:?}", sample.failures);
    assert_eq!(kraken.targets(), [KRAKEN_BOTH]);
    assert!(coinbase.targets().is_empty());
}

#[tokio::test]
async fn a_server_error_falls_through_with_the_vendor_message() {
    let kraken = FakeVendor::start(vec![(
        KRAKEN_BOTH,
        status(500, r#"{"error":["EService:Unavailable"]}"#),
    )])
    .await;
    let coinbase = healthy_coinbase().await;
    let chain = chain(
        &[
            (SourceKind::Kraken, &kraken),
            (SourceKind::Coinbase, &coinbase),
        ],
        Duration::from_secs(2),
    );
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(quotes(&sample), from_coinbase());
    assert_eq!(
        failures(&sample),
        [(
            SourceKind::Kraken,
            "http_status",
            "HTTP 500 Internal Server Error: EService:Unavailable".to_string()
        )]
    );
}

#[tokio::test]
async fn rate_limits_fall_through_whether_the_page_is_html_or_json() {
    let gecko_path =
        "/api/v3/simple/price?ids=bitcoin&vs_currencies=usd,eur&include_last_updated_at=true";
    let html = FakeVendor::start(vec![(
        gecko_path,
        status(429, "<!DOCTYPE html>\n<html><body>Too many</body></html>"),
    )])
    .await;
    let json = FakeVendor::start(vec![(
        gecko_path,
        status(429, fixture("coingecko_error_429.json")),
    )])
    .await;
    let coinbase = healthy_coinbase().await;
    let chain = chain(
        &[
            (SourceKind::CoinGecko, &html),
            (SourceKind::CoinGecko, &json),
            (SourceKind::Coinbase, &coinbase),
        ],
        Duration::from_secs(2),
    );
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(quotes(&sample), from_coinbase());
    let failures = failures(&sample);
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(
        failures[0],
        (
            SourceKind::CoinGecko,
            "rate_limited",
            "HTTP 429 Too Many Requests (rate limited)".to_string()
        )
    );
    assert_eq!(failures[1].1, "rate_limited");
    assert!(
        failures[1]
            .2
            .starts_with("HTTP 429 Too Many Requests: You've exceeded the Rate Limit."),
        "{}",
        failures[1].2
    );
}

#[tokio::test]
async fn an_html_page_with_status_200_is_not_json() {
    let bitstamp = FakeVendor::start(vec![
        (
            "/api/v2/ticker/btcusd/",
            status(200, "<!DOCTYPE html>\n<html>maintenance</html>"),
        ),
        (
            "/api/v2/ticker/btceur/",
            ok("bitstamp_ticker_btceur_legacy_2020.json"),
        ),
    ])
    .await;
    let coinbase = healthy_coinbase().await;
    let chain = chain(
        &[
            (SourceKind::Bitstamp, &bitstamp),
            (SourceKind::Coinbase, &coinbase),
        ],
        Duration::from_secs(2),
    );
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    // Bitstamp's EUR request succeeded on its own, so only USD is left for Coinbase.
    assert_eq!(
        quotes(&sample),
        [
            (USD, "81401.385".to_string(), SourceKind::Coinbase),
            (EUR, "9165.14".to_string(), SourceKind::Bitstamp),
        ]
    );
    assert_eq!(
        failures(&sample),
        [(
            SourceKind::Bitstamp,
            "not_json",
            "body is not JSON (starts with \"<!DOCTYPE html>\")".to_string()
        )]
    );
    assert_eq!(coinbase.targets(), [COINBASE_USD]);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_the_next_source_answers() {
    let kraken = FakeVendor::start(vec![(KRAKEN_BOTH, Reply::Hang)]).await;
    let coinbase = healthy_coinbase().await;
    let chain = chain(
        &[
            (SourceKind::Kraken, &kraken),
            (SourceKind::Coinbase, &coinbase),
        ],
        Duration::from_millis(300),
    );
    let started = std::time::Instant::now();
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    let elapsed = started.elapsed();
    assert_eq!(quotes(&sample), from_coinbase());
    assert_eq!(
        failures(&sample),
        [(
            SourceKind::Kraken,
            "timeout",
            "request timed out after 300ms".to_string()
        )]
    );
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn a_source_giving_only_usd_lets_the_next_fill_eur() {
    let kraken = FakeVendor::start(vec![(KRAKEN_BOTH, ok("kraken_ticker_xbtusd.json"))]).await;
    let coinbase = healthy_coinbase().await;
    let chain = chain(
        &[
            (SourceKind::Kraken, &kraken),
            (SourceKind::Coinbase, &coinbase),
        ],
        Duration::from_secs(2),
    );
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(
        quotes(&sample),
        [
            (USD, "77726.1".to_string(), SourceKind::Kraken),
            (EUR, "41191.91".to_string(), SourceKind::Coinbase),
        ]
    );
    assert_eq!(
        failures(&sample),
        [(
            SourceKind::Kraken,
            "missing_field",
            "missing field result.XXBTZEUR.c[0]".to_string()
        )]
    );
    assert_eq!(coinbase.targets(), [COINBASE_EUR]);
}

#[tokio::test]
async fn the_deadline_bounds_the_whole_sample() {
    let kraken = FakeVendor::start(vec![(KRAKEN_BOTH, Reply::Hang)]).await;
    let coinbase = healthy_coinbase().await;
    let chain = chain(
        &[
            (SourceKind::Kraken, &kraken),
            (SourceKind::Coinbase, &coinbase),
        ],
        Duration::from_secs(30),
    );
    let started = std::time::Instant::now();
    let sample = chain.sample(&[USD, EUR], in_ms(300)).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert!(sample.quotes.is_empty());
    let failures = failures(&sample);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, SourceKind::Kraken);
    assert_eq!(failures[0].1, "timeout");
    // Past the deadline no new request starts.
    assert!(coinbase.targets().is_empty());
}

#[tokio::test]
async fn a_deadline_already_past_asks_nobody() {
    let coinbase = healthy_coinbase().await;
    let chain = chain(&[(SourceKind::Coinbase, &coinbase)], Duration::from_secs(2));
    let sample = chain.sample(&[USD, EUR], Instant::now()).await;
    assert_eq!(sample, Sample::default());
    assert!(coinbase.targets().is_empty());
}

#[tokio::test]
async fn requests_carry_our_user_agent_and_accept_json() {
    let coinbase = healthy_coinbase().await;
    let chain = chain(&[(SourceKind::Coinbase, &coinbase)], Duration::from_secs(2));
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(quotes(&sample), from_coinbase());
    let seen = coinbase.seen();
    assert_eq!(seen.len(), 2);
    for request in seen {
        assert_eq!(
            request.headers.get("user-agent").map(String::as_str),
            Some(concat!("pricefeed/", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(
            request.headers.get("accept").map(String::as_str),
            Some("application/json")
        );
    }
}

#[tokio::test]
async fn every_vendor_is_read_through_http() {
    /// A vendor, its routes, and the USD and EUR prices it must give.
    type Case = (SourceKind, Vec<(&'static str, Reply)>, [&'static str; 2]);
    let cases: Vec<Case> = vec![
        (
            SourceKind::Kraken,
            vec![(KRAKEN_BOTH, ok("kraken.json"))],
            ["77726.1", "68644.2"],
        ),
        (
            SourceKind::Coinbase,
            vec![
                (
                    COINBASE_USD,
                    ok("coinbase_spot_btc_usd_legacy_with_warnings.json"),
                ),
                (COINBASE_EUR, ok("coinbase_spot_btc_eur.json")),
            ],
            ["8125", "41191.91"],
        ),
        (
            SourceKind::Bitstamp,
            vec![
                ("/api/v2/ticker/btcusd/", ok("bitstamp.json")),
                (
                    "/api/v2/ticker/btceur/",
                    ok("bitstamp_ticker_btceur_legacy_2020.json"),
                ),
            ],
            ["85052.34", "9165.14"],
        ),
        (
            SourceKind::CoinGecko,
            vec![(
                "/api/v3/simple/price?ids=bitcoin&vs_currencies=usd,eur&include_last_updated_at=true",
                ok("coingecko.json"),
            )],
            ["67187.3358936566", "62185.12"],
        ),
        (
            SourceKind::CoinDesk,
            vec![("/v1/bpi/currentprice.json", ok("coindesk.json"))],
            ["59524.4038", "53958.5744"],
        ),
    ];
    for (kind, routes, [usd, eur]) in cases {
        let vendor = FakeVendor::start(routes).await;
        let chain = chain(&[(kind, &vendor)], Duration::from_secs(2));
        let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
        assert!(sample.failures.is_empty(), "{kind}: {:?}", sample.failures);
        assert_eq!(
            quotes(&sample),
            [(USD, usd.to_string(), kind), (EUR, eur.to_string(), kind)],
            "{kind}"
        );
    }
}

#[tokio::test]
async fn only_the_missing_currencies_are_requested() {
    let kraken = FakeVendor::start(vec![("/0/public/Ticker?pair=XBTEUR", ok("kraken.json"))]).await;
    let chain = chain(&[(SourceKind::Kraken, &kraken)], Duration::from_secs(2));
    let sample = chain.sample(&[EUR], in_ms(5_000)).await;
    assert_eq!(
        quotes(&sample),
        [(EUR, "68644.2".to_string(), SourceKind::Kraken)]
    );
    assert_eq!(kraken.targets(), ["/0/public/Ticker?pair=XBTEUR"]);

    // Nothing wanted, nothing asked.
    let sample = chain.sample(&[], in_ms(5_000)).await;
    assert_eq!(sample, Sample::default());
    assert_eq!(kraken.targets().len(), 1);
}

#[tokio::test]
async fn an_oversized_body_is_cut_off_and_the_next_source_answers() {
    let huge = {
        let mut body = br#"{"data":{"amount":"81401.385","pad":""#.to_vec();
        body.resize(10 * 1024 * 1024, b'x');
        body.extend_from_slice(b"\"}}");
        body
    };
    let announced = FakeVendor::start(vec![
        (COINBASE_USD, status(200, huge.clone())),
        (COINBASE_EUR, status(200, huge.clone())),
    ])
    .await;
    let streamed = Reply::Send {
        status: 200,
        body: huge,
        content_length: false,
    };
    let unannounced = FakeVendor::start(vec![
        (COINBASE_USD, streamed.clone()),
        (COINBASE_EUR, streamed),
    ])
    .await;
    let good = healthy_coinbase().await;
    let chain = chain(
        &[
            (SourceKind::Coinbase, &announced),
            (SourceKind::Coinbase, &unannounced),
            (SourceKind::Coinbase, &good),
        ],
        Duration::from_secs(5),
    );
    let sample = chain.sample(&[USD, EUR], in_ms(10_000)).await;
    assert_eq!(quotes(&sample), from_coinbase());
    let failures = failures(&sample);
    assert_eq!(failures.len(), 4, "{failures:?}");
    for (source, kind, message) in failures {
        assert_eq!(source, SourceKind::Coinbase);
        assert_eq!(kind, "not_json");
        assert_eq!(
            message,
            "body is larger than 1048576 bytes; not read past that"
        );
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let coinbase = healthy_coinbase().await;
    let chain = SourceChain::new(
        vec![
            SourceConfig::with_base_url(
                SourceKind::Kraken,
                format!("http://127.0.0.1:{closed_port}"),
            ),
            SourceConfig::with_base_url(SourceKind::Coinbase, coinbase.base_url.clone()),
        ],
        Duration::from_secs(2),
    )
    .unwrap();
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(quotes(&sample), from_coinbase());
    let failures = failures(&sample);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].1, "transport");
    assert!(
        failures[0].2.starts_with("transport error: "),
        "{}",
        failures[0].2
    );
}

#[tokio::test]
async fn vendor_errors_through_http() {
    let coinbase = FakeVendor::start(vec![
        (
            COINBASE_USD,
            status(404, fixture("coinbase_spot_error_invalid_currency.json")),
        ),
        (
            COINBASE_EUR,
            status(429, fixture("coinbase_spot_error_rate_limit.json")),
        ),
    ])
    .await;
    let kraken = FakeVendor::start(vec![(KRAKEN_BOTH, ok("kraken_error_unknown_pair.json"))]).await;
    let chain = chain(
        &[
            (SourceKind::Coinbase, &coinbase),
            (SourceKind::Kraken, &kraken),
        ],
        Duration::from_secs(2),
    );
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert!(sample.quotes.is_empty());
    assert_eq!(
        failures(&sample),
        [
            (
                SourceKind::Coinbase,
                "http_status",
                "HTTP 404 Not Found: Invalid base currency (not_found)".to_string()
            ),
            (
                SourceKind::Coinbase,
                "rate_limited",
                "HTTP 429 Too Many Requests: Too many requests (rate_limit_exceeded) (rate limited)"
                    .to_string()
            ),
            (
                SourceKind::Kraken,
                "error_body",
                "Kraken error: EQuery:Unknown asset pair".to_string()
            ),
        ]
    );
}

#[tokio::test]
async fn an_implausible_price_is_never_a_quote() {
    let coinbase = FakeVendor::start(vec![
        (COINBASE_USD, ok("coinbase.json")),
        (
            COINBASE_EUR,
            status(200, r#"{"data":{"amount":"0.0001","currency":"EUR"}}"#),
        ),
    ])
    .await;
    let chain = chain(&[(SourceKind::Coinbase, &coinbase)], Duration::from_secs(2));
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(
        quotes(&sample),
        [(USD, "81401.385".to_string(), SourceKind::Coinbase)]
    );
    assert_eq!(
        failures(&sample),
        [(
            SourceKind::Coinbase,
            "implausible_price",
            "implausible price 0.0001 (outside 1..=10000000) at data.amount".to_string()
        )]
    );
}

#[tokio::test]
async fn the_demo_source_needs_no_network_and_says_so() {
    let chain = SourceChain::new(
        vec![SourceConfig::new(SourceKind::Demo)],
        Duration::from_secs(1),
    )
    .unwrap();
    assert!(chain.uses_demo());
    assert_eq!(chain.kinds(), [SourceKind::Demo]);
    let mut last_usd = None;
    for _ in 0..20 {
        let sample = chain.sample(&[EUR, USD], in_ms(1_000)).await;
        assert!(sample.failures.is_empty());
        // Quotes come in the order the currencies were asked for.
        assert_eq!(sample.quotes.len(), 2);
        assert_eq!(sample.quotes[0].currency, EUR);
        let usd = sample.quote(USD).unwrap();
        let eur = sample.quote(EUR).unwrap();
        assert_eq!(usd.source, SourceKind::Demo);
        let (usd, eur) = (usd.price.as_f64(), eur.price.as_f64());
        assert!((90_000.0..=105_000.0).contains(&usd), "{usd}");
        assert!((eur / usd - 0.92).abs() < 0.0001, "{usd} {eur}");
        if let Some(last) = last_usd {
            let step: f64 = (usd - last) / last;
            assert!(step.abs() <= 0.0005 + 0.000_001, "{last} -> {usd}");
        }
        last_usd = Some(usd);
    }
}

#[tokio::test]
async fn the_demo_source_can_be_the_last_resort() {
    let kraken = FakeVendor::start(vec![(KRAKEN_BOTH, status(500, ""))]).await;
    let chain = SourceChain::new(
        vec![
            SourceConfig::with_base_url(SourceKind::Kraken, kraken.base_url.clone()),
            SourceConfig::new(SourceKind::Demo),
        ],
        Duration::from_secs(1),
    )
    .unwrap();
    assert!(chain.uses_demo());
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert!(sample.quotes.iter().all(|q| q.source == SourceKind::Demo));
    assert_eq!(sample.quotes.len(), 2);
    assert_eq!(
        failures(&sample),
        [(
            SourceKind::Kraken,
            "http_status",
            "HTTP 500 Internal Server Error".to_string()
        )]
    );
}

#[test]
fn bad_configurations_are_refused() {
    assert!(matches!(
        SourceChain::new(Vec::new(), Duration::from_secs(1)),
        Err(ConfigError::Empty)
    ));
    let err = SourceChain::new(
        vec![SourceConfig::with_base_url(
            SourceKind::Kraken,
            "api.kraken.com",
        )],
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad base URL \"api.kraken.com\" for source kraken: relative URL without a base"
    );
    let chain = SourceChain::new(
        DEFAULT_CHAIN
            .iter()
            .map(|k| SourceConfig::new(*k))
            .collect(),
        Duration::from_secs(1),
    )
    .unwrap();
    assert!(!chain.uses_demo());
    assert_eq!(chain.kinds(), DEFAULT_CHAIN);
}

#[test]
fn sampling_can_run_on_a_spawned_task() {
    fn assert_send<T: Send>(_: &T) {}
    let chain = SourceChain::new(
        vec![SourceConfig::new(SourceKind::Demo)],
        Duration::from_secs(1),
    )
    .unwrap();
    let future = chain.sample(&[USD], Instant::now());
    assert_send(&future);
}

/// Collects everything a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[tokio::test]
async fn each_failure_is_logged_once_and_demo_data_is_announced() {
    let capture = LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    // The test runtime is single-threaded, so a thread-local default sees every event.
    let _guard = tracing::subscriber::set_default(subscriber);

    let kraken = FakeVendor::start(vec![(KRAKEN_BOTH, status(500, ""))]).await;
    let chain = SourceChain::new(
        vec![
            SourceConfig::with_base_url(SourceKind::Kraken, kraken.base_url.clone()),
            SourceConfig::new(SourceKind::Demo),
        ],
        Duration::from_secs(1),
    )
    .unwrap();
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(sample.quotes.len(), 2);

    let lines = capture.lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    assert!(lines[0].contains("DEMO DATA"), "{}", lines[0]);
    assert!(lines[1].contains("WARN"), "{}", lines[1]);
    assert!(lines[1].contains("price source failed"), "{}", lines[1]);
    assert!(lines[1].contains("source=kraken"), "{}", lines[1]);
    assert!(lines[1].contains("kind=\"http_status\""), "{}", lines[1]);
    assert!(
        lines[1].contains("error=HTTP 500 Internal Server Error"),
        "{}",
        lines[1]
    );
}

const COINDESK: &str = "/v1/bpi/currentprice.json";

#[tokio::test]
async fn a_source_whose_answer_is_dated_long_ago_is_frozen_and_the_next_one_answers() {
    // The recorded CoinDesk answer is dated 2024-08-18: today, a mirror serving it is frozen.
    let coindesk = FakeVendor::start(vec![(COINDESK, ok("coindesk.json"))]).await;
    let coinbase = healthy_coinbase().await;
    let chain = chain(
        &[
            (SourceKind::CoinDesk, &coindesk),
            (SourceKind::Coinbase, &coinbase),
        ],
        Duration::from_secs(2),
    )
    .with_max_age(Duration::from_secs(300));
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(
        quotes(&sample),
        from_coinbase(),
        "never CoinDesk's 2024 price"
    );
    let failures = failures(&sample);
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (source, kind, message) = &failures[0];
    assert_eq!((*source, *kind), (SourceKind::CoinDesk, "stale"));
    assert!(
        message.starts_with("the answer is dated 2024-08-18T04:19:23Z, ")
            && message.ends_with(" s ago (more than 300 s): a frozen source, not a live price"),
        "{message}"
    );

    // The same answer dated now is a live price.
    let now = ticks::Timedate::now().to_string();
    let fresh = String::from_utf8(fixture("coindesk.json"))
        .unwrap()
        .replace("2024-08-18T04:19:23+00:00", &now);
    let coindesk = FakeVendor::start(vec![(COINDESK, status(200, fresh))]).await;
    let chain = self::chain(&[(SourceKind::CoinDesk, &coindesk)], Duration::from_secs(2))
        .with_max_age(Duration::from_secs(300));
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(
        quotes(&sample),
        vec![
            (USD, "59524.4038".into(), SourceKind::CoinDesk),
            (EUR, "53958.5744".into(), SourceKind::CoinDesk),
        ]
    );
    assert!(sample.failures.is_empty());
}

#[tokio::test]
async fn a_source_that_keeps_failing_is_skipped_then_probed_with_a_growing_cooldown() {
    // Kraken never answers: without a breaker every sample would wait its timeout first.
    let kraken = FakeVendor::start(vec![(KRAKEN_BOTH, Reply::Hang)]).await;
    let coinbase = healthy_coinbase().await;
    let chain = chain(
        &[
            (SourceKind::Kraken, &kraken),
            (SourceKind::Coinbase, &coinbase),
        ],
        Duration::from_millis(200),
    )
    .with_breaker_cooldown(Duration::from_millis(600), Duration::from_secs(5));
    let kinds = |sample: &Sample| -> Vec<(SourceKind, &'static str)> {
        failures(sample)
            .into_iter()
            .map(|(s, k, _)| (s, k))
            .collect()
    };
    for n in 1..=3 {
        let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
        assert_eq!(quotes(&sample), from_coinbase());
        assert_eq!(kinds(&sample), vec![(SourceKind::Kraken, "timeout")]);
        assert_eq!(kraken.seen().len(), n, "asked in sample {n}");
    }
    // Tripped: skipped without a request, the failure says so, Coinbase answers at once.
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(quotes(&sample), from_coinbase());
    assert_eq!(kinds(&sample), vec![(SourceKind::Kraken, "circuit_open")]);
    assert!(
        failures(&sample)[0]
            .2
            .starts_with("skipped: it failed 3 samples in a row; asked again in "),
        "{:?}",
        failures(&sample)
    );
    assert_eq!(kraken.seen().len(), 3, "not asked while skipped");
    // After the cooldown, one probe; it fails, so skipped again (for twice as long).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(kinds(&sample), vec![(SourceKind::Kraken, "timeout")]);
    assert_eq!(kraken.seen().len(), 4, "one probe");
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(kinds(&sample), vec![(SourceKind::Kraken, "circuit_open")]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(
        kinds(&sample),
        vec![(SourceKind::Kraken, "circuit_open")],
        "the second cooldown is 1.2 s"
    );
    assert_eq!(kraken.seen().len(), 4);
}

#[tokio::test]
async fn a_tripped_source_that_answers_its_probe_is_asked_first_again() {
    // Coinbase fails (500) three samples in a row: a vendor in an outage, then back.
    let coinbase = FakeVendor::start(vec![
        (COINBASE_USD, status(500, "down")),
        (COINBASE_EUR, status(500, "down")),
    ])
    .await;
    let kraken = FakeVendor::start(vec![(KRAKEN_BOTH, ok("kraken.json"))]).await;
    let chain = chain(
        &[
            (SourceKind::Coinbase, &coinbase),
            (SourceKind::Kraken, &kraken),
        ],
        Duration::from_millis(500),
    )
    .with_breaker_cooldown(Duration::from_millis(300), Duration::from_secs(5));
    for _ in 0..3 {
        let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
        assert_eq!(sample.quotes.len(), 2, "Kraken fills in");
    }
    let asked = coinbase.seen().len();
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(coinbase.seen().len(), asked, "skipped");
    assert!(sample.quotes.iter().all(|q| q.source == SourceKind::Kraken));
    // Back: the probe after the cooldown answers, and Coinbase is the first source again.
    coinbase.set(COINBASE_USD, ok("coinbase.json"));
    coinbase.set(COINBASE_EUR, ok("coinbase_spot_btc_eur.json"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..2 {
        let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
        assert_eq!(quotes(&sample), from_coinbase());
        assert!(sample.failures.is_empty(), "{:?}", failures(&sample));
    }
}

#[tokio::test]
async fn when_every_source_is_skipped_they_are_asked_anyway_so_recovery_is_not_delayed() {
    let coinbase = FakeVendor::start(vec![
        (COINBASE_USD, status(500, "down")),
        (COINBASE_EUR, status(500, "down")),
    ])
    .await;
    let kraken = FakeVendor::start(vec![(KRAKEN_BOTH, status(500, "down"))]).await;
    let chain = chain(
        &[
            (SourceKind::Coinbase, &coinbase),
            (SourceKind::Kraken, &kraken),
        ],
        Duration::from_millis(500),
    );
    for _ in 0..3 {
        assert!(
            chain
                .sample(&[USD, EUR], in_ms(5_000))
                .await
                .quotes
                .is_empty()
        );
    }
    // Both tripped (30 s cooldown). Kraken is back: the very next sample has its prices.
    kraken.set(KRAKEN_BOTH, ok("kraken.json"));
    let sample = chain.sample(&[USD, EUR], in_ms(5_000)).await;
    assert_eq!(
        quotes(&sample),
        vec![
            (USD, "77726.1".into(), SourceKind::Kraken),
            (EUR, "68644.2".into(), SourceKind::Kraken),
        ]
    );
}

#[tokio::test]
async fn a_second_opinion_asks_every_source_but_the_one_whose_price_jumped() {
    let kraken = FakeVendor::start(vec![(KRAKEN_BOTH, ok("kraken.json"))]).await;
    let coinbase = healthy_coinbase().await;
    let chain = chain(
        &[
            (SourceKind::Kraken, &kraken),
            (SourceKind::Coinbase, &coinbase),
        ],
        Duration::from_secs(2),
    );
    let (quote, failures) = chain.confirm(USD, SourceKind::Kraken, in_ms(5_000)).await;
    let quote = quote.expect("Coinbase answers");
    assert_eq!(
        (quote.currency, quote.price.to_string(), quote.source),
        (USD, "81401.385".to_string(), SourceKind::Coinbase)
    );
    assert!(failures.is_empty());
    assert!(
        kraken.seen().is_empty(),
        "the jumping source is not its own witness"
    );
    assert_eq!(coinbase.targets(), vec![COINBASE_USD.to_string()]);
    // With no other source, no second opinion.
    let alone = self::chain(&[(SourceKind::Kraken, &kraken)], Duration::from_secs(2));
    assert!(
        alone
            .confirm(USD, SourceKind::Kraken, in_ms(5_000))
            .await
            .0
            .is_none()
    );
}

#[tokio::test]
async fn a_tripped_source_is_announced_once_however_long_it_stays_down() {
    let capture = LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The only source is down: tripped after 3 samples, then asked anyway every sample (no other
    // source could answer), each failure extending the breaker.
    let kraken = FakeVendor::start(vec![(KRAKEN_BOTH, status(500, ""))]).await;
    let chain = chain(&[(SourceKind::Kraken, &kraken)], Duration::from_secs(1));
    for _ in 0..10 {
        assert!(
            chain
                .sample(&[USD, EUR], in_ms(5_000))
                .await
                .quotes
                .is_empty()
        );
    }
    let lines = capture.lines();
    let trips = lines
        .iter()
        .filter(|l| l.contains("the source keeps failing"))
        .count();
    assert_eq!(trips, 1, "{lines:#?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("price source failed"))
            .count(),
        10,
        "each failure is still said"
    );
}
