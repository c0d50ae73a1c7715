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
    ticks: TickLists,
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
            ticks: page.ticks.0,
            gaps: page.gaps,
            interval: page.interval.and_then(|i| i.parse().ok()),
            latest: page.latest,
            since_before_earliest: page.since_before_earliest,
            next_cursor: page.next_cursor,
        }
    }
}

/// An answer's `ticks`, per currency, read straight into [`Tick`]s: the currency is the key the
/// list is under. Read as wire ticks and converted after, every backfill was one list more to
/// allocate and copy.
struct TickLists(BTreeMap<Currency, Vec<Tick>>);

impl<'de> Deserialize<'de> for TickLists {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<TickLists, D::Error> {
        struct Lists;
        impl<'de> serde::de::Visitor<'de> for Lists {
            type Value = TickLists;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map from currency to a list of ticks")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TickLists, A::Error> {
                let mut lists = BTreeMap::new();
                while let Some(currency) = map.next_key::<Currency>()? {
                    lists.insert(currency, map.next_value_seed(List(currency))?);
                }
                Ok(TickLists(lists))
            }
        }
        deserializer.deserialize_map(Lists)
    }
}

/// The list of one currency's ticks.
struct List(Currency);

impl<'de> serde::de::DeserializeSeed<'de> for List {
    type Value = Vec<Tick>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Vec<Tick>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for List {
    type Value = Vec<Tick>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of tick objects")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Tick>, A::Error> {
        let mut ticks = Vec::new();
        while let Some(w) = seq.next_element::<WireTick>()? {
            ticks.push(Tick {
                currency: self.0,
                timedate: w.timedate,
                price: w.price,
            });
        }
        Ok(ticks)
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
    bases: Vec<Base>,
    http: reqwest::Client,
    timeout: Duration,
}

/// One replica: its URL as given (for messages) and its ticks endpoint, parsed once: parsing it
/// for every request was a share of a reconnect storm's client CPU.
#[derive(Clone)]
struct Base {
    text: String,
    ticks: reqwest::Url,
    /// The ticks endpoint as the user wrote the base, for messages.
    ticks_text: String,
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
            let ticks_text = format!("{trimmed}/v1/ticks");
            let ticks = reqwest::Url::parse(&ticks_text).map_err(|e| HistoryError::BadUrl {
                url: base.clone(),
                reason: e.to_string(),
            })?;
            clean.push(Base {
                text: trimmed,
                ticks,
                ticks_text,
            });
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
        ask: impl Fn(&'a Base) -> Fut,
    ) -> Result<T, HistoryError>
    where
        Fut: Future<Output = Result<T, HistoryError>> + 'a,
    {
        let mut last_err = None;
        let n = self.bases.len();
        for i in 0..n {
            let base = &self.bases[(first + i) % n];
            match ask(base).await {
                Ok(answer) => return Ok(answer),
                Err(e @ HistoryError::Refused { .. }) => return Err(e),
                Err(e) => {
                    tracing::debug!(server = %base.text, error = %e, "history server failed; trying the next");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| HistoryError::Unavailable("no --history URL".into())))
    }

    async fn fetch_from(
        &self,
        base: &Base,
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
                match out.ticks.entry(currency) {
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(ticks);
                    }
                    std::collections::btree_map::Entry::Occupied(mut e) => {
                        e.get_mut().extend(ticks)
                    }
                }
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
        base: &Base,
        currencies: &[Currency],
        start: Start<'_>,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        let mut request = base.ticks.clone();
        {
            let mut query = request.query_pairs_mut();
            let currency: Vec<&str> = currencies.iter().map(|c| c.code()).collect();
            query.append_pair("currency", &currency.join(","));
            query.append_pair("limit", &limit.to_string());
            match start {
                Start::Cursor(c) => query.append_pair("cursor", c),
                Start::Since(t) => query.append_pair("since", &t.to_string()),
            };
        }
        let url = base.ticks_text.as_str();
        let response = self
            .http
            .get(request)
            .timeout(self.timeout)
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
                url: url.to_owned(),
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
                url: url.to_owned(),
                status: status.as_u16(),
                message,
            });
        }
        if !status.is_success() {
            return Err(HistoryError::Unavailable(format!("{url}: HTTP {status}")));
        }
        serde_json::from_slice(&body).map_err(|e| HistoryError::BadAnswer {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(json: &str) -> Result<HistoryPage, serde_json::Error> {
        serde_json::from_str::<Page>(json).map(HistoryPage::from)
    }

    #[test]
    fn an_answer_is_read_into_ticks_of_the_currency_they_are_listed_under() {
        let p = page(
            r#"{"ticks":{"USD":[{"timedate":"2026-11-24T01:40:05Z","price":97001.5},{"timedate":"2026-11-24T01:40:10Z","price":97002}],"EUR":[]},"interval":"5s"}"#,
        )
        .unwrap();
        let usd = &p.ticks[&Currency::USD];
        assert_eq!(usd.len(), 2);
        assert!(usd.iter().all(|t| t.currency == Currency::USD));
        assert_eq!(usd[0].timedate.to_string(), "2026-11-24T01:40:05Z");
        assert_eq!(usd[0].price.to_string(), "97001.5");
        assert_eq!(usd[1].price.to_string(), "97002");
        assert!(p.ticks[&Currency::EUR].is_empty(), "an empty list is kept");
        assert_eq!(p.interval, Some(Interval::DEFAULT));
    }

    #[test]
    fn a_repeated_currency_keeps_its_last_list_as_a_map_does() {
        let p = page(
            r#"{"ticks":{"USD":[{"timedate":"2026-11-24T01:40:05Z","price":1}],"USD":[{"timedate":"2026-11-24T01:40:10Z","price":2}]}}"#,
        )
        .unwrap();
        assert_eq!(p.ticks[&Currency::USD].len(), 1);
        assert_eq!(p.ticks[&Currency::USD][0].price.to_string(), "2");
    }

    #[test]
    fn what_is_not_a_tick_list_is_refused() {
        for bad in [
            r#"{"ticks":{"GBP":[]}}"#,
            r#"{"ticks":{"USD":[{"timedate":"2026-11-24T01:40:05Z","price":1,"extra":0}]}}"#,
            r#"{"ticks":{"USD":[{"timedate":"2026-11-24T01:40:05Z"}]}}"#,
            r#"{"ticks":{"USD":{"timedate":"2026-11-24T01:40:05Z","price":1}}}"#,
            r#"{"ticks":[]}"#,
            r#"{"gaps":[]}"#,
        ] {
            assert!(page(bad).is_err(), "accepted {bad}");
        }
    }
}
