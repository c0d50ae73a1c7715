//! `GET /v1/ticks`: one page of stored ticks, with what a client needs to trust it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::future::try_join_all;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use ticks::{Currency, Gap, Tick, Timedate};

use crate::cursor::{Cursor, PageKey};
use crate::query::TicksQuery;
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
/// `HistoryStore::version`.
type Version = (u64, i64);
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
    query: TicksQuery,
) -> Result<Response, ApiError> {
    // Read before the queries: a commit while they run makes this entry stale, never wrong.
    let version = state.store.version().map_err(ApiError::StoreUnavailable)?;
    let key: CacheKey = (query.start, query.currencies.clone(), query.limit);
    if let Some(body) = cache.get(&key, version) {
        return Ok(json(body));
    }
    let body = Bytes::from(page(&state, query).await?);
    cache.put(key, version, body.clone());
    Ok(json(body))
}

async fn page(state: &ApiState, query: TicksQuery) -> Result<Vec<u8>, ApiError> {
    let TicksQuery {
        start,
        currencies,
        limit,
    } = query;
    let store = &state.store;

    // Per currency, the first `limit + 1` ticks at or after the start key: the page is a prefix of
    // their merge, and the one extra tells whether (and where) the limit cut it.
    let fetch_ticks = try_join_all(currencies.iter().map(|&currency| async move {
        // At the start time, currencies ordered before the start key's were on the previous page.
        let from = if currency >= start.currency {
            Some(start.time)
        } else {
            Timedate::from_unix_millis(start.time.unix_millis() + 1)
        };
        match from {
            Some(from) => store.ticks_since(currency, from, limit + 1).await,
            None => Ok(Vec::new()),
        }
    }));
    let fetch_bounds = try_join_all(currencies.iter().map(|&c| store.bounds(c)));
    // Gaps up to any end; the ones past the page's end are dropped below, once that end is known.
    let fetch_gaps = store.gaps_overlapping(currencies.clone(), start.time, None);
    let (lists, bounds, mut gaps) = tokio::try_join!(fetch_ticks, fetch_bounds, fetch_gaps)
        .map_err(ApiError::StoreUnavailable)?;

    let (taken, next) = cut(&lists, limit);
    if let Some(end) = next {
        gaps.retain(|gap| gap.from < end.time);
    }

    // The queries ran side by side, so a tick stored in between may be in one answer and not the
    // other: widen the bounds by what is returned, so `latest` is never older than a returned tick.
    let returned = lists.iter().zip(&taken).map(|(list, &n)| &list[..n]);
    let mut earliest: Option<Timedate> = None;
    let mut latest: Option<Timedate> = None;
    let edges = bounds
        .iter()
        .flatten()
        .flat_map(|(oldest, newest)| [oldest.timedate, newest.timedate])
        .chain(returned.flat_map(|page| {
            page.first()
                .into_iter()
                .chain(page.last())
                .map(|t| t.timedate)
        }));
    for t in edges {
        earliest = Some(earliest.map_or(t, |e| e.min(t)));
        latest = Some(latest.map_or(t, |l| l.max(t)));
    }

    let next_cursor = next.map(|key| {
        Cursor {
            key,
            currencies: currencies.clone(),
        }
        .to_string()
    });
    let by_currency: Vec<(Currency, WireTicks<'_>)> = currencies
        .iter()
        .zip(lists.iter().zip(&taken))
        .map(|(&c, (list, &n))| (c, WireTicks(&list[..n])))
        .collect();
    let interval = state.interval.to_string();
    let body = PageBody {
        since: start.time,
        currencies: &currencies,
        ticks: ByCurrency(&by_currency),
        gaps: &gaps,
        earliest,
        since_before_earliest: earliest.is_some_and(|e| start.time < e),
        latest,
        interval: &interval,
        demo: state.demo,
        next_cursor: next_cursor.as_deref(),
    };

    let returned_count: usize = taken.iter().sum();
    let mut bytes = Vec::with_capacity(512 + 64 * returned_count);
    write_page(&mut bytes, &body).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(bytes)
}

/// How many ticks of each list the first `limit` of the merged order take, and the key of the
/// first tick after them, if any. Each list is one currency's, oldest first, in currency order.
fn cut(lists: &[Vec<Tick>], limit: usize) -> (Vec<usize>, Option<PageKey>) {
    let mut taken = vec![0; lists.len()];
    let head = |taken: &[usize]| {
        lists
            .iter()
            .zip(taken)
            .enumerate()
            .filter_map(|(i, (list, &n))| {
                list.get(n).map(|t| {
                    (
                        PageKey {
                            time: t.timedate,
                            currency: t.currency,
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
    ticks: ByCurrency<'a, WireTicks<'a>>,
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

/// One currency's ticks of the page.
struct WireTicks<'a>(&'a [Tick]);

/// Writes the page. The envelope's fields go through serde; each tick is written by
/// `Tick::write_wire`, the MQTT payload writer, so the bytes are the payload's by construction and
/// a page of thousands of ticks costs no per-field serde work.
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
    for (i, (currency, ticks)) in body.ticks.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, currency.code())?;
        out.extend_from_slice(b":[");
        for (j, tick) in ticks.0.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            tick.write_wire(out);
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
        let lists = vec![
            vec![tick(USD, 0), tick(USD, 5), tick(USD, 10)],
            vec![tick(EUR, 5), tick(EUR, 10)],
        ];
        assert_eq!(cut(&lists, 1), (vec![1, 0], Some(key(USD, 5))));
        assert_eq!(cut(&lists, 2), (vec![2, 0], Some(key(EUR, 5))));
        assert_eq!(cut(&lists, 3), (vec![2, 1], Some(key(USD, 10))));
        assert_eq!(cut(&lists, 4), (vec![3, 1], Some(key(EUR, 10))));
        assert_eq!(cut(&lists, 5), (vec![3, 2], None));
        assert_eq!(cut(&lists, 50), (vec![3, 2], None));
        assert_eq!(cut(&[vec![], vec![]], 5), (vec![0, 0], None));
    }
}
