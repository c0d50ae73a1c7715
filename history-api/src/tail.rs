//! The recent tail of the store, held in memory already encoded.
//!
//! Nearly every history question is about the recent past: a client that was away for seconds,
//! minutes or hours asks for everything since. Read from SQLite, such an answer costs a few hundred
//! nanoseconds per tick (the b-tree, then decoding and re-encoding every row); served from here it
//! costs a binary search and one copy of bytes per currency. [`Recent`] holds, per currency, the
//! newest [`TAIL_TICKS`] ticks as the exact bytes of their wire objects, joined by commas, with the
//! bounds and gaps an answer reports, all read in one SQLite transaction and tagged with the
//! store's version at that moment.
//!
//! It is a copy, never the authority: an answer comes from here only if the copy's version is the
//! store's current one (so it holds every committed tick) and the question starts inside what the
//! copy covers. Otherwise the answer is read from SQLite as before, and a refresh of the copy is
//! started in the background, one at a time. Nothing is read while no one asks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use history_store::{HistoryStore, Snapshot, StoreError, StoreVersion};
use ticks::{Currency, Gap, Timedate};

use crate::answer::{Assembled, Run, cut, first_time};
use crate::query::TicksQuery;

/// Ticks per currency held in memory: a day and a bit at the 5 s interval, about 1 MB each.
pub(crate) const TAIL_TICKS: usize = 20_000;

/// The newest copy of the tail, and whether a refresh is running.
#[derive(Default)]
pub(crate) struct Tail {
    current: Mutex<Option<Arc<Recent>>>,
    refreshing: AtomicBool,
    /// The store version whose tail could not be read (an unreadable row, say): not retried until
    /// the store changes, so a broken row costs one read per commit, not one per request.
    failed: Mutex<Option<StoreVersion>>,
    /// Reads started, for tests.
    reads: std::sync::atomic::AtomicU64,
}

impl Tail {
    /// The copy, if it is of this version of the store.
    pub(crate) fn at(&self, version: StoreVersion) -> Option<Arc<Recent>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|recent| recent.version == version)
            .cloned()
    }

    /// Starts reading a new copy on the blocking pool, unless one is being read already or reading
    /// failed at this `version` of the store.
    pub(crate) fn refresh(self: &Arc<Self>, store: HistoryStore, version: StoreVersion) {
        if *self.failed.lock().unwrap_or_else(|p| p.into_inner()) == Some(version) {
            return;
        }
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        let tail = self.clone();
        tokio::task::spawn_blocking(move || {
            // Cleared however this ends, so one failure does not stop every later refresh.
            struct Done<'a>(&'a AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _done = Done(&tail.refreshing);
            let started = std::time::Instant::now();
            match Recent::read_blocking(&store, TAIL_TICKS) {
                Ok(recent) => {
                    tracing::debug!(
                        ticks = recent
                            .currencies
                            .iter()
                            .map(|c| c.times.len())
                            .sum::<usize>(),
                        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                        "recent ticks read into memory"
                    );
                    *tail.current.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Arc::new(recent));
                    // A later failure is news again.
                    *tail.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                // Answers keep coming from SQLite (which reports a bad row to the question that
                // touches it); the tail is tried again once the store changes.
                Err(error) => {
                    let mut failed = tail.failed.lock().unwrap_or_else(|p| p.into_inner());
                    if failed.is_none() {
                        tracing::warn!(error = %error, "cannot hold the recent ticks in memory");
                    }
                    *failed = Some(version);
                }
            }
        });
    }
}

/// The tail of the store at one version.
pub(crate) struct Recent {
    version: StoreVersion,
    /// In [`Currency::ALL`] order.
    currencies: Vec<RecentTicks>,
    /// Every gap of any currency that ends after `gaps_from`, ordered as SQLite orders them.
    gaps: Vec<Gap>,
    gaps_from: Timedate,
}

struct RecentTicks {
    currency: Currency,
    /// Every stored tick of this currency at or after this time is in `times`.
    covered_from: Timedate,
    /// The oldest and newest stored tick's time, as the store had them.
    bounds: Option<(Timedate, Timedate)>,
    times: Vec<Timedate>,
    /// The wire objects of the ticks, in order, joined by commas.
    wire: Vec<u8>,
    /// `wire[..ends[i]]` ends with tick `i`.
    ends: Vec<usize>,
}

impl RecentTicks {
    /// The bytes of ticks `from..from + n`, commas between them.
    fn run(&self, from: usize, n: usize) -> &[u8] {
        if n == 0 {
            return &[];
        }
        let start = if from == 0 {
            0
        } else {
            self.ends[from - 1] + 1
        };
        &self.wire[start..self.ends[from + n - 1]]
    }
}

