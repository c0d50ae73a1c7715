//! The recent tail of the store, held in memory already encoded.
//!
//! Nearly every history question is about the recent past: a client that was away for seconds,
//! minutes or hours asks for everything since. Read from SQLite, such an answer costs a few hundred
//! nanoseconds per tick (the b-tree, then each row into its wire bytes); served from here it costs
//! a binary search and one copy of bytes per currency. [`Recent`] holds, per currency, the newest
//! [`TAIL_TICKS`] ticks as the exact bytes of their wire objects, joined by commas, with the bounds
//! and the gaps an answer reports, all read in one SQLite transaction and tagged with the store's
//! version at that moment.
//!
//! It is a copy, never the authority: an answer comes from here only if the copy's version is the
//! store's current one (so it holds every committed tick) and the question starts inside what the
//! copy covers. Otherwise the answer is read from SQLite as before, and a refresh of the copy is
//! started in the background, one at a time. Nothing is read while no one asks.
//!
//! A refresh reads only what changed: while the store's count of rewrites
//! ([`StoreChanges`]) is the one the previous copy was read at, every commit since only appended
//! ticks, so the new copy is the previous one plus the ticks after its newest, trimmed to
//! [`TAIL_TICKS`]; the gaps are read again only if their own count moved. Any other change (a tick
//! replaced by a catch-up from a peer, one stored late, an edit by hand) reads the whole tail again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use history_store::{HistoryStore, Snapshot, StoreChanges, StoreError, StoreVersion, WireTicks};
use ticks::{Currency, Gap, Timedate};

use crate::answer::{Assembled, HeldTicks, Piece, cut, first_time};
use crate::query::TicksQuery;

/// Ticks per currency held in memory: a day and a bit at the 5 s interval, about 1 MB each.
pub(crate) const TAIL_TICKS: usize = 20_000;

