//! `GET /v1/ticks`: one page of stored ticks, with what a client needs to trust it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use ticks::{Currency, Gap, Tick, Timedate};

use crate::cursor::{Cursor, PageKey};
use crate::metrics::AnswerSource;
use crate::query::TicksQuery;
use crate::tail::{Tail, Version};
use crate::{ApiError, ApiState};

/// Recent answers, each valid while the store's version is unchanged. Clients that reconnect
/// together ask the same question (everything since the same last tick), and a question about the
/// past has the same answer until the next tick is stored; SQLite's `data_version` says when that
/// happened, whichever process wrote it. Bounded: small answers only, few of them.
#[derive(Default)]
pub(crate) struct PageCache {
    entries: Mutex<HashMap<CacheKey, (Version, Bytes)>>,
}

type CacheKey = (PageKey, Vec<Currency>, usize);
const CACHE_ENTRIES: usize = 64;
const CACHE_MAX_BYTES: usize = 256 * 1024;

impl PageCache {
    fn get(&self, key: &CacheKey, version: Version) -> Option<Bytes> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(v, _)| *v == version)
            .map(|(_, body)| body.clone())
    }

    fn put(&self, key: CacheKey, version: Version, body: Bytes) {
        if body.len() > CACHE_MAX_BYTES {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Entries of an older version are dead; drop them all when full rather than track age.
        if entries.len() >= CACHE_ENTRIES {
            entries.retain(|_, (v, _)| *v == version);
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (version, body));
    }
}

