//! One `/v1/ticks` answer before and after encoding: what it says ([`Assembled`]), how the limit
//! cuts it ([`cut`]), whether it can still change ([`Assembled::closed`]), and its JSON
//! ([`Answer::encode`], in pieces that share the ticks' memory) with its entity tag. The in-memory
//! tail, the blocks and the SQLite path each assemble one; this module knows none of them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::HeaderValue;
use history_store::WireTicks;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use ticks::{Currency, Gap, Interval, Timedate};

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

/// Ticks held for answers (the tail, a block, what SQLite returned), their wire bytes also as
/// [`Bytes`], so that an answer sends them from where they are held, and each tick's own tag (see
/// [`conditional::etag`]), so that an answer's entity tag does not hash their bytes again. Cloning
/// is a count.
#[derive(Clone)]
pub(crate) struct HeldTicks {
    held: Arc<Held>,
    wire: Bytes,
}

struct Held {
    ticks: WireTicks,
    /// The tag of tick `i` in bytes `8 * i..8 * i + 8`.
    tags: Vec<u8>,
}

/// Keeps the ticks alive for as long as any answer sends their bytes.
struct HeldWire(Arc<Held>);

impl AsRef<[u8]> for HeldWire {
    fn as_ref(&self) -> &[u8] {
        self.0.ticks.wire()
    }
}

impl HeldTicks {
    pub(crate) fn new(ticks: WireTicks) -> HeldTicks {
        let mut tags = Vec::with_capacity(8 * ticks.len());
        for i in 0..ticks.len() {
            tags.extend_from_slice(&conditional::tick_tag(ticks.run(i, 1)));
        }
        HeldTicks::of(Held { ticks, tags })
    }

    fn of(held: Held) -> HeldTicks {
        let held = Arc::new(held);
        HeldTicks {
            wire: Bytes::from_owner(HeldWire(held.clone())),
            held,
        }
    }

    /// These ticks with `newer` (all newer than them) appended, and the oldest dropped until at
    /// most `keep` are left: what a copy of the tail becomes when the store has only appended.
    pub(crate) fn followed_by(&self, newer: &WireTicks, keep: usize) -> HeldTicks {
        let ticks = self.held.ticks.followed_by(newer, keep);
        let dropped = self.held.ticks.len() + newer.len() - ticks.len();
        let mut tags = Vec::with_capacity(8 * ticks.len());
        tags.extend_from_slice(&self.held.tags[(8 * dropped).min(self.held.tags.len())..]);
        for i in dropped.saturating_sub(self.held.ticks.len())..newer.len() {
            tags.extend_from_slice(&conditional::tick_tag(newer.run(i, 1)));
        }
        HeldTicks::of(Held { ticks, tags })
    }
}

impl HeldTicks {
    /// Bytes held, roughly: for a memory budget.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.held.ticks.heap_bytes() + self.held.tags.capacity()
    }
}

impl std::ops::Deref for HeldTicks {
    type Target = WireTicks;

    fn deref(&self) -> &WireTicks {
        &self.held.ticks
    }
}

/// `n` ticks from tick `from` of `ticks`: a piece of one currency's run on a page.
#[derive(Clone, Copy)]
pub(crate) struct Piece<'a> {
    pub(crate) ticks: &'a HeldTicks,
    pub(crate) from: usize,
    pub(crate) n: usize,
}

impl Piece<'_> {
    fn bytes(&self) -> &[u8] {
        self.ticks.run(self.from, self.n)
    }

    /// The same bytes, where they are held.
    fn shared(&self) -> Bytes {
        self.ticks.wire.slice(self.ticks.span(self.from, self.n))
    }

    /// The tags of its ticks, in order.
    fn tags(&self) -> &[u8] {
        &self.ticks.held.tags[8 * self.from..8 * (self.from + self.n)]
    }
}

