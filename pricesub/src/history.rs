//! A client of the history API (`GET /v1/ticks`), with failover across replicas and paging.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use ticks::wire::WireTick;
use ticks::{Currency, Gap, Interval, Tick, Timedate};

/// Ticks per page asked for; the server caps it anyway.
const PAGE: usize = 10_000;
/// Pages of one backfill, at most: a client asking for years of history gets an error, not an OOM.
const MAX_PAGES: usize = 1_000;

/// The longest `Retry-After` obeyed: a server asking for more is asked again after this.
const MAX_RETRY_AFTER_S: u64 = 60;

/// Why history could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{url} is not a usable history URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("no history server answered ({0})")]
    Unavailable(String),
    #[error("history server {url} refused the request: HTTP {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// 429, or 503 with `Retry-After`: the server asks us to come back later. Retried, never
    /// sooner than it asked.
    #[error("history server {url} is busy (HTTP {status}); retrying in {}s", .retry_after.as_secs())]
    Busy {
        url: String,
        status: u16,
        retry_after: Duration,
    },
    #[error("history server {url} sent an answer that is not a tick page: {reason}")]
    BadAnswer { url: String, reason: String },
    #[error("the backfill is longer than {MAX_PAGES} pages; ask for a later --since")]
    TooLong,
}

/// Everything the history servers hold for a range.
#[derive(Debug, Default)]
pub struct Backfill {
    /// Per currency, oldest first.
    pub ticks: BTreeMap<Currency, Vec<Tick>>,
    pub gaps: Vec<Gap>,
    pub interval: Option<Interval>,
    /// The server does not hold ticks that far back.
    pub since_before_earliest: bool,
}

/// One page of an answer.
#[derive(Debug, Default)]
pub struct HistoryPage {
    /// Per currency, oldest first.
    pub ticks: BTreeMap<Currency, Vec<Tick>>,
    pub gaps: Vec<Gap>,
    pub interval: Option<Interval>,
    /// The newest tick the server holds of the asked currencies; None on a closed page (cut by
    /// the limit before the newest tick of every asked currency), which never changes.
    pub latest: Option<Timedate>,
    pub since_before_earliest: bool,
    /// Set when the limit cut the page: where the next one starts.
    pub next_cursor: Option<String>,
}

/// An answer as it is sent.
#[derive(Deserialize)]
struct Page {
    ticks: BTreeMap<Currency, Vec<WireTick>>,
    #[serde(default)]
    gaps: Vec<Gap>,
    #[serde(default)]
    next_cursor: Option<String>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    latest: Option<Timedate>,
    #[serde(default)]
    since_before_earliest: bool,
}

impl From<Page> for HistoryPage {
    fn from(page: Page) -> HistoryPage {
        HistoryPage {
            ticks: page
                .ticks
                .into_iter()
                .map(|(currency, ticks)| {
                    let ticks = ticks
                        .into_iter()
                        .map(|w| Tick {
                            currency,
                            timedate: w.timedate,
                            price: w.price,
                        })
                        .collect();
                    (currency, ticks)
                })
                .collect(),
            gaps: page.gaps,
            interval: page.interval.and_then(|i| i.parse().ok()),
            latest: page.latest,
            since_before_earliest: page.since_before_earliest,
            next_cursor: page.next_cursor,
        }
    }
}

/// Where a page starts.
enum Start<'a> {
    Since(Timedate),
    Cursor(&'a str),
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
}

/// History replicas, tried in order for each request.
#[derive(Clone)]
pub struct HistoryClient {
    bases: Vec<String>,
    http: reqwest::Client,
    timeout: Duration,
}

