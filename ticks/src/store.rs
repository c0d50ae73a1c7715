//! [`HistoryStore`]: every tick and every gap, in one SQLite file.
//!
//! Schema (version 1), chosen for the one query that matters, "ticks of currency C from time T,
//! oldest first", and for size (a year of 5 s ticks in two currencies is 12.6 million rows):
//!
//! - `ticks(currency, ts, price)`: `WITHOUT ROWID`, primary key `(currency, ts)`, so the table *is*
//!   the index and a range scan reads consecutive pages. `currency` is the ISO 4217 number (2 bytes),
//!   `ts` the slot start in ms, `price` the exact decimal text. About 25 bytes per tick on disk.
//! - `gaps(currency, start_ts, end_ts, reason)`: slots `[start_ts, end_ts)` that got no tick.
//!
//! Durability: WAL with `synchronous=FULL`. A tick is committed (fsynced) before it is published, so
//! a published tick survives a killed process and a power cut; the cost is one fsync per slot.
//! Several processes may open the file (the publisher writes, a separate `history-api` reads): WAL
//! lets readers run beside the writer and a busy timeout absorbs the short write locks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::{Currency, Interval, Price, Tick, Timedate};

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections kept open for reuse; more are opened under load and closed after.
const MAX_IDLE_READERS: usize = 8;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: ticks and gaps.
    "CREATE TABLE ticks (
         currency INTEGER NOT NULL,
         ts       INTEGER NOT NULL,
         price    TEXT    NOT NULL,
         PRIMARY KEY (currency, ts)
     ) WITHOUT ROWID;
     CREATE TABLE gaps (
         currency INTEGER NOT NULL,
         start_ts INTEGER NOT NULL,
         end_ts   INTEGER NOT NULL,
         reason   TEXT    NOT NULL,
         PRIMARY KEY (currency, start_ts)
     ) WITHOUT ROWID;",
    // 2: what the publisher writes with (interval, demo), so a separate history server reports
    // the feed as it is, not as its own flags say.
    "CREATE TABLE feed_info (
         key   TEXT PRIMARY KEY,
         value TEXT NOT NULL
     ) WITHOUT ROWID;",
];

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the store's schema version {found} is newer than this program knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("the disk holding the store is full")]
    DiskFull(#[source] rusqlite::Error),
    #[error("store query failed")]
    Sqlite(#[source] rusqlite::Error),
    #[error("the store holds a row this program cannot read: {0}")]
    Corrupt(String),
    #[error("store task failed: {0}")]
    Task(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::DiskFull(e),
            _ => StoreError::Sqlite(e),
        }
    }
}

/// Why a span of slots has no tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The publisher ran, but no source gave a valid price for the slot.
    SourcesUnavailable,
    /// No publisher was running (found at start-up: the slots between the last tick and now).
    PublisherDown,
    /// A price was fetched but could not be stored (e.g. a full disk), so it was not published.
    StoreUnavailable,
}

impl GapReason {
    fn as_str(self) -> &'static str {
        match self {
            GapReason::SourcesUnavailable => "sources_unavailable",
            GapReason::PublisherDown => "publisher_down",
            GapReason::StoreUnavailable => "store_unavailable",
        }
    }

    fn parse(s: &str) -> Option<GapReason> {
        [
            GapReason::SourcesUnavailable,
            GapReason::PublisherDown,
            GapReason::StoreUnavailable,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// How the feed writing a store runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedInfo {
    pub interval: Interval,
    /// Prices come from the demo random walk.
    pub demo: bool,
}

/// Slots `[from, until)` of one currency that have no tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub currency: Currency,
    pub from: Timedate,
    pub until: Timedate,
    pub reason: GapReason,
}

/// The ticks and gaps of the feed, in SQLite. Cheap to clone; all methods run the blocking SQLite
/// work on tokio's blocking pool.
#[derive(Clone)]
pub struct HistoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    /// `None` for an in-memory store, whose only connection is the writer.
    path: Option<PathBuf>,
    idle_readers: Mutex<Vec<Connection>>,
    /// Commits made through this handle's writer.
    writes: std::sync::atomic::AtomicU64,
    /// A connection kept only to ask `PRAGMA data_version`, which changes when any *other*
    /// connection (this process's writer, or another process) commits. `None` in memory.
    watcher: Option<Mutex<Connection>>,
}