/// The ticks of one currency on a page, oldest first, in pieces; empty pieces are skipped.
pub(crate) type Run<'a> = Vec<Piece<'a>>;

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
    /// The body, in pieces sent as they are: the ticks' pieces share the memory that holds them
    /// (the tail, the blocks), so no answer copies its ticks.
    pub(crate) body: Arc<[Bytes]>,
    /// Bytes in `body`.
    pub(crate) len: usize,
    /// The strong entity tag of `body`.
    pub(crate) etag: HeaderValue,
    /// Encoded as a closed page: it never changes, and any cache may keep it.
    pub(crate) closed: bool,
}

/// Pieces shorter than this are copied into the envelope's text rather than sent where they are
/// held: below it, a copy costs less than the reference count and the slice of the write that a
/// shared piece takes (the tail's pieces are whole runs, the blocks' about 7 KB).
const SHARED_PIECE_MIN: usize = 1024;

impl Answer {
    /// The page's JSON, its ticks not copied. A `closed` page (see [`Assembled::closed`]) says
    /// nothing about the newest tick (`latest` is null), so its bytes never change.
    pub(crate) fn encode(
        query: &TicksQuery,
        page: &Assembled<'_>,
        feed: &FeedFacts,
        closed: bool,
    ) -> serde_json::Result<Answer> {
        // Room for the envelope and every piece that is copied, so the text grows once.
        let copied: usize = page
            .runs
            .iter()
            .flat_map(|(_, run)| run.iter().map(|piece| piece.bytes().len()))
            .filter(|&len| len < SHARED_PIECE_MIN)
            .map(|len| len + 1)
            .sum();
        let mut out = Pieces {
            parts: Vec::with_capacity(8),
            text: Vec::with_capacity(512 + 96 * page.gaps.len() + copied),
            text_from: 0,
            tag: conditional::Tagger::default(),
        };
        write_page(&mut out, &PageBody::new(query, page, feed, closed))?;
        let (body, len) = out.finish();
        Ok(Answer {
            etag: out.tag.finish(),
            len,
            body,
            closed,
        })
    }

    /// The body in one piece.
    pub(crate) fn joined(&self) -> Bytes {
        match &*self.body {
            [one] => one.clone(),
            pieces => {
                let mut body = Vec::with_capacity(self.len);
                pieces
                    .iter()
                    .for_each(|piece| body.extend_from_slice(piece));
                Bytes::from(body)
            }
        }
    }
}

/// A page being written, in pieces: the envelope's text (serde writes it through `io::Write`,
/// which cannot fail here), one buffer, between the runs' shared pieces; and its entity tag.
struct Pieces {
    parts: Vec<Part>,
    text: Vec<u8>,
    /// Where the text not yet in `parts` starts.
    text_from: usize,
    tag: conditional::Tagger,
}

/// A part of the body: a span of the envelope's text, or a piece where it is held.
enum Part {
    Text(std::ops::Range<usize>),
    Shared(Bytes),
}

impl std::io::Write for Pieces {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Pieces {
    fn text(&mut self, text: &[u8]) {
        self.text.extend_from_slice(text);
        self.tag.text(text);
    }

    fn piece(&mut self, piece: &Piece<'_>) {
        self.tag.ticks(piece.tags());
        let bytes = piece.bytes();
        if bytes.len() < SHARED_PIECE_MIN {
            self.text.extend_from_slice(bytes);
            return;
        }
        self.end_text();
        self.parts.push(Part::Shared(piece.shared()));
    }

    fn end_text(&mut self) {
        if self.text.len() > self.text_from {
            self.parts.push(Part::Text(self.text_from..self.text.len()));
            self.text_from = self.text.len();
        }
    }

