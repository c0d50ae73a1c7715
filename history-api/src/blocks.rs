//! Blocks of the older past, held in memory already encoded.
//!
//! A question that starts before the tail (a client away for more than a day, a chart of last
//! month, a node copying a peer's history) would read and encode every tick of its page from
//! SQLite. But a stretch of ticks that ends before a currency's newest tick can only change by a
//! rewrite, which the store counts ([`StoreChanges::rewrites`]): so the ticks of each currency are
//! kept here in fixed blocks of time ([`BLOCK_SLOTS`] slots), as their wire bytes, once a question
//! has read them, and serve every later question that reaches them while that count stays the
//! same. A changed count drops them all.
//!
//! This is a copy of ticks, not of answers: a page from blocks is assembled (cut at its limit,
//! with the tail's bounds and gaps) exactly as from the tail, so its bytes are SQLite's, and any
//! question reaching a held block is served, whatever its `since`, `limit` or currencies. What is
//! not held is read from SQLite a block at a time, on the blocking pool, in one transaction that
//! first checks the count. The blocks share a budget of [`BLOCKS_BYTES`]; the least recently used
//! go first.
//!
//! [`StoreChanges::rewrites`]: history_store::StoreChanges::rewrites

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use history_store::{HistoryStore, StoreError};
use ticks::{Currency, Interval, Timedate};

use crate::answer::{Assembled, HeldTicks, Piece, cut, first_time};
use crate::query::TicksQuery;
use crate::tail::Recent;

/// Slots per block: ten minutes and a bit at the 5 s interval, about 7 KB of wire bytes.
pub(crate) const BLOCK_SLOTS: i64 = 128;

/// More ticks than this in one block (a store written at a shorter interval than it now reports)
/// is not held: such questions are answered from SQLite.
const MAX_BLOCK_TICKS: usize = 4 * BLOCK_SLOTS as usize;

/// Memory all blocks together may take: about twelve days of both currencies at the 5 s interval
/// (78 bytes a tick: its wire bytes, time, end and tag).
pub(crate) const BLOCKS_BYTES: usize = 32 << 20;

/// The blocks held, for one count of the store's rewrites.
pub(crate) struct Blocks {
    /// A block's length of time, in milliseconds.
    span_ms: i64,
    budget: usize,
    held: RwLock<Held>,
    /// Stamps each use, for eviction.
    clock: AtomicU64,
}

#[derive(Default)]
struct Held {
    /// The rewrites count every held block was read at.
    rewrites: u64,
    /// By currency and block number (block `n` starts at `n * span_ms`).
    blocks: HashMap<(Currency, i64), HeldBlock>,
    bytes: usize,
}

struct HeldBlock {
    ticks: HeldTicks,
    used: AtomicU64,
}

impl Held {
    /// The block, stamped as used at `now`.
    fn get(&self, rewrites: u64, currency: Currency, block: i64, now: u64) -> Option<HeldTicks> {
        if self.rewrites != rewrites {
            return None;
        }
        self.blocks.get(&(currency, block)).map(|h| {
            h.used.store(now, Ordering::Relaxed);
            h.ticks.clone()
        })
    }
}

/// Why a question cannot be answered from blocks; it is then answered from SQLite.
enum Unservable {
    /// Not every block it reaches is held (asked only of the held blocks).
    Missing,
    /// A block it reaches is still open, holds too many ticks, or the store was rewritten.
    Never,
    Store(StoreError),
}

/// One currency's part of a page from blocks: the blocks it reaches in order, each with the run of
/// its ticks taken, then the tail's ticks.
struct Part {
    currency: Currency,
    from: Option<Timedate>,
    /// Blocks hold this currency's ticks before this time, the tail from it on.
    tail_from: Timedate,
    segments: Vec<(HeldTicks, usize, usize)>,
}

/// The ticks of a page from blocks and the tail, before it is cut.
pub(crate) struct BlockPage {
    recent: Arc<Recent>,
    parts: Vec<Part>,
}

impl Blocks {
    /// Blocks of [`BLOCK_SLOTS`] slots of `interval`, within `budget` bytes.
    pub(crate) fn new(interval: Interval, budget: usize) -> Blocks {
        Blocks::of_span(interval.as_millis() * BLOCK_SLOTS, budget)
    }

    fn of_span(span_ms: i64, budget: usize) -> Blocks {
        Blocks {
            span_ms,
            budget,
            held: RwLock::default(),
            clock: AtomicU64::new(0),
        }
    }

    fn get(&self, rewrites: u64, currency: Currency, block: i64) -> Option<HeldTicks> {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.get(
            rewrites,
            currency,
            block,
            self.clock.load(Ordering::Relaxed),
        )
    }