/// One HTTP client per process: building one loads the system's root certificates, which a
/// profile of 5,000 subscriptions starting at once showed as a quarter of the client's CPU.
fn shared_client() -> Result<reqwest::Client, HistoryError> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client.clone());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .user_agent(concat!("pricesub/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
    Ok(CLIENT.get_or_init(|| client).clone())
}

impl HistoryClient {
    pub fn new(bases: &[String], timeout: Duration) -> Result<HistoryClient, HistoryError> {
        let mut clean = Vec::new();
        for base in bases {
            let trimmed = base.trim_end_matches('/').to_string();
            let parsed = reqwest::Url::parse(&trimmed).map_err(|e| HistoryError::BadUrl {
                url: base.clone(),
                reason: e.to_string(),
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(HistoryError::BadUrl {
                    url: base.clone(),
                    reason: "expected http:// or https://".into(),
                });
            }
            clean.push(trimmed);
        }
        let http = shared_client()?;
        Ok(HistoryClient {
            bases: clean,
            http,
            timeout,
        })
    }

    /// Every tick of `currencies` with `timedate >= since`, and the gaps in that range, from the
    /// first server that answers.
    pub async fn fetch(
        &self,
        currencies: &[Currency],
        since: Timedate,
    ) -> Result<Backfill, HistoryError> {
        self.fetch_starting_at(0, currencies, since).await
    }

    /// [`HistoryClient::fetch`] asking the servers in turn from number `first` (modulo their
    /// count): asking again with the next number asks another replica first.
    pub async fn fetch_starting_at(
        &self,
        first: usize,
        currencies: &[Currency],
        since: Timedate,
    ) -> Result<Backfill, HistoryError> {
        self.first_answer(first, |base| self.fetch_from(base, currencies, since))
            .await
    }

    /// One page of at most `limit` ticks from `since`, from the first server that answers.
    pub async fn page(
        &self,
        currencies: &[Currency],
        since: Timedate,
        limit: usize,
    ) -> Result<HistoryPage, HistoryError> {
        self.first_answer(0, |base| async move {
            let page = self
                .get_page(base, currencies, Start::Since(since), limit)
                .await?;
            Ok(page.into())
        })
        .await
    }

    /// `ask`'s answer from the servers in turn, from number `first` (modulo their count), until
    /// one answers. A refusal ends it at once: it is about our request, and another replica
    /// would agree.
    async fn first_answer<'a, T, Fut>(
        &'a self,
        first: usize,
        ask: impl Fn(&'a str) -> Fut,
    ) -> Result<T, HistoryError>
    where
        Fut: Future<Output = Result<T, HistoryError>> + 'a,
    {
        let mut last_err = None;
        let n = self.bases.len();
        for i in 0..n {
            let base = self.bases[(first + i) % n].as_str();
            match ask(base).await {
                Ok(answer) => return Ok(answer),
                Err(e @ HistoryError::Refused { .. }) => return Err(e),
                Err(e) => {
                    tracing::debug!(server = %base, error = %e, "history server failed; trying the next");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| HistoryError::Unavailable("no --history URL".into())))
    }

    async fn fetch_from(
        &self,
        base: &str,
        currencies: &[Currency],
        since: Timedate,
    ) -> Result<Backfill, HistoryError> {
        let mut out = Backfill::default();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let start = match &cursor {
                Some(c) => Start::Cursor(c),
                None => Start::Since(since),
            };
            let page: HistoryPage = self.get_page(base, currencies, start, PAGE).await?.into();
            for (currency, ticks) in page.ticks {
                out.ticks.entry(currency).or_default().extend(ticks);
            }
            for gap in page.gaps {
                if !out.gaps.contains(&gap) {
                    out.gaps.push(gap);
                }
            }
            if out.interval.is_none() {
                out.interval = page.interval;
            }
            out.since_before_earliest |= page.since_before_earliest;
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(out),
            }
        }
        Err(HistoryError::TooLong)
    }

    async fn get_page(
        &self,
        base: &str,
        currencies: &[Currency],
        start: Start<'_>,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        let url = format!("{base}/v1/ticks");
        let currency = currencies
            .iter()
            .map(|c| c.code())
            .collect::<Vec<_>>()
            .join(",");
        let limit = limit.to_string();
        let since;
        let mut query: Vec<(&str, &str)> = vec![("currency", &currency), ("limit", &limit)];
        match start {
            Start::Cursor(c) => query.push(("cursor", c)),
            Start::Since(t) => {
                since = t.to_string();
                query.push(("since", &since));
            }
        }
        let response = self
            .http
            .get(&url)
            .timeout(self.timeout)
            .query(&query)
            .send()
            .await
            .map_err(|e| HistoryError::Unavailable(format!("{url}: {e}")))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(MAX_RETRY_AFTER_S)));
        let busy = status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || (status == reqwest::StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some());
        if busy {
            return Err(HistoryError::Busy {
                url,
                status: status.as_u16(),
                retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| HistoryError::Unavailable(format!("{url}: {e}")))?;
        if status.is_client_error() {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(HistoryError::Refused {
                url,
                status: status.as_u16(),
                message,
            });
        }
        if !status.is_success() {
            return Err(HistoryError::Unavailable(format!("{url}: HTTP {status}")));
        }
        serde_json::from_slice(&body).map_err(|e| HistoryError::BadAnswer {
            url,
            reason: e.to_string(),
        })
    }
}