impl HistoryStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<HistoryStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // journal_mode is persistent in the file; setting it needs no lock if already WAL.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        migrate(&conn)?;
        let watcher = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(open_err)?;
        Ok(HistoryStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(conn),
                path: Some(path),
                idle_readers: Mutex::new(Vec::new()),
                writes: Default::default(),
                watcher: Some(Mutex::new(watcher)),
            }),
        })
    }

    /// A private store in memory, for tests.
    pub fn open_in_memory() -> Result<HistoryStore, StoreError> {
        let conn = Connection::open_in_memory()?;
        migrate(&conn)?;
        Ok(HistoryStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(conn),
                path: None,
                idle_readers: Mutex::new(Vec::new()),
                writes: Default::default(),
                watcher: None,
            }),
        })
    }

    /// A value that changes whenever anything is committed to the store, by this process or
    /// another: equal versions mean equal contents. Cheap (microseconds, no disk read), so
    /// answers can be cached against it.
    pub fn version(&self) -> Result<(u64, i64), StoreError> {
        let ours = self.inner.writes.load(std::sync::atomic::Ordering::Acquire);
        let theirs = match &self.inner.watcher {
            Some(watcher) => watcher
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pragma_query_value(None, "data_version", |r| r.get(0))?,
            None => 0,
        };
        Ok((ours, theirs))
    }

    /// The file behind the store, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Runs `f` on the write connection, inside a transaction that commits if `f` succeeds.
    pub fn write_blocking<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        self.inner
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(out)
    }

    /// Runs `f` on a read connection (the writer, for an in-memory store).
    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(path) = &self.inner.path else {
            let conn = self
                .inner
                .writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            return f(&conn);
        };
        let idle = self
            .inner
            .idle_readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|source| StoreError::Open {
                    path: path.clone(),
                    source,
                })?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn
            }
        };
        let out = f(&conn);
        // A connection still inside a transaction (a rollback that failed) would serve an old
        // snapshot to whoever took it next: close it instead.
        if conn.is_autocommit() {
            let mut idle = self
                .inner
                .idle_readers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
        out
    }

    /// Runs `f` on a read connection inside one read transaction: every read through the
    /// [`Snapshot`] sees the same commit, so the parts of an answer agree with each other.
    pub fn snapshot_blocking<T>(
        &self,
        f: impl FnOnce(&Snapshot<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.read_blocking(|conn| {
            // Rolled back on drop: it only ever read.
            let tx = conn.unchecked_transaction()?;
            f(&Snapshot { conn: &tx })
        })
    }

    /// [`HistoryStore::snapshot_blocking`] on tokio's blocking pool: one hand-off for all of it.
    pub async fn snapshot<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Snapshot<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.blocking(move |s| s.snapshot_blocking(f)).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&HistoryStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Stores a tick; `Ok(false)` if a tick for that currency and slot is already stored (the first
    /// one wins, so replaying a tick is harmless).
    pub async fn insert_tick(&self, tick: Tick) -> Result<bool, StoreError> {
        self.blocking(move |s| s.write_blocking(|tx| insert_tick(tx, &tick)))
            .await
    }

    /// Stores several ticks in one transaction; returns how many were new.
    pub async fn insert_ticks(&self, ticks: Vec<Tick>) -> Result<usize, StoreError> {
        self.blocking(move |s| {
            s.write_blocking(|tx| {
                let mut new = 0;
                for tick in &ticks {
                    new += usize::from(insert_tick(tx, tick)?);
                }
                Ok(new)
            })
        })
        .await
    }

    /// Records that `[from, until)` has no tick, merging with a gap of the same reason that ends
    /// where this one starts.
    pub async fn record_gap(&self, gap: Gap) -> Result<(), StoreError> {
        self.blocking(move |s| s.write_blocking(|tx| record_gap(tx, gap)))
            .await
    }

    /// Records that one slot got no tick.
    pub async fn record_missing_slot(
        &self,
        currency: Currency,
        slot: Timedate,
        interval: Interval,
        reason: GapReason,
    ) -> Result<(), StoreError> {
        self.record_gap(Gap {
            currency,
            from: slot,
            until: slot.next(interval),
            reason,
        })
        .await
    }

    /// Up to `limit` ticks of `currency` with `timedate >= from`, oldest first.
    pub async fn ticks_since(
        &self,
        currency: Currency,
        from: Timedate,
        limit: usize,
    ) -> Result<Vec<Tick>, StoreError> {
        self.blocking(move |s| s.read_blocking(|c| ticks_since(c, currency, from, limit)))
            .await
    }

    /// The gaps of these currencies that overlap `[from, until)` (`until = None`: no end).
    pub async fn gaps_overlapping(
        &self,
        currencies: Vec<Currency>,
        from: Timedate,
        until: Option<Timedate>,
    ) -> Result<Vec<Gap>, StoreError> {
        self.blocking(move |s| s.read_blocking(|c| gaps_overlapping(c, &currencies, from, until)))
            .await
    }

    /// The oldest and newest stored tick of `currency`.
    pub async fn bounds(&self, currency: Currency) -> Result<Option<(Tick, Tick)>, StoreError> {
        self.blocking(move |s| s.read_blocking(|c| bounds(c, currency)))
            .await
    }

    /// Records how the publisher writing this store runs.
    pub async fn set_feed_info(&self, info: FeedInfo) -> Result<(), StoreError> {
        self.blocking(move |s| {
            s.write_blocking(|tx| {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO feed_info (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )?;
                stmt.execute(params![
                    "interval_ms",
                    info.interval.as_millis().to_string()
                ])?;
                stmt.execute(params!["demo", if info.demo { "1" } else { "0" }])?;
                Ok(())
            })
        })
        .await
    }

    /// How the publisher writing this store runs, if one ever did.
    pub async fn feed_info(&self) -> Result<Option<FeedInfo>, StoreError> {
        self.blocking(|s| {
            s.read_blocking(|c| {
                let get = |key: &str| -> Result<Option<String>, StoreError> {
                    Ok(
                        c.prepare_cached("SELECT value FROM feed_info WHERE key = ?1")?
                            .query_row(params![key], |r| r.get(0))
                            .optional()?,
                    )
                };
                let (Some(interval), Some(demo)) = (get("interval_ms")?, get("demo")?) else {
                    return Ok(None);
                };
                let interval = interval
                    .parse::<u64>()
                    .ok()
                    .and_then(|ms| Interval::new(Duration::from_millis(ms)).ok())
                    .ok_or_else(|| StoreError::Corrupt(format!("feed interval {interval:?}")))?;
                Ok(Some(FeedInfo {
                    interval,
                    demo: demo == "1",
                }))
            })
        })
        .await
    }

    /// The newest stored tick of `currency`.
    pub async fn latest(&self, currency: Currency) -> Result<Option<Tick>, StoreError> {
        Ok(self.bounds(currency).await?.map(|(_, newest)| newest))
    }
}

/// One consistent view of the store, from [`HistoryStore::snapshot`].
pub struct Snapshot<'c> {
    conn: &'c Connection,
}