/// Gaps held with the tail: all of the store's, so that questions about the older past (answered
/// from the blocks in memory) need no SQLite either, unless there are more than this; then only
/// those the tail's ticks reach.
const GAPS_HELD: u64 = 10_000;

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
        let previous = tail
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
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
            let read = match &previous {
                Some(previous) => previous.follow_blocking(&store, TAIL_TICKS),
                None => Recent::read_blocking(&store, TAIL_TICKS),
            };
            match read {
                Ok(recent) => {
                    tracing::debug!(
                        ticks = recent
                            .currencies
                            .iter()
                            .map(|c| c.ticks.len())
                            .sum::<usize>(),
                        whole = recent.whole,
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
    /// The store's change counts in the same transaction.
    changes: StoreChanges,
    /// In [`Currency::ALL`] order.
    currencies: Vec<RecentTicks>,
    /// Every gap of any currency that ends after `gaps_from`, ordered as SQLite orders them;
    /// shared with the next copy while no gap is written.
    gaps: Arc<Vec<Gap>>,
    /// `EPOCH` while every gap is held.
    gaps_from: Timedate,
    /// Read whole, not followed from the previous copy: for the log.
    whole: bool,
}

pub(crate) struct RecentTicks {
    currency: Currency,
    /// Every stored tick of this currency at or after this time is in `ticks`.
    covered_from: Timedate,
    /// The oldest and newest stored tick's time, as the store had them.
    bounds: Option<(Timedate, Timedate)>,
    ticks: HeldTicks,
}

impl RecentTicks {
    /// Every stored tick of this currency at or after this time is held.
    pub(crate) fn covered_from(&self) -> Timedate {
        self.covered_from
    }

    pub(crate) fn bounds(&self) -> Option<(Timedate, Timedate)> {
        self.bounds
    }

    pub(crate) fn ticks(&self) -> &HeldTicks {
        &self.ticks
    }

    fn new(
        snapshot: &Snapshot<'_>,
        currency: Currency,
        ticks: WireTicks,
        size: usize,
    ) -> Result<RecentTicks, StoreError> {
        RecentTicks::held(snapshot, currency, HeldTicks::new(ticks), size)
    }

    fn held(
        snapshot: &Snapshot<'_>,
        currency: Currency,
        ticks: HeldTicks,
        size: usize,
    ) -> Result<RecentTicks, StoreError> {
        let covered_from = match ticks.times().first() {
            Some(&first) if ticks.len() >= size => first,
            _ => Timedate::EPOCH,
        };
        Ok(RecentTicks {
            currency,
            covered_from,
            bounds: snapshot
                .bounds(currency)?
                .map(|(oldest, newest)| (oldest.timedate, newest.timedate)),
            ticks,
        })
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
        let changes = snapshot.changes()?;
        let mut currencies = Vec::with_capacity(Currency::ALL.len());
        for currency in Currency::ALL {
            let ticks = snapshot.newest_wire_ticks(currency, size)?;
            currencies.push(RecentTicks::new(snapshot, currency, ticks, size)?);
        }
        let (gaps, gaps_from) = Recent::read_gaps(snapshot, &currencies)?;
        Ok(Recent {
            version,
            changes,
            currencies,
            gaps,
            gaps_from,
            whole: true,
        })
    }

    /// Every gap if there are at most [`GAPS_HELD`], else those the tail's ticks reach.
    fn read_gaps(
        snapshot: &Snapshot<'_>,
        currencies: &[RecentTicks],
    ) -> Result<(Arc<Vec<Gap>>, Timedate), StoreError> {
        let gaps_from = if snapshot.gap_count()? <= GAPS_HELD {
            Timedate::EPOCH
        } else {
            currencies
                .iter()
                .map(|c| c.covered_from)
                .min()
                .unwrap_or(Timedate::EPOCH)
        };
        let gaps = snapshot.gaps_overlapping(&Currency::ALL, gaps_from, None)?;
        Ok((Arc::new(gaps), gaps_from))
    }

    /// The copy of the store's current version, from this one: only the ticks after this copy's
    /// newest are read while the store counts no rewrite since, and the gaps only if they were
    /// written; otherwise the whole tail, as [`Recent::read_blocking`].
    pub(crate) fn follow_blocking(
        &self,
        store: &HistoryStore,
        size: usize,
    ) -> Result<Recent, StoreError> {
        let version = store.version()?;
        store.read_blocking(|snapshot| {
            let changes = snapshot.changes()?;
            if changes.rewrites != self.changes.rewrites {
                return Recent::read(snapshot, version, size);
            }
            let mut currencies = Vec::with_capacity(self.currencies.len());
            for held in &self.currencies {
                let newer = match held.ticks.times().last() {
                    Some(newest) => match Timedate::from_unix_millis(newest.unix_millis() + 1) {
                        Some(after) => {
                            snapshot.newest_wire_ticks_since(held.currency, after, size)?
                        }
                        None => WireTicks::default(),
                    },
                    None => snapshot.newest_wire_ticks(held.currency, size)?,
                };
                let ticks = held.ticks.followed_by(&newer, size);
                currencies.push(RecentTicks::held(snapshot, held.currency, ticks, size)?);
            }
            let (gaps, gaps_from) = if changes.gap_writes == self.changes.gap_writes
                && self.gaps_from == Timedate::EPOCH
            {
                (self.gaps.clone(), Timedate::EPOCH)
            } else {
                Recent::read_gaps(snapshot, &currencies)?
            };
            Ok(Recent {
                version,
                changes,
                currencies,
                gaps,
                gaps_from,
                whole: false,
            })
        })
    }

    /// The store's change counts this copy was read at.
    pub(crate) fn changes(&self) -> StoreChanges {
        self.changes
    }

    pub(crate) fn of(&self, currency: Currency) -> &RecentTicks {
        self.currencies
            .iter()
            .find(|c| c.currency == currency)
            .expect("the tail holds every currency")
    }

    /// Whether the copy holds the gaps an answer starting at `start` reports.
    pub(crate) fn holds_gaps_from(&self, start: Timedate) -> bool {
        start >= self.gaps_from
    }

    /// The gaps of `currencies` that end after `start` and begin before `end` (no end: all), in
    /// the store's order: what a page from `start` to `end` reports.
    pub(crate) fn gaps(
        &self,
        currencies: &[Currency],
        start: Timedate,
        end: Option<Timedate>,
    ) -> Vec<Gap> {
        // Ordered by start: nothing from the first gap starting at or after `end` on.
        let before_end = match end {
            Some(end) => self.gaps.partition_point(|gap| gap.from < end),
            None => self.gaps.len(),
        };
        self.gaps[..before_end]
            .iter()
            .filter(|gap| currencies.contains(&gap.currency) && gap.until > start)
            .copied()
            .collect()
    }

    /// Whether the page this query asks for lies wholly inside the copy.
    pub(crate) fn covers(&self, query: &TicksQuery) -> bool {
        self.holds_gaps_from(query.start.time)
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
                let times = recent.ticks.times();
                let first = match first_time(*start, currency) {
                    Some(t) => times.partition_point(|&x| x < t),
                    None => times.len(),
                };
                (recent, first)
            })
            .collect();
        let lists: Vec<(Currency, &[Timedate])> = firsts
            .iter()
            .map(|(recent, first)| (recent.currency, &recent.ticks.times()[*first..]))
            .collect();
        let (taken, next) = cut(&lists, |t| *t, *limit);
        Assembled {
            runs: firsts
                .iter()
                .zip(&taken)
                .map(|((recent, first), &n)| {
                    let piece = Piece {
                        ticks: &recent.ticks,
                        from: *first,
                        n,
                    };
                    (recent.currency, vec![piece])
                })
                .collect(),
            bounds: firsts.iter().map(|(recent, _)| recent.bounds).collect(),
            gaps: self.gaps(currencies, start.time, next.map(|key| key.time)),
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ticks::{GapReason, Tick};

    use super::*;
    use crate::answer::encode;
    use crate::cursor::PageKey;
    use crate::stored::StoredPage;
    use crate::test_store::{FEED, at, gappy_store, queries, sqlite};

    /// 200 slots; EUR misses the whole of slots 120..140 and has a gap to `at(700)`.
    async fn store() -> HistoryStore {
        gappy_store(200, 120..140, 700).await
    }

    /// The memory path must answer byte for byte what SQLite answers, for every start key around
    /// every slot, every currency set and limits that cut pages anywhere; and it must decline what
    /// it does not hold.
    #[tokio::test]
    async fn answers_from_memory_are_the_answers_from_sqlite() {
        let store = store().await;
        let recent = Recent::read_blocking(&store, 50).unwrap();
        assert_eq!(recent.version, store.version().unwrap());
        let (mut covered, mut declined) = (0, 0);
        for query in queries(1010, &[1, 2, 3, 7, 50, 10_000]) {
            if !recent.covers(&query) {
                declined += 1;
                continue;
            }
            covered += 1;
            let memory = recent.assemble(&query);
            let memory = encode(&query, &memory, &FEED, memory.closed()).unwrap();
            assert_eq!(
                String::from_utf8(memory).unwrap(),
                sqlite(&store, &query).await,
                "{query:?}"
            );
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

    /// Every query the tests ask of a copy: start keys around every slot, every currency set,
    /// limits that cut anywhere.
    fn all_queries() -> Vec<TicksQuery> {
        queries(1100, &[1, 3, 50, 10_000])
    }

    /// What a copy answers to every query it covers (`None` for the others): tag and body.
    fn answers(recent: &Recent) -> Vec<Option<String>> {
        all_queries()
            .iter()
            .map(|query| {
                recent.covers(query).then(|| {
                    let page = recent.assemble(query);
                    let answer =
                        crate::answer::Answer::encode(query, &page, &FEED, page.closed()).unwrap();
                    let body = String::from_utf8(answer.joined().to_vec()).unwrap();
                    format!("{:?} {body}", answer.etag)
                })
            })
            .collect()
    }

    /// After commits that only append ticks (and write gaps), the copy followed from the previous
    /// one reads only what is new and answers exactly as a copy read whole.
    #[tokio::test]
    async fn a_copy_followed_through_appends_is_a_copy_read_whole() {
        let store = store().await;
        let mut recent = Recent::read_blocking(&store, 50).unwrap();
        for round in 0..4i64 {
            let slot = 200 + round * 3;
            let mut ticks = vec![Tick {
                currency: Currency::USD,
                timedate: at(slot * 5),
                price: "97001.5".parse().unwrap(),
            }];
            // Round 2 appends more than the copy holds of EUR, at once.
            let eur_slots = if round == 2 { 60 } else { 1 };
            for k in 0..eur_slots {
                ticks.push(Tick {
                    currency: Currency::EUR,
                    timedate: at((slot + k) * 5 + 1),
                    price: "0.01".parse().unwrap(),
                });
            }
            store.insert_ticks(ticks).await.unwrap();
            if round == 1 {
                store
                    .record_gap(Gap {
                        currency: Currency::USD,
                        from: at(slot * 5 + 5),
                        until: at(slot * 5 + 15),
                        reason: GapReason::SourcesUnavailable,
                    })
                    .await
                    .unwrap();
            }
            let followed = recent.follow_blocking(&store, 50).unwrap();
            let whole = Recent::read_blocking(&store, 50).unwrap();
            assert!(!followed.whole, "round {round} read the whole tail again");
            assert_eq!(followed.version, whole.version);
            assert_eq!(answers(&followed), answers(&whole), "round {round}");
            recent = followed;
        }
    }

    /// A tick changed in place (by another program here) is not an append: the copy is read
    /// whole, and answers with the change.
    #[tokio::test]
    async fn a_copy_after_a_rewrite_is_read_whole() {
        let store = store().await;
        let recent = Recent::read_blocking(&store, 50).unwrap();
        store
            .tamper_blocking(|c| {
                c.execute(
                    "UPDATE ticks SET price = '42' WHERE currency = 840 AND ts = ?1",
                    [at(990).unix_millis()],
                )
            })
            .unwrap();
        let followed = recent.follow_blocking(&store, 50).unwrap();
        assert!(followed.whole);
        let whole = Recent::read_blocking(&store, 50).unwrap();
        assert_eq!(answers(&followed), answers(&whole));
        let query = TicksQuery {
            start: PageKey {
                time: at(990),
                currency: Currency::USD,
            },
            currencies: vec![Currency::USD],
            limit: 1,
        };
        let page = followed.assemble(&query);
        let body = String::from_utf8(encode(&query, &page, &FEED, page.closed()).unwrap()).unwrap();
        assert!(body.contains(r#""price":42}"#), "{body}");
    }

    /// An answer's tag, computed from the tags of the ticks it holds, is the tag of its bytes, and
    /// the same from the tail as from SQLite.
    #[tokio::test]
    async fn tags_from_memory_are_the_tags_of_the_bytes() {
        use crate::answer::Answer;
        let store = store().await;
        let recent = Recent::read_blocking(&store, 50).unwrap();
        let mut covered = 0;
        for query in all_queries().iter().filter(|q| recent.covers(q)).step_by(3) {
            let page = recent.assemble(query);
            let memory = Answer::encode(query, &page, &FEED, page.closed()).unwrap();
            let stored = StoredPage::read(&store, query).await.unwrap();
            let page = stored.assemble();
            let sqlite = Answer::encode(query, &page, &FEED, page.closed()).unwrap();
            assert_eq!(memory.joined(), sqlite.joined(), "{query:?}");
            assert_eq!(memory.etag, sqlite.etag, "{query:?}");
            assert_eq!(
                memory.etag,
                crate::conditional::etag(&memory.joined()),
                "{query:?}"
            );
            covered += 1;
        }
        assert!(covered > 500, "{covered}");
    }
}
