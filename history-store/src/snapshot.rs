//! [`Snapshot`]: every read the store answers, inside one read transaction.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Rows, params};
use ticks::{Currency, Gap, Interval, Price, Tick, Timedate};

use crate::error::StoreError;
use crate::feed_info::FeedInfo;

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