impl Snapshot<'_> {
    /// Up to `limit` ticks of `currency` with `timedate >= from`, oldest first.
    pub fn ticks_since(
        &self,
        currency: Currency,
        from: Timedate,
        limit: usize,
    ) -> Result<Vec<Tick>, StoreError> {
        ticks_since(self.conn, currency, from, limit)
    }

    /// The newest `count` ticks of `currency`, oldest first.
    pub fn newest_ticks(&self, currency: Currency, count: usize) -> Result<Vec<Tick>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT ts, price FROM ticks WHERE currency = ?1 ORDER BY ts DESC LIMIT ?2",
        )?;
        let rows = stmt.query(params![
            currency.numeric(),
            i64::try_from(count).unwrap_or(i64::MAX)
        ])?;
        let mut out = collect_ticks(rows, currency, count)?;
        out.reverse();
        Ok(out)
    }

    /// The gaps of these currencies that overlap `[from, until)` (`until = None`: no end).
    pub fn gaps_overlapping(
        &self,
        currencies: &[Currency],
        from: Timedate,
        until: Option<Timedate>,
    ) -> Result<Vec<Gap>, StoreError> {
        gaps_overlapping(self.conn, currencies, from, until)
    }

    /// The oldest and newest stored tick of `currency`.
    pub fn bounds(&self, currency: Currency) -> Result<Option<(Tick, Tick)>, StoreError> {
        bounds(self.conn, currency)
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        // Each migration and its version bump commit together, so a crash mid-way re-runs it whole.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
    }
    Ok(())
}