    fn put(&self, rewrites: u64, currency: Currency, block: i64, ticks: HeldTicks) {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        if held.rewrites != rewrites {
            // The store was rewritten: what is held is not what it holds any more.
            *held = Held {
                rewrites,
                ..Held::default()
            };
        }
        let bytes = ticks.heap_bytes();
        let used = AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed));
        if let Some(old) = held
            .blocks
            .insert((currency, block), HeldBlock { ticks, used })
        {
            held.bytes -= old.ticks.heap_bytes();
        }
        held.bytes += bytes;
        if held.bytes > self.budget {
            // Down to three quarters of the budget, least recently used first, so that eviction
            // is paid once per many insertions.
            let mut by_use: Vec<(u64, (Currency, i64), usize)> = held
                .blocks
                .iter()
                .map(|(key, h)| (h.used.load(Ordering::Relaxed), *key, h.ticks.heap_bytes()))
                .collect();
            by_use.sort_unstable();
            for (_, key, bytes) in by_use {
                if held.bytes <= self.budget / 4 * 3 {
                    break;
                }
                held.blocks.remove(&key);
                held.bytes -= bytes;
            }
        }
    }

    /// The page for `query` from blocks and the tail, if the tail holds the gaps it reports and
    /// every block it reaches can be held: from the held blocks alone, else after reading the
    /// missing ones from SQLite on the blocking pool. `None`: ask SQLite.
    pub(crate) async fn page(
        self: &Arc<Self>,
        store: &HistoryStore,
        recent: &Arc<Recent>,
        query: &TicksQuery,
    ) -> Result<Option<BlockPage>, StoreError> {
        if !recent.holds_gaps_from(query.start.time) {
            return Ok(None);
        }
        let rewrites = recent.changes().rewrites;
        // One lock and one stamp for the whole walk: both are shared by every question.
        let walked = {
            let held = self.held.read().unwrap_or_else(|p| p.into_inner());
            let now = self.clock.fetch_add(1, Ordering::Relaxed);
            self.walk(recent, query, |currency, block| {
                Ok(held.get(rewrites, currency, block, now))
            })
        };
        match walked {
            Ok(parts) => return Ok(Some(self.page_of(recent, parts))),
            Err(Unservable::Missing) => {}
            Err(Unservable::Never) => return Ok(None),
            Err(Unservable::Store(error)) => return Err(error),
        }
        let (blocks, recent_for_read, query_for_read) =
            (self.clone(), recent.clone(), query.clone());
        let walked = store
            .read(move |snapshot| {
                if snapshot.changes()?.rewrites != rewrites {
                    return Ok(Err(Unservable::Never));
                }
                let span = blocks.span_ms;
                let read = |currency: Currency, block: i64| {
                    if let Some(ticks) = blocks.get(rewrites, currency, block) {
                        return Ok(Some(ticks));
                    }
                    let at = |ms| Timedate::from_unix_millis(ms).ok_or(Unservable::Never);
                    let (from, until) = (at(block * span)?, at((block + 1) * span)?);
                    let mut ticks = snapshot
                        .wire_ticks(currency, from, Some(until), MAX_BLOCK_TICKS + 1)
                        .map_err(Unservable::Store)?;
                    if ticks.len() > MAX_BLOCK_TICKS {
                        return Err(Unservable::Never);
                    }
                    ticks.shrink_to_fit();
                    let ticks = HeldTicks::new(ticks);
                    blocks.put(rewrites, currency, block, ticks.clone());
                    Ok(Some(ticks))
                };
                Ok(blocks.walk(&recent_for_read, &query_for_read, read))
            })
            .await?;
        match walked {
            Ok(parts) => Ok(Some(self.page_of(recent, parts))),
            Err(Unservable::Store(error)) => Err(error),
            Err(Unservable::Missing | Unservable::Never) => Ok(None),
        }
    }

    fn page_of(&self, recent: &Arc<Recent>, parts: Vec<Part>) -> BlockPage {
        BlockPage {
            recent: recent.clone(),
            parts,
        }
    }

    /// The blocks the page for `query` reaches, taken through `block`, all currencies in step: a
    /// block at a time, until the blocks and the tail hold more than `limit` ticks before the end
    /// of the current block (then the page and the key after it lie before that end), or every
    /// currency has reached the tail.
    fn walk(
        &self,
        recent: &Recent,
        query: &TicksQuery,
        mut block: impl FnMut(Currency, i64) -> Result<Option<HeldTicks>, Unservable>,
    ) -> Result<Vec<Part>, Unservable> {
        let span = self.span_ms;
        let mut parts: Vec<Part> = query
            .currencies
            .iter()
            .map(|&currency| Part {
                currency,
                from: first_time(query.start, currency),
                tail_from: recent.of(currency).covered_from(),
                segments: Vec::new(),
            })
            .collect();
        let Some(first) = parts
            .iter()
            .filter_map(|p| p.from.filter(|&from| from < p.tail_from))
            .min()
        else {
            // Nothing before the tail: the tail answers it (`Recent::covers`), not blocks.
            return Err(Unservable::Never);
        };
        let want = query.limit.saturating_add(1);
        let mut number = first.unix_millis().div_euclid(span);
        loop {
            let end = (number + 1) * span;
            let mut held = 0;
            for part in &mut parts {
                let Some(from) = part.from else { continue };
                let (from_ms, tail_ms) = (from.unix_millis(), part.tail_from.unix_millis());
                if number * span < tail_ms && end > from_ms {
                    let recent = recent.of(part.currency);
                    // Closed: a tick at or after its end is stored, so none can be added to it.
                    if recent
                        .bounds()
                        .is_none_or(|(_, newest)| newest.unix_millis() < end)
                    {
                        return Err(Unservable::Never);
                    }
                    let ticks = block(part.currency, number)?.ok_or(Unservable::Missing)?;
                    let times = ticks.times();
                    let lo = times.partition_point(|t| *t < from);
                    let hi = times.partition_point(|t| *t < part.tail_from);
                    if hi > lo {
                        part.segments.push((ticks, lo, hi - lo));
                    }
                }
                held += part.segments.iter().map(|(_, _, n)| n).sum::<usize>();
                if end > tail_ms {
                    let times = recent.of(part.currency).ticks().times();
                    let end = Timedate::from_unix_millis(end).unwrap_or(Timedate::EPOCH);
                    held += times.partition_point(|t| *t < end)
                        - times.partition_point(|t| *t < from.max(part.tail_from));
                }
            }
            let all_in_tail = parts
                .iter()
                .all(|p| p.from.is_none() || end >= p.tail_from.unix_millis());
            if held >= want || all_in_tail {
                return Ok(parts);
            }
            number += 1;
        }
    }
}

