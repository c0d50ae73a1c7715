//! The chain of sources: one HTTP client, the requests each vendor needs, and the fall-through.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use reqwest::{Client, StatusCode, Url};
use ticks::{Currency, Price};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::demo::DemoWalk;
use crate::error::{ConfigError, SourceError};
use crate::parse::{PerCurrency, kraken_pair, parse_each, vendor_error_in, vendor_time};
use crate::{SourceKind, distinct};

/// The most bytes read from one response. A ticker answer is well under 2 KiB; this only stops a
/// broken or hostile server from filling memory.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Samples in a row in which a source gave no price before its circuit breaker skips it.
pub const BREAKER_TRIPS_AFTER: u32 = 3;
/// How long a tripped source is first skipped before one probe; doubled each time a probe fails,
/// up to [`BREAKER_COOLDOWN_MAX`].
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);
pub const BREAKER_COOLDOWN_MAX: Duration = Duration::from_secs(300);

/// Some vendors (Kraken, CoinGecko behind Cloudflare) refuse requests without a User-Agent.
const USER_AGENT: &str = concat!("pricefeed/", env!("CARGO_PKG_VERSION"));

/// One source in a chain, and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// The API root, e.g. `https://api.kraken.com` or a local fake such as `http://127.0.0.1:PORT`;
    /// the source appends its own path. Empty means [`SourceKind::default_base_url`]. Ignored for
    /// the demo source.
    pub base_url: String,
}

impl SourceConfig {
    /// The source at its vendor's public URL.
    pub fn new(kind: SourceKind) -> SourceConfig {
        SourceConfig {
            kind,
            base_url: kind.default_base_url().to_string(),
        }
    }

    /// The source at another URL: a mirror, a proxy, a test server.
    pub fn with_base_url(kind: SourceKind, base_url: impl Into<String>) -> SourceConfig {
        SourceConfig {
            kind,
            base_url: base_url.into(),
        }
    }
}

/// What one call to [`SourceChain::sample`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// At most one quote per wanted currency, in the order the currencies were asked for. A
    /// currency no source answered for is absent.
    pub quotes: Vec<Quote>,
    /// Every failure on the way, in the order they happened, including those of sources whose
    /// currencies a later source then supplied.
    pub failures: Vec<SourceFailure>,
}

impl Sample {
    /// The quote for `currency`, if some source gave one.
    pub fn quote(&self, currency: Currency) -> Option<&Quote> {
        self.quotes.iter().find(|q| q.currency == currency)
    }
}

/// A validated price and the source it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    pub currency: Currency,
    pub price: Price,
    pub source: SourceKind,
}

/// One source that did not give a price for one request (or one currency of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFailure {
    pub source: SourceKind,
    pub error: SourceError,
}

impl fmt::Display for SourceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.error)
    }
}

/// An ordered list of price sources sharing one HTTP client.
#[derive(Debug)]
pub struct SourceChain {
    sources: Vec<Source>,
    client: Client,
    request_timeout: Duration,
    /// An answer the vendor dated longer ago than this is a [`SourceError::Stale`].
    max_age: Option<Duration>,
    /// One per source, in order.
    breakers: Mutex<Vec<Breaker>>,
    /// The first cooldown of a tripped breaker, and the longest.
    cooldown: (Duration, Duration),
    /// One walk for the whole chain, so listing `demo` twice does not fork the price.
    demo: Option<DemoWalk>,
}

/// A source's circuit breaker: a source that keeps failing (a dead vendor that costs a timeout)
/// is skipped for a while instead of delaying every slot, then probed with one request.
#[derive(Debug, Default)]
struct Breaker {
    /// Samples in a row in which the source gave no price.
    failures: u32,
    /// While set and in the future, the source is skipped.
    open_until: Option<Instant>,
    /// The next cooldown; doubles each time a probe fails.
    cooldown: Duration,
}

#[derive(Debug)]
struct Source {
    kind: SourceKind,
    /// Validated, without a trailing slash; empty for the demo source.
    base: String,
}