fn json(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(crate) async fn ticks(
    State(state): State<Arc<ApiState>>,
    Extension(cache): Extension<Arc<PageCache>>,
    Extension(tail): Extension<Arc<Tail>>,
    query: TicksQuery,
) -> Result<Response, ApiError> {
    // Read before anything else: a commit after this makes what follows stale, never wrong.
    let version = state.store.version().map_err(ApiError::StoreUnavailable)?;
    let key: CacheKey = (query.start, query.currencies.clone(), query.limit);
    if let Some(body) = cache.get(&key, version) {
        state.metrics.history_answer(AnswerSource::Cache);
        return Ok(json(body));
    }
    let recent = tail.at(version);
    let body = match &recent {
        Some(recent) if recent.covers(&query) => {
            state.metrics.history_answer(AnswerSource::Memory);
            encode(&state, &query, &recent.assemble(&query))?
        }
        _ => {
            if recent.is_none() {
                tail.refresh(state.store.clone(), version);
            }
            state.metrics.history_answer(AnswerSource::Store);
            from_store(&state, &query).await?
        }
    };
    let body = Bytes::from(body);
    cache.put(key, version, body.clone());
    Ok(json(body))
}

/// The ticks of one currency on a page: decoded from SQLite, or the wire bytes held in memory
/// (already joined by commas).
pub(crate) enum Run<'a> {
    Ticks(&'a [Tick]),
    Wire(&'a [u8]),
}

/// Everything a page says, before it is encoded.
pub(crate) struct Assembled<'a> {
    /// The page's ticks, per requested currency, in request order.
    pub(crate) runs: Vec<(Currency, Run<'a>)>,
    /// Oldest and newest stored tick time per requested currency, in request order.
    pub(crate) bounds: Vec<Option<(Timedate, Timedate)>>,
    /// The gaps of the requested currencies from the start key up to the page's end.
    pub(crate) gaps: Vec<Gap>,
    /// Where the next page starts, if the limit cut this one.
    pub(crate) next: Option<PageKey>,
}

/// The first time of `currency` a page starting at `start` includes: at the start time, currencies
/// ordered before the start key's were on the previous page. None: past the end of time.
pub(crate) fn first_time(start: PageKey, currency: Currency) -> Option<Timedate> {
    if currency >= start.currency {
        Some(start.time)
    } else {
        Timedate::from_unix_millis(start.time.unix_millis() + 1)
    }
}

/// Reads the page from SQLite, in one transaction so that ticks, bounds and gaps agree.
pub(crate) async fn from_store(state: &ApiState, query: &TicksQuery) -> Result<Vec<u8>, ApiError> {
    let TicksQuery {
        start,
        currencies,
        limit,
    } = query.clone();
    let (lists, bounds, gaps) = state
        .store
        .snapshot(move |snapshot| {
            // Per currency, the first `limit + 1` ticks at or after the start key: the page is a
            // prefix of their merge, and the one extra tells whether (and where) the limit cut it.
            let mut lists = Vec::with_capacity(currencies.len());
            let mut bounds = Vec::with_capacity(currencies.len());
            for &currency in &currencies {
                lists.push(match first_time(start, currency) {
                    Some(from) => snapshot.ticks_since(currency, from, limit + 1)?,
                    None => Vec::new(),
                });
                bounds.push(
                    snapshot
                        .bounds(currency)?
                        .map(|(oldest, newest)| (oldest.timedate, newest.timedate)),
                );
            }
            // Gaps up to any end; the ones past the page's end are dropped below.
            let gaps = snapshot.gaps_overlapping(&currencies, start.time, None)?;
            Ok((lists, bounds, gaps))
        })
        .await
        .map_err(ApiError::StoreUnavailable)?;

    let keyed: Vec<(Currency, &[Tick])> = query
        .currencies
        .iter()
        .zip(&lists)
        .map(|(&c, list)| (c, list.as_slice()))
        .collect();
    let (taken, next) = cut(&keyed, |t| t.timedate, limit);
    let page = Assembled {
        runs: keyed
            .iter()
            .zip(&taken)
            .map(|(&(c, list), &n)| (c, Run::Ticks(&list[..n])))
            .collect(),
        bounds,
        gaps: gaps
            .into_iter()
            .filter(|gap| next.is_none_or(|end| gap.from < end.time))
            .collect(),
        next,
    };
    encode(state, query, &page)
}

/// The page's JSON.
pub(crate) fn encode(
    state: &ApiState,
    query: &TicksQuery,
    page: &Assembled<'_>,
) -> Result<Vec<u8>, ApiError> {
    let edges = page
        .bounds
        .iter()
        .flatten()
        .flat_map(|&(oldest, newest)| [oldest, newest]);
    let earliest = edges.clone().min();
    let latest = edges.max();
    let next_cursor = page.next.map(|key| {
        Cursor {
            key,
            currencies: query.currencies.clone(),
        }
        .to_string()
    });
    let interval = state.interval.to_string();
    let body = PageBody {
        since: query.start.time,
        currencies: &query.currencies,
        runs: &page.runs,
        gaps: &page.gaps,
        earliest,
        since_before_earliest: earliest.is_some_and(|e| query.start.time < e),
        latest,
        interval: &interval,
        demo: state.demo,
        next_cursor: next_cursor.as_deref(),
    };
    let size: usize = page
        .runs
        .iter()
        .map(|(_, run)| match run {
            Run::Ticks(ticks) => 64 * ticks.len(),
            Run::Wire(bytes) => bytes.len(),
        })
        .sum();
    let mut bytes = Vec::with_capacity(512 + 64 * page.gaps.len() + size);
    write_page(&mut bytes, &body).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(bytes)
}

/// How many ticks of each list the first `limit` of the merged order take, and the key of the
/// first tick after them, if any. Each list is one currency's, oldest first, in currency order.
pub(crate) fn cut<T>(
    lists: &[(Currency, &[T])],
    time: impl Fn(&T) -> Timedate,
    limit: usize,
) -> (Vec<usize>, Option<PageKey>) {
    let mut taken = vec![0; lists.len()];
    let head = |taken: &[usize]| {
        lists
            .iter()
            .zip(taken)
            .enumerate()
            .filter_map(|(i, (&(currency, list), &n))| {
                list.get(n).map(|t| {
                    (
                        PageKey {
                            time: time(t),
                            currency,
                        },
                        i,
                    )
                })
            })
            .min()
    };
    for _ in 0..limit {
        match head(&taken) {
            Some((_, i)) => taken[i] += 1,
            None => return (taken, None),
        }
    }
    let next = head(&taken).map(|(key, _)| key);
    (taken, next)
}

struct PageBody<'a> {
    since: Timedate,
    currencies: &'a [Currency],
    runs: &'a [(Currency, Run<'a>)],
    gaps: &'a [Gap],
    earliest: Option<Timedate>,
    since_before_earliest: bool,
    latest: Option<Timedate>,
    interval: &'a str,
    demo: bool,
    next_cursor: Option<&'a str>,
}