impl BlockPage {
    /// The page, cut at the query's limit, with the tail's bounds and gaps.
    pub(crate) fn assemble(&self, query: &TicksQuery) -> Assembled<'_> {
        let want = query.limit.saturating_add(1);
        // Per currency: the ticks reached, as (ticks, first, count) runs in order, the tail last.
        let runs: Vec<Vec<(&HeldTicks, usize, usize)>> = self
            .parts
            .iter()
            .map(|part| {
                let mut runs: Vec<(&HeldTicks, usize, usize)> = part
                    .segments
                    .iter()
                    .map(|(ticks, lo, n)| (ticks, *lo, *n))
                    .collect();
                if let Some(from) = part.from {
                    let tail = self.recent.of(part.currency).ticks();
                    let lo = tail
                        .times()
                        .partition_point(|t| *t < from.max(part.tail_from));
                    let held: usize = runs.iter().map(|(_, _, n)| n).sum();
                    let n = (tail.len() - lo).min(want.saturating_sub(held));
                    runs.push((tail, lo, n));
                }
                runs
            })
            .collect();
        let times: Vec<Vec<Timedate>> = runs
            .iter()
            .map(|runs| {
                let mut times = Vec::with_capacity(runs.iter().map(|(_, _, n)| n).sum());
                for (ticks, lo, n) in runs {
                    times.extend_from_slice(&ticks.times()[*lo..lo + n]);
                }
                times
            })
            .collect();
        let lists: Vec<(Currency, &[Timedate])> = self
            .parts
            .iter()
            .zip(&times)
            .map(|(part, times)| (part.currency, times.as_slice()))
            .collect();
        let (taken, next) = cut(&lists, |t| *t, query.limit);
        Assembled {
            runs: self
                .parts
                .iter()
                .zip(&runs)
                .zip(taken)
                .map(|((part, runs), mut left)| {
                    let mut pieces = Vec::with_capacity(runs.len());
                    for &(ticks, from, n) in runs {
                        let n = n.min(left);
                        pieces.push(Piece { ticks, from, n });
                        left -= n;
                    }
                    (part.currency, pieces)
                })
                .collect(),
            bounds: self
                .parts
                .iter()
                .map(|part| self.recent.of(part.currency).bounds())
                .collect(),
            gaps: self.recent.gaps(
                &query.currencies,
                query.start.time,
                next.map(|key| key.time),
            ),
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use history_store::HistoryStore;

    use super::*;
    use crate::answer::{Answer, encode};
    use crate::cursor::PageKey;
    use crate::test_store::{FEED, at, gappy_store, queries, sqlite};

    /// 400 slots; EUR misses all of slots 120..170 (more than a block of the tests' size) and has
    /// a gap to `at(850)`.
    async fn store() -> HistoryStore {
        gappy_store(400, 120..170, 850).await
    }

    /// Every start key around every slot before the tail, every currency set, limits that cut
    /// pages anywhere.
    fn all_queries() -> impl Iterator<Item = TicksQuery> {
        queries(1700, &[1, 2, 3, 7, 50, 10_000]).into_iter()
    }

    /// Blocks of 4 slots (20 s) and a tail of 60 ticks: a page from blocks (read from SQLite or
    /// held, whatever the budget evicts) is byte for byte SQLite's, for every question the tail
    /// does not cover.
    #[tokio::test]
    async fn answers_from_blocks_are_the_answers_from_sqlite() {
        let store = store().await;
        let recent = Arc::new(Recent::read_blocking(&store, 60).unwrap());
        for budget in [usize::MAX, 4096] {
            let blocks = Arc::new(Blocks::of_span(20_000, budget));
            let (mut served, mut covered) = (0, 0);
            // With a small budget (blocks evicted and read again all along), a sample.
            let sample = if budget == usize::MAX { 1 } else { 7 };
            for query in all_queries().step_by(sample) {
                if recent.covers(&query) {
                    covered += 1;
                    continue;
                }
                let page = blocks.page(&store, &recent, &query).await.unwrap();
                let page = page.unwrap_or_else(|| panic!("not from blocks: {query:?}"));
                let page = page.assemble(&query);
                let memory = Answer::encode(&query, &page, &FEED, page.closed()).unwrap();
                let body = memory.joined();
                assert_eq!(
                    std::str::from_utf8(&body).unwrap(),
                    sqlite(&store, &query).await,
                    "{query:?}"
                );
                // Its tag is the tag of those bytes, however they were cut into pieces.
                assert_eq!(memory.etag, crate::conditional::etag(&body), "{query:?}");
                served += 1;
            }
            assert!(served > 5_000 && covered > 100, "{served} {covered}");
            let held = blocks.held.read().unwrap();
            assert!(held.bytes <= budget && !held.blocks.is_empty());
        }
    }

    /// Once read, blocks serve without SQLite; a rewrite of the store retires them all.
    #[tokio::test]
    async fn held_blocks_serve_until_the_store_is_rewritten() {
        let store = store().await;
        let recent = Arc::new(Recent::read_blocking(&store, 60).unwrap());
        let blocks = Arc::new(Blocks::of_span(20_000, usize::MAX));
        let query = TicksQuery {
            start: PageKey {
                time: at(100),
                currency: Currency::USD,
            },
            currencies: Currency::ALL.to_vec(),
            limit: 30,
        };
        let only_held = |recent: &Recent| {
            let rewrites = recent.changes().rewrites;
            blocks
                .walk(recent, &query, |c, n| Ok(blocks.get(rewrites, c, n)))
                .is_ok()
        };
        assert!(!only_held(&recent), "nothing is held before it is read");
        blocks.page(&store, &recent, &query).await.unwrap().unwrap();
        assert!(only_held(&recent));

        // Another program edits a tick of the page.
        store
            .tamper_blocking(|c| {
                c.execute(
                    "UPDATE ticks SET price = '2' WHERE currency = 840 AND ts = ?1",
                    [at(105).unix_millis()],
                )
            })
            .unwrap();
        let rewritten = Arc::new(Recent::read_blocking(&store, 60).unwrap());
        assert!(
            !only_held(&rewritten),
            "blocks of the old count are not served"
        );
        let page = blocks
            .page(&store, &rewritten, &query)
            .await
            .unwrap()
            .unwrap();
        let page = page.assemble(&query);
        let body = String::from_utf8(encode(&query, &page, &FEED, page.closed()).unwrap()).unwrap();
        assert!(
            body.contains(r#"{"timedate":"2023-11-14T22:15:05Z","price":2}"#),
            "{body}"
        );
        assert_eq!(body, sqlite(&store, &query).await);
        // A copy of the tail from before the rewrite gets nothing from blocks read after it.
        assert!(
            blocks
                .page(&store, &recent, &query)
                .await
                .unwrap()
                .is_none()
        );
    }

    /// A block that reaches past a currency's newest tick is still open: such a question is
    /// answered from SQLite.
    #[tokio::test]
    async fn open_blocks_are_not_held() {
        let store = store().await;
        // Blocks longer than the whole store: the only block is open.
        let recent = Arc::new(Recent::read_blocking(&store, 60).unwrap());
        let blocks = Arc::new(Blocks::of_span(10_000_000, usize::MAX));
        let query = TicksQuery {
            start: PageKey {
                time: at(0),
                currency: Currency::USD,
            },
            currencies: Currency::ALL.to_vec(),
            limit: 10,
        };
        assert!(
            blocks
                .page(&store, &recent, &query)
                .await
                .unwrap()
                .is_none()
        );
        assert!(blocks.held.read().unwrap().blocks.is_empty());
    }
}