impl SourceChain {
    /// Builds a chain that tries `sources` in the given order, each HTTP request limited to
    /// `request_timeout` (and to what is left before a sample's deadline).
    ///
    /// Errors: a bad base URL (not http or https, or with a query, fragment or credentials), an
    /// empty list, or the HTTP client failing to build.
    pub fn new(
        sources: Vec<SourceConfig>,
        request_timeout: Duration,
    ) -> Result<SourceChain, ConfigError> {
        if sources.is_empty() {
            return Err(ConfigError::Empty);
        }
        let sources = sources
            .iter()
            .map(|config| {
                Ok(Source {
                    kind: config.kind,
                    base: validate_base_url(config.kind, &config.base_url)?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;

        // reqwest is built without a crypto backend of its own, so rustls needs a process-wide
        // default. An Err means some other part of the process installed one first; that one
        // serves just as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let client = Client::builder()
            .user_agent(USER_AGENT)
            .default_headers(headers)
            .build()
            .map_err(ConfigError::Client)?;

        let demo = sources.iter().any(|s| s.kind.is_demo()).then(|| {
            warn!(
                source = %SourceKind::Demo,
                "the demo source is configured: its prices are DEMO DATA from a random walk, \
                 not market prices"
            );
            DemoWalk::new()
        });
        Ok(SourceChain {
            breakers: Mutex::new(sources.iter().map(|_| Breaker::default()).collect()),
            sources,
            client,
            request_timeout,
            max_age: None,
            cooldown: (BREAKER_COOLDOWN, BREAKER_COOLDOWN_MAX),
            demo,
        })
    }

    /// Sets how long a tripped source is first skipped, and the longest (tests).
    pub fn with_breaker_cooldown(mut self, first: Duration, max: Duration) -> SourceChain {
        self.cooldown = (first, max.max(first));
        self
    }

    fn breakers(&self) -> std::sync::MutexGuard<'_, Vec<Breaker>> {
        self.breakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether source `i` is skipped now; if so, the failure that says so.
    fn skipped(&self, i: usize) -> Option<SourceError> {
        let breakers = self.breakers();
        let breaker = &breakers[i];
        let until = breaker.open_until?;
        let now = Instant::now();
        (now < until).then(|| SourceError::CircuitOpen {
            failures: breaker.failures,
            retry_in: until - now,
        })
    }

    /// Records whether source `i` gave any price this sample.
    fn settle_breaker(&self, i: usize, answered: bool) {
        let kind = self.sources[i].kind;
        let mut breakers = self.breakers();
        let breaker = &mut breakers[i];
        if answered {
            if breaker.open_until.is_some() {
                info!(source = %kind, "the source answers again; no longer skipped");
            }
            *breaker = Breaker::default();
            return;
        }
        breaker.failures += 1;
        let probe_failed = breaker.open_until.is_some();
        if breaker.failures >= BREAKER_TRIPS_AFTER {
            let (first, max) = self.cooldown;
            let cooldown = if probe_failed {
                (breaker.cooldown * 2).min(max)
            } else {
                first
            };
            breaker.cooldown = cooldown;
            breaker.open_until = Some(Instant::now() + cooldown);
            // Said once, when it trips; a failed probe (or, with every source tripped, each
            // slot's ask-anyway) only extends it.
            if probe_failed {
                debug!(source = %kind, failures = breaker.failures, skipped_for = ?cooldown,
                    "the source still fails; skipped for longer");
            } else {
                warn!(
                    source = %kind,
                    failures = breaker.failures,
                    skipped_for = ?cooldown,
                    "the source keeps failing; skipping it, then one probe"
                );
            }
        }
    }

    /// Refuses answers that their vendor dated more than `max_age` ago (for the vendors that date
    /// them: see [`vendor_time`]): a frozen source's old price is a source error, not a live price.
    pub fn with_max_age(mut self, max_age: Duration) -> SourceChain {
        self.max_age = Some(max_age);
        self
    }

    /// Whether any price this chain gives may be made up.
    pub fn uses_demo(&self) -> bool {
        self.demo.is_some()
    }

    /// The sources, in the order they are tried.
    pub fn kinds(&self) -> Vec<SourceKind> {
        self.sources.iter().map(|s| s.kind).collect()
    }

    /// Tries sources in order until every wanted currency has a valid price or `deadline` passes.
    ///
    /// A source that gives only some currencies keeps them; later sources are asked only for the
    /// rest. Each HTTP request's timeout is `min(request_timeout, deadline - now)`, and no new
    /// request starts once the deadline has passed. Every failure is logged once, at `warn`, and
    /// returned in [`Sample::failures`]. Never panics.
    pub async fn sample(&self, wanted: &[Currency], deadline: Instant) -> Sample {
        let mut missing = distinct(wanted);
        let mut sample = Sample::default();
        // Sources whose breaker is open are passed over while others can answer; if none could,
        // they are asked after all (a breaker saves time, it must not cost a price).
        let mut passed_over = Vec::new();
        for i in 0..self.sources.len() {
            if missing.is_empty() || Instant::now() >= deadline {
                break;
            }
            if let Some(skipped) = self.skipped(i) {
                passed_over.push((i, skipped));
                continue;
            }
            self.take(i, &mut missing, &mut sample, deadline).await;
        }
        for (i, skipped) in passed_over {
            let kind = self.sources[i].kind;
            if missing.is_empty() || Instant::now() >= deadline {
                debug!(source = %kind, error = %skipped, "price source skipped");
                sample.failures.push(SourceFailure {
                    source: kind,
                    error: skipped,
                });
            } else {
                self.take(i, &mut missing, &mut sample, deadline).await;
            }
        }
        sample
            .quotes
            .sort_by_key(|q| wanted.iter().position(|c| *c == q.currency));
        sample
    }

    /// A second opinion on `currency`, whose price from `except` jumped: the other sources, in
    /// order (a tripped one passed over), until one gives a price or `deadline` passes. Returns
    /// the quote, if any, and the failures on the way.
    pub async fn confirm(
        &self,
        currency: Currency,
        except: SourceKind,
        deadline: Instant,
    ) -> (Option<Quote>, Vec<SourceFailure>) {
        let mut missing = vec![currency];
        let mut sample = Sample::default();
        for i in 0..self.sources.len() {
            let kind = self.sources[i].kind;
            if kind == except || missing.is_empty() || Instant::now() >= deadline {
                continue;
            }
            if self.skipped(i).is_some() {
                continue;
            }
            self.take(i, &mut missing, &mut sample, deadline).await;
        }
        (sample.quotes.pop(), sample.failures)
    }

    /// Asks source `i` for the `missing` currencies, moves what it answers into `sample`, and
    /// tells its breaker whether it gave any price.
    async fn take(
        &self,
        i: usize,
        missing: &mut Vec<Currency>,
        sample: &mut Sample,
        deadline: Instant,
    ) {
        let source = &self.sources[i];
        let mut answered = false;
        for outcome in self.ask(source, missing, deadline).await {
            let per_currency = match outcome {
                Ok(per_currency) => per_currency,
                Err(error) => {
                    sample.failures.push(failure(source.kind, error));
                    continue;
                }
            };
            for (currency, price) in per_currency {
                answered |= price.is_ok();
                match price {
                    Ok(price) if missing.contains(&currency) => {
                        debug!(source = %source.kind, %currency, %price, "price sampled");
                        missing.retain(|c| *c != currency);
                        sample.quotes.push(Quote {
                            currency,
                            price,
                            source: source.kind,
                        });
                    }
                    Ok(_) => {}
                    Err(error) => sample.failures.push(failure(source.kind, error)),
                }
            }
        }
        if !source.kind.is_demo() {
            self.settle_breaker(i, answered);
        }
    }

    /// Asks one source for `missing`: one outcome per HTTP request made (one in all for the demo).
    async fn ask(
        &self,
        source: &Source,
        missing: &[Currency],
        deadline: Instant,
    ) -> Vec<Result<PerCurrency, SourceError>> {
        if source.kind.is_demo() {
            let Some(demo) = &self.demo else {
                return Vec::new();
            };
            let prices = demo.next(missing);
            return vec![Ok(prices.into_iter().map(|(c, p)| (c, Ok(p))).collect())];
        }
        // Per-currency requests go out together: the deadline is shared, not per request.
        join_all(
            requests(source.kind, &source.base, missing)
                .into_iter()
                .map(|(currencies, url)| async move {
                    let body = self.fetch(source.kind, &url, deadline).await?;
                    let per_currency = parse_each(source.kind, &currencies, &body)?;
                    self.check_age(source.kind, &body)?;
                    Ok(per_currency)
                }),
        )
        .await
    }

    /// A body whose vendor dated it longer ago than the maximum age is stale.
    fn check_age(&self, kind: SourceKind, body: &[u8]) -> Result<(), SourceError> {
        let (Some(max), Some(at)) = (self.max_age, vendor_time(kind, body)) else {
            return Ok(());
        };
        let age = ticks::Timedate::now().duration_since(at);
        if age > max {
            return Err(SourceError::Stale { at, age, max });
        }
        Ok(())
    }

    /// GETs `url` and returns its body if the status is 2xx, within the request's time budget.
    async fn fetch(
        &self,
        kind: SourceKind,
        url: &str,
        deadline: Instant,
    ) -> Result<Vec<u8>, SourceError> {
        let budget = self
            .request_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        if budget.is_zero() {
            return Err(SourceError::Timeout { after: budget });
        }
        // One timer over connect, headers and body, so a server that trickles bytes cannot stretch
        // a request past its budget.
        tokio::time::timeout(budget, self.get(kind, url))
            .await
            .unwrap_or(Err(SourceError::Timeout { after: budget }))
    }

    async fn get(&self, kind: SourceKind, url: &str) -> Result<Vec<u8>, SourceError> {
        let mut response = self.client.get(url).send().await.map_err(transport)?;
        let status = response.status();
        let body = read_capped(&mut response).await;
        if status.is_success() {
            return body;
        }
        // The status is the news; the body, if it is readable JSON, only explains it.
        let vendor = body.ok().and_then(|b| vendor_error_in(kind, &b));
        let reason = status.canonical_reason().unwrap_or("(unknown status)");
        let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
            || vendor.as_ref().is_some_and(|v| v.rate_limited);
        let message = vendor.map(|v| v.message);
        if rate_limited {
            let mut what = format!("HTTP {} {reason}", status.as_u16());
            if let Some(message) = message {
                what = format!("{what}: {message}");
            }
            return Err(SourceError::RateLimited { what });
        }
        Err(SourceError::HttpStatus {
            status: status.as_u16(),
            reason: reason.to_string(),
            message,
        })
    }
}

fn failure(source: SourceKind, error: SourceError) -> SourceFailure {
    warn!(%source, kind = error.kind(), %error, "price source failed");
    SourceFailure { source, error }
}

/// Reads at most [`MAX_BODY_BYTES`]; a longer body is an error and the rest is never downloaded.
async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, SourceError> {
    let too_large = SourceError::TooLarge {
        limit: MAX_BODY_BYTES,
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The whole cause chain in one line ("… : tcp connect error: Connection refused"), so the error
/// can be cloned and logged once.
fn transport(error: reqwest::Error) -> SourceError {
    let mut detail = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(c) = cause {
        let text = c.to_string();
        if !detail.ends_with(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        cause = c.source();
    }
    SourceError::Transport { detail }
}

/// The requests a source needs for `missing`: the currencies each answers for, and its URL.
fn requests(kind: SourceKind, base: &str, missing: &[Currency]) -> Vec<(Vec<Currency>, String)> {
    let lower = |c: Currency| c.code().to_ascii_lowercase();
    match kind {
        SourceKind::Kraken => {
            let pairs: Vec<&str> = missing.iter().map(|c| kraken_pair(*c).request).collect();
            vec![(
                missing.to_vec(),
                format!("{base}/0/public/Ticker?pair={}", pairs.join(",")),
            )]
        }
        SourceKind::CoinGecko => {
            let codes: Vec<String> = missing.iter().map(|c| lower(*c)).collect();
            vec![(
                missing.to_vec(),
                format!(
                    "{base}/api/v3/simple/price?ids=bitcoin&vs_currencies={}\
                     &include_last_updated_at=true",
                    codes.join(",")
                ),
            )]
        }
        SourceKind::CoinDesk => {
            vec![(missing.to_vec(), format!("{base}/v1/bpi/currentprice.json"))]
        }
        SourceKind::Coinbase => missing
            .iter()
            .map(|c| (vec![*c], format!("{base}/v2/prices/BTC-{}/spot", c.code())))
            .collect(),
        SourceKind::Bitstamp => missing
            .iter()
            .map(|c| (vec![*c], format!("{base}/api/v2/ticker/btc{}/", lower(*c))))
            .collect(),
        SourceKind::Demo => Vec::new(),
    }
}

/// The base URL to build request URLs on, without a trailing slash.
fn validate_base_url(kind: SourceKind, url: &str) -> Result<String, ConfigError> {
    if kind.is_demo() {
        return Ok(String::new());
    }
    let url = match url.trim() {
        "" => kind.default_base_url(),
        trimmed => trimmed,
    };
    let bad = |reason: &str| ConfigError::BadBaseUrl {
        kind,
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if parsed.host().is_none() {
        return Err(bad("there is no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad(
            "it must not have a query or fragment: the source appends its own path and query",
        ));
    }
    // Request URLs appear in transport errors, and so in logs.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("it must not contain credentials"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_urls_ask_only_for_what_is_missing() {
        let base = "http://h";
        let urls = |kind, missing: &[Currency]| -> Vec<String> {
            requests(kind, base, missing)
                .into_iter()
                .map(|(_, u)| u)
                .collect()
        };
        assert_eq!(
            urls(SourceKind::Kraken, &Currency::ALL),
            ["http://h/0/public/Ticker?pair=XBTUSD,XBTEUR"]
        );
        assert_eq!(
            urls(SourceKind::Kraken, &[Currency::EUR]),
            ["http://h/0/public/Ticker?pair=XBTEUR"]
        );
        assert_eq!(
            urls(SourceKind::Coinbase, &Currency::ALL),
            [
                "http://h/v2/prices/BTC-USD/spot",
                "http://h/v2/prices/BTC-EUR/spot"
            ]
        );
        assert_eq!(
            urls(SourceKind::Bitstamp, &Currency::ALL),
            [
                "http://h/api/v2/ticker/btcusd/",
                "http://h/api/v2/ticker/btceur/"
            ]
        );
        assert_eq!(
            urls(SourceKind::CoinGecko, &Currency::ALL),
            [
                "http://h/api/v3/simple/price?ids=bitcoin&vs_currencies=usd,eur\
                 &include_last_updated_at=true"
            ]
        );
        assert_eq!(
            urls(SourceKind::CoinDesk, &[Currency::USD]),
            ["http://h/v1/bpi/currentprice.json"]
        );
        assert!(urls(SourceKind::Demo, &Currency::ALL).is_empty());
    }

    #[test]
    fn base_urls_are_validated_and_normalised() {
        let ok = |kind, url| validate_base_url(kind, url).unwrap();
        assert_eq!(
            ok(SourceKind::Kraken, "http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            ok(SourceKind::CoinDesk, "https://mirror.example/coindesk/"),
            "https://mirror.example/coindesk"
        );
        assert_eq!(ok(SourceKind::Bitstamp, ""), "https://www.bitstamp.net");
        assert_eq!(ok(SourceKind::Demo, "whatever"), "");
        for bad in [
            "api.kraken.com",
            "ftp://api.kraken.com",
            "https://api.kraken.com/?x=1",
            "https://api.kraken.com/#frag",
            "https://user:secret@api.kraken.com",
            "http://",
        ] {
            let err = validate_base_url(SourceKind::Kraken, bad).unwrap_err();
            assert!(
                matches!(err, ConfigError::BadBaseUrl { .. }),
                "{bad}: {err}"
            );
        }
    }
}