impl Recent {
    /// Reads the newest `size` ticks of each currency in one transaction, tagged with the version
    /// from just before it: the copy holds at least everything committed at that version.
    pub(crate) fn read_blocking(store: &HistoryStore, size: usize) -> Result<Recent, StoreError> {
        let version = store.version()?;
        store.read_blocking(|snapshot| Recent::read(snapshot, version, size))
    }

    fn read(
        snapshot: &Snapshot<'_>,
        version: StoreVersion,
        size: usize,
    ) -> Result<Recent, StoreError> {
        let mut currencies = Vec::with_capacity(Currency::ALL.len());
        for currency in Currency::ALL {
            let ticks = snapshot.newest_ticks(currency, size)?;
            let covered_from = match ticks.first() {
                Some(first) if ticks.len() == size => first.timedate,
                _ => Timedate::EPOCH,
            };
            let mut wire = Vec::with_capacity(ticks.len() * 56);
            let mut ends = Vec::with_capacity(ticks.len());
            for (i, tick) in ticks.iter().enumerate() {
                if i > 0 {
                    wire.push(b',');
                }
                tick.write_wire(&mut wire);
                ends.push(wire.len());
            }
            currencies.push(RecentTicks {
                currency,
                covered_from,
                bounds: snapshot
                    .bounds(currency)?
                    .map(|(oldest, newest)| (oldest.timedate, newest.timedate)),
                times: ticks.iter().map(|t| t.timedate).collect(),
                wire,
                ends,
            });
        }
        let gaps_from = currencies
            .iter()
            .map(|c| c.covered_from)
            .min()
            .unwrap_or(Timedate::EPOCH);
        let gaps = snapshot.gaps_overlapping(&Currency::ALL, gaps_from, None)?;
        Ok(Recent {
            version,
            currencies,
            gaps,
            gaps_from,
        })
    }

    fn of(&self, currency: Currency) -> &RecentTicks {
        self.currencies
            .iter()
            .find(|c| c.currency == currency)
            .expect("the tail holds every currency")
    }

    /// Whether the page this query asks for lies wholly inside the copy.
    pub(crate) fn covers(&self, query: &TicksQuery) -> bool {
        query.start.time >= self.gaps_from
            && query.currencies.iter().all(|&currency| {
                first_time(query.start, currency)
                    .is_none_or(|t| t >= self.of(currency).covered_from)
            })
    }

