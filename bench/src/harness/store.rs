//! A history store generated fast: a span of ticks in both currencies.
//!
//! Ticks go in through the store's bulk insert (`HistoryStore::insert_ticks_blocking`), a batch of
//! slots per transaction, in time order (USD then EUR per slot), which is the order the publisher
//! writes them in, so the file's layout is the one a real year of ticks gives. Prices are a seeded
//! random walk of whole cents.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use history_store::HistoryStore;
use serde::Serialize;
use ticks::{Currency, Interval, Price, Tick, Timedate};

use crate::harness::meters;

#[derive(Debug, Clone, Serialize)]
pub struct GenReport {
    pub db: PathBuf,
    pub slots: u64,
    pub ticks: u64,
    pub interval: String,
    pub first: String,
    pub last: String,
    pub seconds: f64,
    pub ticks_per_second: f64,
    pub file_bytes: u64,
    pub bytes_per_tick: f64,
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Writes `span` worth of slots ending at `end`'s slot, both currencies, and checks that the
/// store reads them back as written.
pub async fn generate(
    db: PathBuf,
    span: Duration,
    interval: Interval,
    end: Timedate,
    seed: u64,
    batch: usize,
) -> anyhow::Result<GenReport> {
    let path = db.clone();
    let (written, seconds) =
        tokio::task::spawn_blocking(move || write(&path, span, interval, end, seed, batch))
            .await??;
    let Written {
        first,
        last,
        slots,
        first_usd,
    } = written;

    let store = HistoryStore::open(&db)?;
    let first_td = Timedate::from_unix_millis(first).context("first slot")?;
    let got: Vec<Tick> = store
        .read(move |s| s.ticks_since(Currency::USD, first_td, 1))
        .await?;
    anyhow::ensure!(
        got.first().map(|t| (t.timedate, t.price)) == Some((first_td, first_usd)),
        "the store does not read back the first USD tick as written: {got:?}"
    );
    let eur = store.read(move |s| s.bounds(Currency::EUR)).await?;
    anyhow::ensure!(
        eur.is_some_and(|(a, b)| a.timedate == first_td && b.timedate.unix_millis() == last),
        "EUR ticks are not where they were written"
    );
    drop(store);

    let mut file_bytes = meters::file_size(&db);
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        file_bytes += meters::file_size(Path::new(&p));
    }
    let ticks = slots as u64 * 2;
    Ok(GenReport {
        db,
        slots: slots as u64,
        ticks,
        interval: interval.to_string(),
        first: first_td.to_string(),
        last: Timedate::from_unix_millis(last)
            .context("last slot")?
            .to_string(),
        seconds,
        ticks_per_second: ticks as f64 / seconds,
        file_bytes,
        bytes_per_tick: file_bytes as f64 / ticks as f64,
    })
}

struct Written {
    first: i64,
    last: i64,
    slots: i64,
    first_usd: Price,
}

fn write(
    db: &Path,
    span: Duration,
    interval: Interval,
    end: Timedate,
    seed: u64,
    batch: usize,
) -> anyhow::Result<(Written, f64)> {
    if db.exists() {
        bail!("{} exists; gen-store only creates new stores", db.display());
    }
    let step = interval.as_millis();
    let slots = (span.as_millis() as i64 / step).max(1);
    let last = interval.slot_of(end).unix_millis();
    let first = last - (slots - 1) * step;
    anyhow::ensure!(first >= 0, "the span reaches before 1970");

    let started = Instant::now();
    let store = HistoryStore::open(db)?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut usd = 60_000.0_f64;
    let mut fx = 0.92_f64;
    let mut first_usd = None;
    let mut slot = 0i64;
    let cents = |value: f64| Price::from_parts((value * 100.0).round() as u64, 2);
    while slot < slots {
        let upto = (slot + batch.max(1) as i64).min(slots);
        let mut ticks = Vec::with_capacity(2 * (upto - slot) as usize);
        for s in slot..upto {
            // About 0.03% per 5 s step: a day moves a few percent, like BTC.
            usd = (usd * (1.0 + 0.0003 * normal(&mut rng))).clamp(1_000.0, 1_000_000.0);
            fx = (fx * (1.0 + 0.00002 * normal(&mut rng))).clamp(0.8, 1.0);
            let timedate = Timedate::from_unix_millis(first + s * step).context("slot time")?;
            let usd_price = cents(usd)?;
            first_usd.get_or_insert(usd_price);
            ticks.push(Tick {
                currency: Currency::USD,
                timedate,
                price: usd_price,
            });
            ticks.push(Tick {
                currency: Currency::EUR,
                timedate,
                price: cents(usd * fx)?,
            });
        }
        store.insert_ticks_blocking(ticks)?;
        slot = upto;
    }
    drop(store);
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        Written {
            first,
            last,
            slots,
            first_usd: first_usd.context("no tick written")?,
        },
        seconds,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_small_store_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let end: Timedate = "2026-01-01T00:00:00Z".parse().unwrap();
        let r = generate(
            db.clone(),
            Duration::from_secs(3600),
            Interval::DEFAULT,
            end,
            7,
            100,
        )
        .await
        .unwrap();
        assert_eq!(r.slots, 720);
        assert_eq!(r.ticks, 1440);
        assert_eq!(r.last, "2026-01-01T00:00:00Z");
        assert!(
            generate(db, Duration::from_secs(60), Interval::DEFAULT, end, 7, 100)
                .await
                .is_err()
        );
    }
}
