//! `gen-store`: a history store with a span of ticks in both currencies, fast.
//!
//! The schema comes from `HistoryStore::open`; rows go in through `HistoryStore::write_blocking`
//! with one prepared statement, a batch of slots per transaction, in time order (USD then EUR per
//! slot), which is the order the publisher writes them in, so the file's layout is the one a real
//! year of ticks gives. Prices are a seeded random walk with two decimals, printed exactly as
//! `ticks::Price` prints them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::params;
use serde::Serialize;
use ticks::{Currency, HistoryStore, Interval, Tick, Timedate};

use crate::sys;

/// The store keys currencies by ISO 4217 number (`Currency::numeric` is private to `ticks`);
/// [`generate`] checks these against what the store reads back.
const USD_CODE: i64 = 840;
const EUR_CODE: i64 = 978;

#[derive(Debug, clap::Args)]
pub struct GenStoreArgs {
    /// The SQLite file to create (must not exist).
    #[arg(long)]
    pub db: PathBuf,
    /// Days of ticks, ending now.
    #[arg(long, default_value_t = 365.0)]
    pub days: f64,
    /// Span of ticks instead of --days (e.g. 30m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Slot length.
    #[arg(long, default_value = "5s")]
    pub interval: Interval,
    /// Last slot (default: the slot containing now).
    #[arg(long)]
    pub end: Option<Timedate>,
    /// Seed of the random walk.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Slots per transaction.
    #[arg(long, default_value_t = 100_000)]
    pub batch: usize,
}

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

pub async fn run(args: &GenStoreArgs) -> anyhow::Result<GenReport> {
    let span = match args.duration {
        Some(d) => d,
        None => Duration::from_secs_f64(args.days * 86_400.0),
    };
    let report = generate(
        args.db.clone(),
        span,
        args.interval,
        args.end.unwrap_or_else(Timedate::now),
        args.seed,
        args.batch,
    )
    .await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(report)
}

/// The price text of a whole number of cents, as `ticks::Price` prints it (no trailing zeros).
fn cents_text(cents: u64) -> String {
    let (int, frac) = (cents / 100, cents % 100);
    if frac == 0 {
        int.to_string()
    } else if frac % 10 == 0 {
        format!("{int}.{}", frac / 10)
    } else {
        format!("{int}.{frac:02}")
    }
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
    let got: Vec<Tick> = store.ticks_since(Currency::USD, first_td, 1).await?;
    let want_price: ticks::Price = first_usd.parse()?;
    anyhow::ensure!(
        got.first().map(|t| (t.timedate, t.price)) == Some((first_td, want_price)),
        "the store does not read back the first USD tick as written: {got:?}"
    );
    let eur = store.bounds(Currency::EUR).await?;
    anyhow::ensure!(
        eur.is_some_and(|(a, b)| a.timedate == first_td && b.timedate.unix_millis() == last),
        "EUR ticks are not where they were written"
    );
    drop(store);

    let mut file_bytes = sys::file_size(&db);
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        file_bytes += sys::file_size(Path::new(&p));
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
    first_usd: String,
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
    while slot < slots {
        let upto = (slot + batch.max(1) as i64).min(slots);
        store.write_blocking(|tx| {
            let mut insert =
                tx.prepare_cached("INSERT INTO ticks (currency, ts, price) VALUES (?1, ?2, ?3)")?;
            for s in slot..upto {
                // About 0.03% per 5 s step: a day moves a few percent, like BTC.
                usd = (usd * (1.0 + 0.0003 * normal(&mut rng))).clamp(1_000.0, 1_000_000.0);
                fx = (fx * (1.0 + 0.00002 * normal(&mut rng))).clamp(0.8, 1.0);
                let usd_cents = (usd * 100.0).round() as u64;
                let eur_cents = (usd * fx * 100.0).round() as u64;
                let ts = first + s * step;
                let usd_text = cents_text(usd_cents);
                if first_usd.is_none() {
                    first_usd = Some(usd_text.clone());
                }
                insert.execute(params![USD_CODE, ts, usd_text])?;
                insert.execute(params![EUR_CODE, ts, cents_text(eur_cents)])?;
            }
            Ok(())
        })?;
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

    #[test]
    fn price_texts_are_what_ticks_prints() {
        for cents in [
            1, 10, 100, 105, 110, 6_000_000, 6_000_050, 6_000_057, 9_999_999,
        ] {
            let exact = ticks::Price::from_parts(cents, 2).unwrap().to_string();
            assert_eq!(cents_text(cents), exact, "{cents}");
        }
    }

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
