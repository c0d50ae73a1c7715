//! One `/v1/ticks` answer before and after encoding: what it says ([`Assembled`]), how the limit
//! cuts it ([`cut`]), whether it can still change ([`Assembled::closed`]), and its JSON
//! ([`encode`]) with its entity tag ([`Answer`]). The in-memory tail and the SQLite path each
//! assemble one; this module knows neither.

use axum::body::Bytes;
use axum::http::HeaderValue;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use ticks::{Currency, Gap, Interval, Tick, Timedate};

use crate::conditional;
use crate::cursor::{Cursor, PageKey};
use crate::query::TicksQuery;

/// What every answer says about the feed itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedFacts {
    /// The slot length, so a client knows when the next tick is due.
    pub interval: Interval,
    /// The feed runs on the demo source: these are not market prices.
    pub demo: bool,
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

impl Assembled<'_> {
    /// Whether the page can never change: the limit cut it, and every requested currency has a
    /// stored tick after its end, so no tick can still arrive inside it and every gap that
    /// overlaps it has ended. (The store only grows at the newest slot; a node filling its history
    /// from a peer is the exception, and its caller must not ask.) After, not at: a node's
    /// recorder, catching up again after a lost subscription, replaces its newest tick with the
    /// peer's, so a page holding a currency's newest tick is not final yet.
    pub(crate) fn closed(&self) -> bool {
        self.next.is_some_and(|end| {
            self.bounds
                .iter()
                .all(|bounds| bounds.is_some_and(|(_, newest)| newest > end.time))
        })
    }
}

/// An encoded answer, as cached and sent.
#[derive(Clone)]
pub(crate) struct Answer {
    pub(crate) body: Bytes,
    /// The strong entity tag of `body`.
    pub(crate) etag: HeaderValue,
    /// Encoded as a closed page: it never changes, and any cache may keep it.
    pub(crate) closed: bool,
}

impl Answer {
    pub(crate) fn new(body: Vec<u8>, closed: bool) -> Answer {
        Answer {
            etag: conditional::etag(&body),
            body: Bytes::from(body),
            closed,
        }
    }
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

/// The page's JSON. A `closed` page (see [`Assembled::closed`]) says nothing about the newest tick
/// (`latest` is null), so its bytes never change.
pub(crate) fn encode(
    query: &TicksQuery,
    page: &Assembled<'_>,
    feed: &FeedFacts,
    closed: bool,
) -> serde_json::Result<Vec<u8>> {
    let edges = page
        .bounds
        .iter()
        .flatten()
        .flat_map(|&(oldest, newest)| [oldest, newest]);
    let earliest = edges.clone().min();
    let latest = if closed { None } else { edges.max() };
    let next_cursor = page.next.map(|key| {
        Cursor {
            key,
            currencies: query.currencies.clone(),
        }
        .to_string()
    });
    let interval = feed.interval.to_string();
    let body = PageBody {
        since: query.start.time,
        currencies: &query.currencies,
        runs: &page.runs,
        gaps: &page.gaps,
        earliest,
        since_before_earliest: earliest.is_some_and(|e| query.start.time < e),
        latest,
        interval: &interval,
        demo: feed.demo,
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
    write_page(&mut bytes, &body)?;
    Ok(bytes)
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
