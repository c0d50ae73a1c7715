//! What the in-memory paths' tests share: a store with gaps and prices of every shape, every
//! question around every slot, and SQLite's answer to compare with.

use std::ops::Range;

use history_store::HistoryStore;
use ticks::{Currency, Gap, GapReason, Interval, Tick, Timedate};

use crate::answer::{FeedFacts, encode};
use crate::cursor::PageKey;
use crate::query::TicksQuery;
use crate::stored::StoredPage;

pub(crate) const FEED: FeedFacts = FeedFacts {
    interval: Interval::DEFAULT,
    demo: false,
};

/// `s` seconds into the tests' stores.
pub(crate) fn at(s: i64) -> Timedate {
    Timedate::from_unix_millis(1_700_000_000_000 + s * 1000).unwrap()
}

/// `slots` slots of 5 s: USD misses every 7th slot, EUR every 3rd and all of the slots in
/// `eur_hole`, recorded as gaps (EUR's also as one gap from `at(600)` to `at(eur_gap_until)`),
/// with prices of every shape the wire can print.
pub(crate) async fn gappy_store(
    slots: i64,
    eur_hole: Range<i64>,
    eur_gap_until: i64,
) -> HistoryStore {
    let store = HistoryStore::open_in_memory().unwrap();
    let prices = ["97001.5", "1", "0.01", "123456.78", "60000"];
    let mut ticks = Vec::new();
    let five = Interval::new(std::time::Duration::from_secs(5)).unwrap();
    for slot in 0..slots {
        let price = prices[slot as usize % prices.len()].parse().unwrap();
        let t = at(slot * 5);
        if slot % 7 != 3 {
            ticks.push(Tick {
                currency: Currency::USD,
                timedate: t,
                price,
            });
        } else {
            let reason = GapReason::SourcesUnavailable;
            store
                .record_missing_slot(Currency::USD, t, five, reason)
                .await
                .unwrap();
        }
        if slot % 3 != 1 && !eur_hole.contains(&slot) {
            ticks.push(Tick {
                currency: Currency::EUR,
                timedate: t,
                price,
            });
        }
    }
    store
        .record_gap(Gap {
            currency: Currency::EUR,
            from: at(600),
            until: at(eur_gap_until),
            reason: GapReason::PublisherDown,
        })
        .await
        .unwrap();
    store.insert_ticks(ticks).await.unwrap();
    store
}

/// Every start key around every 5 s from `at(-10)` to before `at(until)` (a millisecond before,
/// on and after), each currency to start with, every currency set, each of `limits`.
pub(crate) fn queries(until: i64, limits: &[usize]) -> Vec<TicksQuery> {
    let sets = [
        vec![Currency::USD],
        vec![Currency::EUR],
        vec![Currency::USD, Currency::EUR],
    ];
    let mut out = Vec::new();
    for s in (-10..until).step_by(5) {
        for shift in [-1, 0, 1] {
            let Some(time) = Timedate::from_unix_millis(at(s).unix_millis() + shift) else {
                continue;
            };
            for currency in Currency::ALL {
                for currencies in &sets {
                    for &limit in limits {
                        out.push(TicksQuery {
                            start: PageKey { time, currency },
                            currencies: currencies.clone(),
                            limit,
                        });
                    }
                }
            }
        }
    }
    out
}

/// SQLite's answer to `query`, as the history API encodes it.
pub(crate) async fn sqlite(store: &HistoryStore, query: &TicksQuery) -> String {
    let stored = StoredPage::read(store, query).await.unwrap();
    let page = stored.assemble();
    String::from_utf8(encode(query, &page, &FEED, page.closed()).unwrap()).unwrap()
}