fn insert_tick(tx: &rusqlite::Transaction<'_>, tick: &Tick) -> Result<bool, StoreError> {
    let n = tx
        .prepare_cached("INSERT OR IGNORE INTO ticks (currency, ts, price) VALUES (?1, ?2, ?3)")?
        .execute(params![
            tick.currency.numeric(),
            tick.timedate.unix_millis(),
            tick.price.to_string()
        ])?;
    Ok(n == 1)
}

fn record_gap(tx: &rusqlite::Transaction<'_>, gap: Gap) -> Result<(), StoreError> {
    if gap.until <= gap.from {
        return Ok(());
    }
    let cur = gap.currency.numeric();
    let (from, until) = (gap.from.unix_millis(), gap.until.unix_millis());
    // Extend a gap of the same reason that this one continues (the common case: one more failed
    // slot), or that already covers its start.
    let extended = tx
        .prepare_cached(
            "UPDATE gaps SET end_ts = max(end_ts, ?3)
             WHERE currency = ?1 AND reason = ?4 AND start_ts <= ?2 AND end_ts >= ?2",
        )?
        .execute(params![cur, from, until, gap.reason.as_str()])?;
    if extended == 0 {
        tx.prepare_cached(
            "INSERT INTO gaps (currency, start_ts, end_ts, reason) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (currency, start_ts) DO UPDATE SET end_ts = max(end_ts, excluded.end_ts)",
        )?
        .execute(params![cur, from, until, gap.reason.as_str()])?;
    }
    Ok(())
}

fn row_tick(currency: Currency, ts: i64, price: &str) -> Result<Tick, StoreError> {
    let timedate = Timedate::from_unix_millis(ts)
        .ok_or_else(|| StoreError::Corrupt(format!("tick time {ts} out of range")))?;
    let price: Price = price
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("tick at {timedate}: {e}")))?;
    Ok(Tick {
        currency,
        timedate,
        price,
    })
}

fn ticks_since(
    conn: &Connection,
    currency: Currency,
    from: Timedate,
    limit: usize,
) -> Result<Vec<Tick>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT ts, price FROM ticks WHERE currency = ?1 AND ts >= ?2 ORDER BY ts LIMIT ?3",
    )?;
    let rows = stmt.query(params![
        currency.numeric(),
        from.unix_millis(),
        i64::try_from(limit).unwrap_or(i64::MAX)
    ])?;
    collect_ticks(rows, currency, limit)
}

/// The ticks of `(ts, price)` rows of one currency, in row order; `at_most` sizes the buffer.
fn collect_ticks(
    mut rows: rusqlite::Rows<'_>,
    currency: Currency,
    at_most: usize,
) -> Result<Vec<Tick>, StoreError> {
    let mut out = Vec::with_capacity(at_most.min(4096));
    while let Some(row) = rows.next()? {
        // The price text is borrowed from the row, not copied.
        let price = row
            .get_ref(1)?
            .as_str()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        out.push(row_tick(currency, row.get(0)?, price)?);
    }
    Ok(out)
}

fn gaps_overlapping(
    conn: &Connection,
    currencies: &[Currency],
    from: Timedate,
    until: Option<Timedate>,
) -> Result<Vec<Gap>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT start_ts, end_ts, reason FROM gaps
         WHERE currency = ?1 AND end_ts > ?2 AND start_ts < ?3 ORDER BY start_ts",
    )?;
    let mut out = Vec::new();
    for &currency in currencies {
        let until = until.map_or(i64::MAX, Timedate::unix_millis);
        let mut rows = stmt.query(params![currency.numeric(), from.unix_millis(), until])?;
        while let Some(row) = rows.next()? {
            let (start, end, reason): (i64, i64, String) = (row.get(0)?, row.get(1)?, row.get(2)?);
            let corrupt = || StoreError::Corrupt(format!("gap {start}..{end} {reason:?}"));
            out.push(Gap {
                currency,
                from: Timedate::from_unix_millis(start).ok_or_else(corrupt)?,
                until: Timedate::from_unix_millis(end).ok_or_else(corrupt)?,
                reason: GapReason::parse(&reason).ok_or_else(corrupt)?,
            });
        }
    }
    out.sort_by_key(|g| (g.from, g.currency));
    Ok(out)
}