    /// The body's parts, the text's spans slices of one buffer, and their length.
    fn finish(&mut self) -> (Arc<[Bytes]>, usize) {
        self.end_text();
        let text = Bytes::from(std::mem::take(&mut self.text));
        let mut len = 0;
        let body = self
            .parts
            .drain(..)
            .map(|part| {
                let bytes = match part {
                    Part::Text(span) => text.slice(span),
                    Part::Shared(bytes) => bytes,
                };
                len += bytes.len();
                bytes
            })
            .collect();
        (body, len)
    }

    fn between_pieces(&mut self) {
        // Like the commas inside a piece, not part of the tag: a run's tag is its ticks'.
        self.text.push(b',');
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
/// first tick after them, if any. Each list is one currency's, oldest first (strictly: a currency
/// has one tick per time).
///
/// Found by bisecting time rather than by walking the merge: the first tick left out is at the
/// earliest time up to which the lists hold more than `limit` ticks, so a page of thousands of
/// ticks costs a few dozen binary searches.
pub(crate) fn cut<T>(
    lists: &[(Currency, &[T])],
    time: impl Fn(&T) -> Timedate,
    limit: usize,
) -> (Vec<usize>, Option<PageKey>) {
    let ms = |t: &T| time(t).unix_millis();
    let total: usize = lists.iter().map(|(_, list)| list.len()).sum();
    if total <= limit {
        return (lists.iter().map(|(_, list)| list.len()).collect(), None);
    }
    let up_to = |t: i64| -> usize {
        lists
            .iter()
            .map(|(_, list)| list.partition_point(|x| ms(x) <= t))
            .sum()
    };
    // The earliest time `end` with more than `limit` ticks at or before it. Some list has ticks:
    // there are more than `limit` of them.
    let mut low = lists
        .iter()
        .filter_map(|(_, l)| l.first())
        .map(ms)
        .min()
        .unwrap_or(0);
    let mut end = lists
        .iter()
        .filter_map(|(_, l)| l.last())
        .map(ms)
        .max()
        .unwrap_or(0);
    while low < end {
        let mid = low + (end - low) / 2;
        if up_to(mid) > limit {
            end = mid;
        } else {
            low = mid + 1;
        }
    }
    // Before `end` every tick is taken; at `end`, the first `limit - before` in key order.
    let mut taken: Vec<usize> = lists
        .iter()
        .map(|(_, list)| list.partition_point(|x| ms(x) < end))
        .collect();
    let before: usize = taken.iter().sum();
    let mut at_end: Vec<(Currency, usize)> = lists
        .iter()
        .enumerate()
        .filter(|(i, (_, list))| list.get(taken[*i]).is_some_and(|x| ms(x) == end))
        .map(|(i, &(currency, _))| (currency, i))
        .collect();
    at_end.sort_unstable();
    let room = limit - before;
    for &(_, i) in &at_end[..room] {
        taken[i] += 1;
    }
    let (currency, _) = at_end[room];
    let time = Timedate::from_unix_millis(end).expect("the time of a tick");
    (taken, Some(PageKey { time, currency }))
}

/// The page's JSON in one piece: [`Answer::encode`]'s bytes, for tests to compare.
#[cfg(test)]
pub(crate) fn encode(
    query: &TicksQuery,
    page: &Assembled<'_>,
    feed: &FeedFacts,
    closed: bool,
) -> serde_json::Result<Vec<u8>> {
    Ok(Answer::encode(query, page, feed, closed)?.joined().to_vec())
}

struct PageBody<'a> {
    since: Timedate,
    currencies: &'a [Currency],
    runs: &'a [(Currency, Run<'a>)],
    gaps: &'a [Gap],
    earliest: Option<Timedate>,
    since_before_earliest: bool,
    latest: Option<Timedate>,
    interval: String,
    demo: bool,
    next_cursor: Option<String>,
}

