//! [`Snapshot`]: every read the store answers, inside one read transaction.

use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Rows, params};
use ticks::{Currency, Gap, Interval, Price, Tick, Timedate};

use crate::error::StoreError;
use crate::feed_info::FeedInfo;
use crate::wire_ticks::WireTicks;

/// Counts the store keeps (by SQLite triggers, so whichever program writes) of changes that are
/// not appends of ticks. Compare two readings of the same store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreChanges {
    /// Stored ticks deleted or changed, and ticks stored before a newer tick of their currency.
    /// While it stays the same, every commit only added ticks after each currency's newest, so
    /// ticks read earlier are still exactly what the store holds up to the newest one read then.
    pub rewrites: u64,
    /// Gaps written (recorded, grown, replaced or deleted). While it stays the same, so do the gaps.
    pub gap_writes: u64,
}

/// One consistent view of the store, from [`HistoryStore::read`](crate::HistoryStore::read): every
/// read through it sees the same commit, so the parts of an answer agree with each other.
pub struct Snapshot<'c> {
    pub(crate) conn: &'c Connection,
}

impl Snapshot<'_> {
    /// Up to `limit` ticks of `currency` with `timedate >= from`, oldest first.
    pub fn ticks_since(
        &self,
        currency: Currency,
        from: Timedate,
        limit: usize,
    ) -> Result<Vec<Tick>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT ts, price FROM ticks WHERE currency = ?1 AND ts >= ?2 ORDER BY ts LIMIT ?3",
        )?;
        let rows = stmt.query(params![
            currency.numeric(),
            from.unix_millis(),
            sql_limit(limit)
        ])?;
        collect_ticks(rows, currency, limit)
    }

    /// Up to `limit` ticks of `currency` with `from <= timedate < until` (`until = None`: no end),
    /// oldest first, as their wire bytes.
    pub fn wire_ticks(
        &self,
        currency: Currency,
        from: Timedate,
        until: Option<Timedate>,
        limit: usize,
    ) -> Result<WireTicks, StoreError> {
        self.wire_ticks_between(
            currency,
            from.unix_millis(),
            until.map_or(i64::MAX, Timedate::unix_millis),
            limit,
        )
    }

    fn wire_ticks_between(
        &self,
        currency: Currency,
        from_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<WireTicks, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT ts, price FROM ticks WHERE currency = ?1 AND ts >= ?2 AND ts < ?3
             ORDER BY ts LIMIT ?4",
        )?;
        let mut rows = stmt.query(params![
            currency.numeric(),
            from_ms,
            until_ms,
            sql_limit(limit)
        ])?;
        let mut out = WireTicks::with_capacity(limit.min(4096));
        while let Some(row) = rows.next()? {
            push_row(&mut out, row.get(0)?, row.get_ref(1)?)?;
        }
        Ok(out)
    }

    /// The newest `count` ticks of `currency`, oldest first, as their wire bytes.
    pub fn newest_wire_ticks(
        &self,
        currency: Currency,
        count: usize,
    ) -> Result<WireTicks, StoreError> {
        self.newest_wire_ticks_from(currency, i64::MIN, count)
    }

    /// The newest `count` of the ticks of `currency` at or after `from`, oldest first, as their
    /// wire bytes.
    pub fn newest_wire_ticks_since(
        &self,
        currency: Currency,
        from: Timedate,
        count: usize,
    ) -> Result<WireTicks, StoreError> {
        self.newest_wire_ticks_from(currency, from.unix_millis(), count)
    }

    fn newest_wire_ticks_from(
        &self,
        currency: Currency,
        from_ms: i64,
        count: usize,
    ) -> Result<WireTicks, StoreError> {
        if count == 0 {
            return Ok(WireTicks::default());
        }
        // Where the newest `count` begin (walking the key back costs no row decoding), then read
        // forwards; without that many ticks, all of them.
        let start: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT ts FROM ticks WHERE currency = ?1 AND ts >= ?2
                 ORDER BY ts DESC LIMIT 1 OFFSET ?3",
            )?
            .query_row(
                params![currency.numeric(), from_ms, sql_limit(count - 1)],
                |r| r.get(0),
            )
            .optional()?;
        self.wire_ticks_between(currency, start.unwrap_or(from_ms), i64::MAX, count)
    }

    /// The first `count` ticks of the merge of several currencies' ticks, each list from its own
    /// start time, ordered by time and then by position in `starts`; as wire bytes, one
    /// [`WireTicks`] per entry of `starts`. One statement: SQLite merges the currencies' ordered
    /// ranges and stops after `count` rows, so a page of `limit` ticks reads `limit + 1` rows in
    /// all, not `limit + 1` per currency.
    pub fn merged_wire_ticks(
        &self,
        starts: &[(Currency, Timedate)],
        count: usize,
    ) -> Result<Vec<WireTicks>, StoreError> {
        let mut out: Vec<WireTicks> = starts
            .iter()
            .map(|_| WireTicks::with_capacity(count.min(4096) / starts.len().max(1)))
            .collect();
        if starts.is_empty() || count == 0 {
            return Ok(out);
        }
        let sql = (0..starts.len())
            .map(|i| {
                format!(
                    "SELECT ts, {i}, price FROM ticks WHERE currency = ?{} AND ts >= ?{}",
                    2 * i + 1,
                    2 * i + 2
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
            + &format!(" ORDER BY 1, 2 LIMIT ?{}", 2 * starts.len() + 1);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let values = starts
            .iter()
            .flat_map(|&(currency, from)| [currency.numeric(), from.unix_millis()])
            .chain([sql_limit(count)]);
        let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
        while let Some(row) = rows.next()? {
            let list: usize = row.get(1)?;
            push_row(&mut out[list], row.get(0)?, row.get_ref(2)?)?;
        }
        Ok(out)
    }

    /// The store's counts of changes that readers holding copies must know about: see
    /// [`StoreChanges`].
    pub fn changes(&self) -> Result<StoreChanges, StoreError> {
        let (rewrites, gap_writes): (i64, i64) = self
            .conn
            .prepare_cached("SELECT rewrites, gap_writes FROM store_changes WHERE id = 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(StoreChanges {
            rewrites: rewrites.unsigned_abs(),
            gap_writes: gap_writes.unsigned_abs(),
        })
    }

    /// The newest `count` ticks of `currency`, oldest first.
    pub fn newest_ticks(&self, currency: Currency, count: usize) -> Result<Vec<Tick>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT ts, price FROM ticks WHERE currency = ?1 ORDER BY ts DESC LIMIT ?2",
        )?;
        let rows = stmt.query(params![currency.numeric(), sql_limit(count)])?;
        let mut out = collect_ticks(rows, currency, count)?;
        out.reverse();
        Ok(out)
    }

    /// The newest stored tick of `currency`.
    pub fn newest(&self, currency: Currency) -> Result<Option<Tick>, StoreError> {
        Ok(self.newest_ticks(currency, 1)?.pop())
    }

    /// The oldest and newest stored tick of `currency`.
    pub fn bounds(&self, currency: Currency) -> Result<Option<(Tick, Tick)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT ts, price FROM ticks WHERE currency = ?1 ORDER BY ts LIMIT 1",
        )?;
        let oldest = collect_ticks(stmt.query(params![currency.numeric()])?, currency, 1)?.pop();
        Ok(oldest.zip(self.newest(currency)?))
    }

    /// The gaps of these currencies that overlap `[from, until)` (`until = None`: no end), ordered
    /// by start, then currency.
    pub fn gaps_overlapping(
        &self,
        currencies: &[Currency],
        from: Timedate,
        until: Option<Timedate>,
    ) -> Result<Vec<Gap>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT start_ts, end_ts, reason FROM gaps
             WHERE currency = ?1 AND end_ts > ?2 AND start_ts < ?3 ORDER BY start_ts",
        )?;
        let until = until.map_or(i64::MAX, Timedate::unix_millis);
        let mut out = Vec::new();
        for &currency in currencies {
            let mut rows = stmt.query(params![currency.numeric(), from.unix_millis(), until])?;
            while let Some(row) = rows.next()? {
                let (start, end, reason): (i64, i64, String) =
                    (row.get(0)?, row.get(1)?, row.get(2)?);
                let corrupt = || StoreError::Corrupt(format!("gap {start}..{end} {reason:?}"));
                out.push(Gap {
                    currency,
                    from: Timedate::from_unix_millis(start).ok_or_else(corrupt)?,
                    until: Timedate::from_unix_millis(end).ok_or_else(corrupt)?,
                    reason: reason.parse().map_err(|_| corrupt())?,
                });
            }
        }
        out.sort_by_key(|g| (g.from, g.currency));
        Ok(out)
    }

    /// How many gaps the store holds, of every currency.
    pub fn gap_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM gaps")?
            .query_row([], |r| r.get(0))?;
        Ok(n.unsigned_abs())
    }

    /// How many ticks the store holds, of every currency.
    pub fn tick_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM ticks")?
            .query_row([], |r| r.get(0))?;
        Ok(n.unsigned_abs())
    }

    /// How the publisher writing this store runs, if one ever said.
    pub fn feed_info(&self) -> Result<Option<FeedInfo>, StoreError> {
        let get = |key: &str| -> Result<Option<String>, StoreError> {
            Ok(self
                .conn
                .prepare_cached("SELECT value FROM feed_info WHERE key = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()?)
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
    }
}

fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Appends a `(ts, price)` row to `out` as its wire bytes.
fn push_row(out: &mut WireTicks, ts: i64, price: ValueRef<'_>) -> Result<(), StoreError> {
    let timedate = Timedate::from_unix_millis(ts)
        .ok_or_else(|| StoreError::Corrupt(format!("tick time {ts} out of range")))?;
    let price = price
        .as_str()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    out.push_text(timedate, price)
        .map_err(|e| StoreError::Corrupt(format!("tick at {timedate}: {e}")))
}

/// The ticks of `(ts, price)` rows of one currency, in row order; `at_most` sizes the buffer.
fn collect_ticks(
    mut rows: Rows<'_>,
    currency: Currency,
    at_most: usize,
) -> Result<Vec<Tick>, StoreError> {
    let mut out = Vec::with_capacity(at_most.min(4096));
    while let Some(row) = rows.next()? {
        let ts: i64 = row.get(0)?;
        // The price text is borrowed from the row, not copied.
        let price = row
            .get_ref(1)?
            .as_str()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let timedate = Timedate::from_unix_millis(ts)
            .ok_or_else(|| StoreError::Corrupt(format!("tick time {ts} out of range")))?;
        let price: Price = price
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("tick at {timedate}: {e}")))?;
        out.push(Tick {
            currency,
            timedate,
            price,
        });
    }
    Ok(out)
}