fn bounds(conn: &Connection, currency: Currency) -> Result<Option<(Tick, Tick)>, StoreError> {
    let edge = |order: &str| -> Result<Option<Tick>, StoreError> {
        let sql =
            format!("SELECT ts, price FROM ticks WHERE currency = ?1 ORDER BY ts {order} LIMIT 1");
        let row: Option<(i64, String)> = conn
            .prepare_cached(&sql)?
            .query_row(params![currency.numeric()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        row.map(|(ts, price)| row_tick(currency, ts, &price))
            .transpose()
    };
    Ok(match (edge("ASC")?, edge("DESC")?) {
        (Some(oldest), Some(newest)) => Some((oldest, newest)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(currency: Currency, t: &str, price: &str) -> Tick {
        Tick {
            currency,
            timedate: t.parse().unwrap(),
            price: price.parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn ticks_come_back_exactly_oldest_first_from_an_inclusive_since() {
        let store = HistoryStore::open_in_memory().unwrap();
        let usd = [
            tick(Currency::USD, "2026-11-24T01:40:10Z", "97001.5"),
            tick(Currency::USD, "2026-11-24T01:40:00Z", "97000"),
            tick(Currency::USD, "2026-11-24T01:40:05Z", "97000.25"),
        ];
        assert_eq!(store.insert_ticks(usd.to_vec()).await.unwrap(), 3);
        store
            .insert_tick(tick(Currency::EUR, "2026-11-24T01:40:05Z", "89000.1"))
            .await
            .unwrap();

        let got = store
            .ticks_since(Currency::USD, "2026-11-24T01:40:05Z".parse().unwrap(), 10)
            .await
            .unwrap();
        assert_eq!(got, vec![usd[2], usd[0]]);
        let limited = store
            .ticks_since(Currency::USD, "2026-11-24T01:40:00Z".parse().unwrap(), 2)
            .await
            .unwrap();
        assert_eq!(limited, vec![usd[1], usd[2]]);
        let eur = store
            .ticks_since(Currency::EUR, "2026-11-24T00:00:00Z".parse().unwrap(), 10)
            .await
            .unwrap();
        assert_eq!(eur[0].price.to_string(), "89000.1");
        assert_eq!(
            store.bounds(Currency::USD).await.unwrap(),
            Some((usd[1], usd[0]))
        );
        assert_eq!(store.latest(Currency::EUR).await.unwrap(), Some(eur[0]));
    }

    #[tokio::test]
    async fn the_first_tick_of_a_slot_wins() {
        let store = HistoryStore::open_in_memory().unwrap();
        let first = tick(Currency::USD, "2026-11-24T01:40:00Z", "1");
        assert!(store.insert_tick(first).await.unwrap());
        assert!(
            !store
                .insert_tick(tick(Currency::USD, "2026-11-24T01:40:00Z", "2"))
                .await
                .unwrap()
        );
        assert_eq!(store.latest(Currency::USD).await.unwrap(), Some(first));
    }

    #[tokio::test]
    async fn consecutive_missing_slots_form_one_gap() {
        let store = HistoryStore::open_in_memory().unwrap();
        let i = Interval::DEFAULT;
        let t0: Timedate = "2026-11-24T01:40:00Z".parse().unwrap();
        let mut slot = t0;
        for _ in 0..3 {
            store
                .record_missing_slot(Currency::USD, slot, i, GapReason::SourcesUnavailable)
                .await
                .unwrap();
            slot = slot.next(i);
        }
        // A different reason right after starts a new gap.
        store
            .record_missing_slot(Currency::USD, slot, i, GapReason::StoreUnavailable)
            .await
            .unwrap();
        let gaps = store
            .gaps_overlapping(Currency::ALL.to_vec(), t0, None)
            .await
            .unwrap();
        assert_eq!(
            gaps,
            vec![
                Gap {
                    currency: Currency::USD,
                    from: t0,
                    until: "2026-11-24T01:40:15Z".parse().unwrap(),
                    reason: GapReason::SourcesUnavailable,
                },
                Gap {
                    currency: Currency::USD,
                    from: "2026-11-24T01:40:15Z".parse().unwrap(),
                    until: "2026-11-24T01:40:20Z".parse().unwrap(),
                    reason: GapReason::StoreUnavailable,
                }
            ]
        );
        // Overlap is half-open: a query starting where a gap ends does not see it.
        let later = store
            .gaps_overlapping(
                vec![Currency::USD],
                "2026-11-24T01:40:20Z".parse().unwrap(),
                None,
            )
            .await
            .unwrap();
        assert!(later.is_empty());
        let none_for_eur = store
            .gaps_overlapping(vec![Currency::EUR], t0, None)
            .await
            .unwrap();
        assert!(none_for_eur.is_empty());
    }

    #[tokio::test]
    async fn a_file_store_reopens_with_its_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.db");
        let t = tick(Currency::EUR, "2026-11-24T01:40:00Z", "89000.1");
        {
            let store = HistoryStore::open(&path).unwrap();
            store.insert_tick(t).await.unwrap();
        }
        let store = HistoryStore::open(&path).unwrap();
        assert_eq!(store.latest(Currency::EUR).await.unwrap(), Some(t));
        let mode: String = store
            .read_blocking(|c| Ok(c.pragma_query_value(None, "journal_mode", |r| r.get(0))?))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn the_version_changes_with_every_commit_from_any_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.db");
        let reader = HistoryStore::open(&path).unwrap();
        let writer = HistoryStore::open(&path).unwrap();
        let v0 = reader.version().unwrap();
        assert_eq!(reader.version().unwrap(), v0, "no commit, no change");
        writer
            .insert_tick(tick(Currency::USD, "2026-11-24T01:40:00Z", "1"))
            .await
            .unwrap();
        let v1 = reader.version().unwrap();
        assert_ne!(v1, v0, "another handle's commit is seen");
        reader
            .insert_tick(tick(Currency::USD, "2026-11-24T01:40:05Z", "1"))
            .await
            .unwrap();
        assert_ne!(reader.version().unwrap(), v1, "our own commit is seen");
        let memory = HistoryStore::open_in_memory().unwrap();
        let m0 = memory.version().unwrap();
        memory
            .insert_tick(tick(Currency::USD, "2026-11-24T01:40:00Z", "1"))
            .await
            .unwrap();
        assert_ne!(memory.version().unwrap(), m0);
    }

    #[tokio::test]
    async fn feed_info_round_trips() {
        let store = HistoryStore::open_in_memory().unwrap();
        assert_eq!(store.feed_info().await.unwrap(), None);
        let info = FeedInfo {
            interval: "250ms".parse().unwrap(),
            demo: true,
        };
        store.set_feed_info(info).await.unwrap();
        assert_eq!(store.feed_info().await.unwrap(), Some(info));
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_not_mangled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            HistoryStore::open(&path),
            Err(StoreError::TooNew {
                found: 99,
                known: 2
            })
        ));
    }

    #[tokio::test]
    async fn a_full_disk_is_a_clear_error_and_keeps_what_was_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.db");
        let store = HistoryStore::open(&path).unwrap();
        let first = tick(Currency::USD, "2026-11-24T00:00:00Z", "1");
        store.insert_tick(first).await.unwrap();
        // Cap the file at its current size: SQLite then fails writes exactly as on a full disk.
        store
            .write_blocking(|tx| {
                let pages: i64 = tx.pragma_query_value(None, "page_count", |r| r.get(0))?;
                tx.pragma_update(None, "max_page_count", pages)?;
                Ok(())
            })
            .unwrap();
        let mut err = None;
        for i in 1..10_000 {
            let t = Timedate::from_unix_millis(first.timedate.unix_millis() + i * 5000).unwrap();
            if let Err(e) = store
                .insert_tick(Tick {
                    timedate: t,
                    ..first
                })
                .await
            {
                err = Some(e);
                break;
            }
        }
        let err = err.expect("the capped store must fill up");
        assert!(matches!(err, StoreError::DiskFull(_)), "{err:?}");
        assert_eq!(err.to_string(), "the disk holding the store is full");
        drop(store);
        let reopened = HistoryStore::open(&path).unwrap();
        assert_eq!(
            reopened.bounds(Currency::USD).await.unwrap().unwrap().0,
            first
        );
    }

    #[tokio::test]
    async fn unreadable_rows_are_reported_not_served() {
        let store = HistoryStore::open_in_memory().unwrap();
        store
            .write_blocking(|tx| {
                tx.execute("INSERT INTO ticks VALUES (840, 0, 'NaN')", [])?;
                Ok(())
            })
            .unwrap();
        let err = store
            .ticks_since(Currency::USD, Timedate::from_unix_millis(0).unwrap(), 10)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }
}