impl<'a> PageBody<'a> {
    fn new(
        query: &'a TicksQuery,
        page: &'a Assembled<'a>,
        feed: &FeedFacts,
        closed: bool,
    ) -> PageBody<'a> {
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
        PageBody {
            since: query.start.time,
            currencies: &query.currencies,
            runs: &page.runs,
            gaps: &page.gaps,
            earliest,
            since_before_earliest: earliest.is_some_and(|e| query.start.time < e),
            latest,
            interval: feed.interval.to_string(),
            demo: feed.demo,
            next_cursor,
        }
    }
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

/// Writes the page. The envelope's fields go through serde; the ticks are the bytes
/// `Tick::write_wire` (the MQTT payload writer) wrote for them when they were read, so the bytes
/// are the payload's by construction and a page of thousands of ticks costs no per-tick work.
fn write_page(out: &mut Pieces, body: &PageBody<'_>) -> serde_json::Result<()> {
    let field = |out: &mut Pieces, name: &str| {
        out.text(b",\"");
        out.text(name.as_bytes());
        out.text(b"\":");
    };
    out.text(b"{\"since\":");
    serde_json::to_writer(&mut *out, &body.since)?;
    field(out, "currencies");
    serde_json::to_writer(&mut *out, body.currencies)?;
    field(out, "ticks");
    out.text(b"{");
    for (i, (currency, run)) in body.runs.iter().enumerate() {
        if i > 0 {
            out.text(b",");
        }
        serde_json::to_writer(&mut *out, currency.code())?;
        out.text(b":[");
        let mut first = true;
        for piece in run.iter().filter(|piece| piece.n > 0) {
            if !first {
                out.between_pieces();
            }
            out.piece(piece);
            first = false;
        }
        out.text(b"]");
    }
    out.text(b"}");
    field(out, "gaps");
    serde_json::to_writer(&mut *out, body.gaps)?;
    field(out, "earliest");
    serde_json::to_writer(&mut *out, &body.earliest)?;
    field(out, "since_before_earliest");
    serde_json::to_writer(&mut *out, &body.since_before_earliest)?;
    field(out, "latest");
    serde_json::to_writer(&mut *out, &body.latest)?;
    field(out, "interval");
    serde_json::to_writer(&mut *out, &body.interval)?;
    field(out, "demo");
    serde_json::to_writer(&mut *out, &body.demo)?;
    field(out, "next_cursor");
    serde_json::to_writer(&mut *out, &body.next_cursor)?;
    out.text(b"}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ticks::Tick;

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

    /// The merge walked one tick at a time: what `cut` must agree with.
    fn walked(lists: &[(Currency, &[Tick])], limit: usize) -> (Vec<usize>, Option<PageKey>) {
        let mut taken = vec![0; lists.len()];
        let head = |taken: &[usize]| {
            lists
                .iter()
                .zip(taken)
                .enumerate()
                .filter_map(|(i, (&(currency, list), &n))| {
                    list.get(n).map(|t| {
                        let time = t.timedate;
                        (PageKey { time, currency }, i)
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
        (taken.clone(), head(&taken).map(|(key, _)| key))
    }

    proptest! {
        /// Any two lists (slots present or missing independently, shared or not), any limit.
        #[test]
        fn cutting_by_bisection_is_walking_the_merge(
            usd in proptest::collection::btree_set(0u32..300, 0..120),
            eur in proptest::collection::btree_set(0u32..300, 0..120),
            limit in 0usize..260,
            eur_first in any::<bool>(),
        ) {
            use Currency::{EUR, USD};
            let usd: Vec<Tick> = usd.into_iter().map(|s| tick(USD, s)).collect();
            let eur: Vec<Tick> = eur.into_iter().map(|s| tick(EUR, s)).collect();
            let mut lists: Vec<(Currency, &[Tick])> = vec![(USD, &usd), (EUR, &eur)];
            if eur_first {
                lists.reverse();
            }
            prop_assert_eq!(cut(&lists, |t| t.timedate, limit), walked(&lists, limit));
            prop_assert_eq!(cut(&lists[..1], |t| t.timedate, limit), walked(&lists[..1], limit));
        }
    }
}