/// A JSON object keyed by currency code, in the given (currency) order.
pub(crate) struct ByCurrency<'a, T>(pub(crate) &'a [(Currency, T)]);

impl<T: Serialize> Serialize for ByCurrency<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (currency, value) in self.0 {
            map.serialize_entry(currency.code(), value)?;
        }
        map.end()
    }
}

/// Writes the page. The envelope's fields go through serde; each tick is written by
/// `Tick::write_wire`, the MQTT payload writer (here or, for the tail held in memory, when that was
/// read), so the bytes are the payload's by construction and a page of thousands of ticks costs no
/// per-field serde work.
fn write_page(out: &mut Vec<u8>, body: &PageBody<'_>) -> serde_json::Result<()> {
    let field = |out: &mut Vec<u8>, name: &str| {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    };
    out.extend_from_slice(b"{\"since\":");
    serde_json::to_writer(&mut *out, &body.since)?;
    field(out, "currencies");
    serde_json::to_writer(&mut *out, body.currencies)?;
    field(out, "ticks");
    out.push(b'{');
    for (i, (currency, run)) in body.runs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, currency.code())?;
        out.extend_from_slice(b":[");
        match run {
            Run::Ticks(ticks) => {
                for (j, tick) in ticks.iter().enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    tick.write_wire(out);
                }
            }
            Run::Wire(bytes) => out.extend_from_slice(bytes),
        }
        out.push(b']');
    }
    out.push(b'}');
    field(out, "gaps");
    serde_json::to_writer(&mut *out, body.gaps)?;
    field(out, "earliest");
    serde_json::to_writer(&mut *out, &body.earliest)?;
    field(out, "since_before_earliest");
    serde_json::to_writer(&mut *out, &body.since_before_earliest)?;
    field(out, "latest");
    serde_json::to_writer(&mut *out, &body.latest)?;
    field(out, "interval");
    serde_json::to_writer(&mut *out, body.interval)?;
    field(out, "demo");
    serde_json::to_writer(&mut *out, &body.demo)?;
    field(out, "next_cursor");
    serde_json::to_writer(&mut *out, &body.next_cursor)?;
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(currency: Currency, s: u32) -> Tick {
        Tick {
            currency,
            timedate: Timedate::from_unix_millis(i64::from(s) * 1000).unwrap(),
            price: "1".parse().unwrap(),
        }
    }

    fn key(currency: Currency, s: u32) -> PageKey {
        PageKey {
            time: Timedate::from_unix_millis(i64::from(s) * 1000).unwrap(),
            currency,
        }
    }

    #[test]
    fn cuts_the_merged_order() {
        use Currency::{EUR, USD};
        let usd = [tick(USD, 0), tick(USD, 5), tick(USD, 10)];
        let eur = [tick(EUR, 5), tick(EUR, 10)];
        let lists: [(Currency, &[Tick]); 2] = [(USD, &usd), (EUR, &eur)];
        let cut = |limit| cut(&lists, |t| t.timedate, limit);
        assert_eq!(cut(1), (vec![1, 0], Some(key(USD, 5))));
        assert_eq!(cut(2), (vec![2, 0], Some(key(EUR, 5))));
        assert_eq!(cut(3), (vec![2, 1], Some(key(USD, 10))));
        assert_eq!(cut(4), (vec![3, 1], Some(key(EUR, 10))));
        assert_eq!(cut(5), (vec![3, 2], None));
        assert_eq!(cut(50), (vec![3, 2], None));
        let empty: [(Currency, &[Tick]); 2] = [(USD, &[]), (EUR, &[])];
        assert_eq!(super::cut(&empty, |t| t.timedate, 5), (vec![0, 0], None));
    }
}
