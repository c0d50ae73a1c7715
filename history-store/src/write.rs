//! Every write the store makes, each inside the transaction its caller opened.

use std::fmt::Write as _;

use rusqlite::{Transaction, params};
use ticks::{Gap, Tick, Timedate};

use crate::error::StoreError;
use crate::feed_info::FeedInfo;
use crate::stretch::Stretch;

/// Inserts ticks; a tick whose currency and slot are already stored is skipped (the first one
/// wins, so replaying ticks is harmless). Returns how many were new.
pub(crate) fn insert_ticks(
    tx: &Transaction<'_>,
    ticks: impl IntoIterator<Item = Tick>,
) -> Result<usize, StoreError> {
    let mut insert =
        tx.prepare_cached("INSERT OR IGNORE INTO ticks (currency, ts, price) VALUES (?1, ?2, ?3)")?;
    let mut price = String::with_capacity(24);
    let mut new = 0;
    for tick in ticks {
        price.clear();
        let _ = write!(price, "{}", tick.price);
        new += insert.execute(params![
            tick.currency.numeric(),
            tick.timedate.unix_millis(),
            price
        ])?;
    }
    Ok(new)
}

/// Records that `[from, until)` has no tick. Gaps of the same reason that it overlaps or touches
/// become one: an outage is one gap however many slots it was recorded in. Returns the gap as it
/// now stands (`None` for an empty span, which records nothing).
pub(crate) fn record_gap(tx: &Transaction<'_>, gap: Gap) -> Result<Option<Gap>, StoreError> {
    if gap.until <= gap.from {
        return Ok(None);
    }
    let currency = gap.currency.numeric();
    let reason = gap.reason.as_str();
    let (mut from, mut until) = (gap.from.unix_millis(), gap.until.unix_millis());
    const TOUCHING: &str = "currency = ?1 AND reason = ?2 AND start_ts <= ?4 AND end_ts >= ?3";
    // Widen until no further gap touches the span (each absorbed gap may touch another).
    let mut touching = tx.prepare_cached(&format!(
        "SELECT min(start_ts), max(end_ts) FROM gaps WHERE {TOUCHING}"
    ))?;
    loop {
        let (low, high): (Option<i64>, Option<i64>) = touching
            .query_row(params![currency, reason, from, until], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let widened = (
            low.map_or(from, |l| l.min(from)),
            high.map_or(until, |h| h.max(until)),
        );
        if widened == (from, until) {
            break;
        }
        (from, until) = widened;
    }
    tx.prepare_cached(&format!("DELETE FROM gaps WHERE {TOUCHING}"))?
        .execute(params![currency, reason, from, until])?;
    // A gap of another reason starting at the same slot keeps its reason and covers this one too.
    tx.prepare_cached(
        "INSERT INTO gaps (currency, start_ts, end_ts, reason) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (currency, start_ts) DO UPDATE SET end_ts = max(end_ts, excluded.end_ts)",
    )?
    .execute(params![currency, from, until, reason])?;
    let corrupt = || StoreError::Corrupt(format!("gap {from}..{until} {reason:?}"));
    Ok(Some(Gap {
        from: Timedate::from_unix_millis(from).ok_or_else(corrupt)?,
        until: Timedate::from_unix_millis(until).ok_or_else(corrupt)?,
        ..gap
    }))
}

/// Makes `[from, until)` of one currency hold what the stretch holds. See
/// [`HistoryStore::fill`](crate::HistoryStore::fill).
pub(crate) fn fill(tx: &Transaction<'_>, stretch: Stretch) -> Result<usize, StoreError> {
    let Stretch {
        currency,
        from,
        until,
        ticks,
        gaps,
    } = stretch;
    if let Some(stray) = ticks
        .iter()
        .find(|t| t.currency != currency || t.timedate < from || t.timedate >= until)
    {
        return Err(StoreError::Invalid(format!(
            "a tick of {} at {} is not in the {currency} stretch {from}..{until}",
            stray.currency, stray.timedate
        )));
    }
    if let Some(stray) = gaps.iter().find(|g| g.currency != currency) {
        return Err(StoreError::Invalid(format!(
            "a gap of {} is not in the {currency} stretch",
            stray.currency
        )));
    }
    if until <= from {
        return Ok(0);
    }
    let (start, end) = (from.unix_millis(), until.unix_millis());
    let currency_code = currency.numeric();
    // What we held in the stretch, to tell the caller how much was news to us.
    let held: std::collections::HashSet<(i64, String)> = tx
        .prepare_cached("SELECT ts, price FROM ticks WHERE currency = ?1 AND ts >= ?2 AND ts < ?3")?
        .query_map(params![currency_code, start, end], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    tx.prepare_cached("DELETE FROM ticks WHERE currency = ?1 AND ts >= ?2 AND ts < ?3")?
        .execute(params![currency_code, start, end])?;
    // Cut our own gaps out of the stretch; what reaches outside it stays.
    let ours: Vec<(i64, i64, String)> = tx
        .prepare_cached(
            "SELECT start_ts, end_ts, reason FROM gaps
             WHERE currency = ?1 AND end_ts > ?2 AND start_ts < ?3",
        )?
        .query_map(params![currency_code, start, end], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut delete = tx.prepare_cached("DELETE FROM gaps WHERE currency = ?1 AND start_ts = ?2")?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO gaps (currency, start_ts, end_ts, reason) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (gap_start, gap_end, reason) in ours {
        delete.execute(params![currency_code, gap_start])?;
        if gap_start < start {
            insert.execute(params![currency_code, gap_start, start, reason])?;
        }
        if gap_end > end {
            insert.execute(params![currency_code, end, gap_end, reason])?;
        }
    }
    let new = ticks
        .iter()
        .filter(|t| !held.contains(&(t.timedate.unix_millis(), t.price.to_string())))
        .count();
    insert_ticks(tx, ticks)?;
    for gap in gaps {
        record_gap(
            tx,
            Gap {
                from: gap.from.max(from),
                until: gap.until.min(until),
                ..gap
            },
        )?;
    }
    Ok(new)
}

/// Records how the publisher writing this store runs.
pub(crate) fn set_feed_info(tx: &Transaction<'_>, info: FeedInfo) -> Result<(), StoreError> {
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
}