    /// The page for a query it [`covers`](Recent::covers).
    pub(crate) fn assemble(&self, query: &TicksQuery) -> Assembled<'_> {
        let TicksQuery {
            start,
            currencies,
            limit,
        } = query;
        let firsts: Vec<(&RecentTicks, usize)> = currencies
            .iter()
            .map(|&currency| {
                let recent = self.of(currency);
                let first = match first_time(*start, currency) {
                    Some(t) => recent.times.partition_point(|&x| x < t),
                    None => recent.times.len(),
                };
                (recent, first)
            })
            .collect();
        let lists: Vec<(Currency, &[Timedate])> = firsts
            .iter()
            .map(|(recent, first)| (recent.currency, &recent.times[*first..]))
            .collect();
        let (taken, next) = cut(&lists, |t| *t, *limit);
        let gaps = self
            .gaps
            .iter()
            .filter(|gap| {
                currencies.contains(&gap.currency)
                    && gap.until > start.time
                    && next.is_none_or(|end| gap.from < end.time)
            })
            .copied()
            .collect();
        Assembled {
            runs: firsts
                .iter()
                .zip(&taken)
                .map(|((recent, first), &n)| (recent.currency, Run::Wire(recent.run(*first, n))))
                .collect(),
            bounds: firsts.iter().map(|(recent, _)| recent.bounds).collect(),
            gaps,
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ticks::{GapReason, Interval, Tick};

    use super::*;
    use crate::answer::{FeedFacts, encode};
    use crate::cursor::PageKey;
    use crate::stored::StoredPage;

    fn at(s: i64) -> Timedate {
        Timedate::from_unix_millis(1_700_000_000_000 + s * 1000).unwrap()
    }

    /// 200 slots of 5 s: USD misses every 7th, EUR every 3rd and the whole of slots 120..140,
    /// recorded as gaps, with prices of every shape the wire can print.
    async fn store() -> HistoryStore {
        let store = HistoryStore::open_in_memory().unwrap();
        let prices = ["97001.5", "1", "0.01", "123456.78", "60000"];
        let mut ticks = Vec::new();
        for slot in 0..200i64 {
            let price = prices[slot as usize % prices.len()].parse().unwrap();
            let t = at(slot * 5);
            if slot % 7 != 3 {
                ticks.push(Tick {
                    currency: Currency::USD,
                    timedate: t,
                    price,
                });
            } else {
                store
                    .record_missing_slot(
                        Currency::USD,
                        t,
                        Interval::new(std::time::Duration::from_secs(5)).unwrap(),
                        GapReason::SourcesUnavailable,
                    )
                    .await
                    .unwrap();
            }
            if slot % 3 != 1 && !(120..140).contains(&slot) {
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
                until: at(700),
                reason: GapReason::PublisherDown,
            })
            .await
            .unwrap();
        store.insert_ticks(ticks).await.unwrap();
        store
    }

    const FEED: FeedFacts = FeedFacts {
        interval: Interval::DEFAULT,
        demo: false,
    };

    /// The memory path must answer byte for byte what SQLite answers, for every start key around
    /// every slot, every currency set and limits that cut pages anywhere; and it must decline what
    /// it does not hold.
    #[tokio::test]
    async fn answers_from_memory_are_the_answers_from_sqlite() {
        let store = store().await;
        let recent = Recent::read_blocking(&store, 50).unwrap();
        assert_eq!(recent.version, store.version().unwrap());
        let (mut covered, mut declined) = (0, 0);
        let sets = [
            vec![Currency::USD],
            vec![Currency::EUR],
            vec![Currency::USD, Currency::EUR],
        ];
        for s in (-10..1010).step_by(5) {
            for shift in [-1, 0, 1] {
                let Some(time) = Timedate::from_unix_millis(at(s).unix_millis() + shift) else {
                    continue;
                };
                for currency in Currency::ALL {
                    for currencies in &sets {
                        for limit in [1, 2, 3, 7, 50, 10_000] {
                            let query = TicksQuery {
                                start: PageKey { time, currency },
                                currencies: currencies.clone(),
                                limit,
                            };
                            if !recent.covers(&query) {
                                declined += 1;
                                continue;
                            }
                            covered += 1;
                            let memory = recent.assemble(&query);
                            let memory = encode(&query, &memory, &FEED, memory.closed()).unwrap();
                            let stored = StoredPage::read(&store, &query).await.unwrap();
                            let stored = stored.assemble();
                            let sqlite = encode(&query, &stored, &FEED, stored.closed()).unwrap();
                            assert_eq!(
                                String::from_utf8(memory).unwrap(),
                                String::from_utf8(sqlite).unwrap(),
                                "{query:?}"
                            );
                        }
                    }
                }
            }
        }
        // Both sides of the coverage line were exercised.
        assert!(
            covered > 1000 && declined > 1000,
            "{covered} covered, {declined} declined"
        );
    }

    /// A copy covers everything when the store holds fewer ticks than it keeps.
    #[tokio::test]
    async fn a_small_store_is_held_whole() {
        let store = store().await;
        let recent = Recent::read_blocking(&store, TAIL_TICKS).unwrap();
        let query = TicksQuery {
            start: PageKey {
                time: Timedate::EPOCH,
                currency: Currency::USD,
            },
            currencies: Currency::ALL.to_vec(),
            limit: 10,
        };
        assert!(recent.covers(&query));
    }

    /// An unreadable row stops the tail, not the answers, and costs one read per store version.
    #[tokio::test]
    async fn a_tail_that_cannot_be_read_is_not_reread_until_the_store_changes() {
        let store = store().await;
        store
            .tamper_blocking(|conn| {
                conn.execute(
                    "INSERT INTO ticks (currency, ts, price) VALUES (978, ?1, 'NaN')",
                    [at(5000).unix_millis()],
                )
            })
            .unwrap();
        let tail = Arc::new(Tail::default());
        let wait_idle = || async {
            while tail.refreshing.load(Ordering::Acquire) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        let version = store.version().unwrap();
        tail.refresh(store.clone(), version);
        wait_idle().await;
        assert!(tail.at(version).is_none(), "the bad row was not noticed");
        for _ in 0..5 {
            tail.refresh(store.clone(), version);
            wait_idle().await;
        }
        assert_eq!(tail.reads.load(Ordering::Relaxed), 1);

        // A commit (here: the bad row mended) makes it worth another read, which succeeds.
        store
            .tamper_blocking(|conn| {
                conn.execute("UPDATE ticks SET price = '1' WHERE price = 'NaN'", [])
            })
            .unwrap();
        let mended = store.version().unwrap();
        tail.refresh(store.clone(), mended);
        wait_idle().await;
        assert_eq!(tail.reads.load(Ordering::Relaxed), 2);
        assert!(tail.at(mended).is_some());
    }

    /// A copy is used only at the version it was read at.
    #[tokio::test]
    async fn a_commit_retires_the_copy() {
        let store = store().await;
        let tail = Arc::new(Tail::default());
        *tail.current.lock().unwrap() = Some(Arc::new(Recent::read_blocking(&store, 50).unwrap()));
        let before = store.version().unwrap();
        assert!(tail.at(before).is_some());
        store
            .insert_tick(Tick {
                currency: Currency::USD,
                timedate: at(5000),
                price: "1".parse().unwrap(),
            })
            .await
            .unwrap();
        let after = store.version().unwrap();
        assert_ne!(before, after);
        assert!(tail.at(after).is_none());
    }
}
