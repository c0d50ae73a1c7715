//! The offline demo source: a random walk that looks like a BTC price, for trying the feed without
//! a network. Its numbers are not market prices, and the chain says so in the log when it is built.

use std::sync::Mutex;

use ticks::{Currency, Price};

/// Where the walk starts, roughly; each chain starts within ±0.5% of it.
const START_USD: f64 = 97_000.0;
/// EUR per USD, fixed: the demo has no exchange-rate source and needs none.
const EUR_PER_USD: f64 = 0.92;
/// The largest relative move per sample, either way (0.05%).
const MAX_STEP: f64 = 0.0005;
/// The walk is held inside this band so that no run, however long, leaves [`crate::PLAUSIBLE`].
const BAND_USD: std::ops::RangeInclusive<f64> = 10_000.0..=1_000_000.0;

#[derive(Debug)]
pub(crate) struct DemoWalk {
    state: Mutex<Walk>,
}

#[derive(Debug)]
struct Walk {
    usd: f64,
    rng: fastrand::Rng,
}

impl DemoWalk {
    pub(crate) fn new() -> DemoWalk {
        DemoWalk::with_rng(fastrand::Rng::new())
    }

    pub(crate) fn with_rng(mut rng: fastrand::Rng) -> DemoWalk {
        let usd = START_USD * (1.0 + (rng.f64() - 0.5) * 0.01);
        DemoWalk {
            state: Mutex::new(Walk { usd, rng }),
        }
    }

    /// Takes one step and prices the wanted currencies, rounded to cents.
    pub(crate) fn next(&self, wanted: &[Currency]) -> Vec<(Currency, Price)> {
        // A panic elsewhere while holding the lock leaves a valid f64 behind; keep walking.
        let mut walk = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let step = (walk.rng.f64() * 2.0 - 1.0) * MAX_STEP;
        walk.usd = (walk.usd * (1.0 + step)).clamp(*BAND_USD.start(), *BAND_USD.end());
        let usd = walk.usd;
        wanted
            .iter()
            .filter_map(|&currency| {
                let value = match currency {
                    Currency::USD => usd,
                    Currency::EUR => usd * EUR_PER_USD,
                };
                let cents = (value * 100.0).round() as u64;
                Price::from_parts(cents, 2).ok().map(|p| (currency, p))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd_and_eur(walk: &DemoWalk) -> (f64, f64) {
        let prices = walk.next(&Currency::ALL);
        assert_eq!(prices.len(), 2);
        assert_eq!(prices[0].0, Currency::USD);
        assert_eq!(prices[1].0, Currency::EUR);
        (prices[0].1.as_f64(), prices[1].1.as_f64())
    }

    #[test]
    fn walks_in_small_steps_near_the_start() {
        let walk = DemoWalk::with_rng(fastrand::Rng::with_seed(7));
        let (mut last_usd, _) = usd_and_eur(&walk);
        assert!((96_000.0..=98_000.0).contains(&last_usd), "{last_usd}");
        for _ in 0..10_000 {
            let (usd, eur) = usd_and_eur(&walk);
            // One cent of rounding on top of the 0.05% step.
            assert!(
                (usd - last_usd).abs() <= last_usd * MAX_STEP + 0.011,
                "{last_usd} -> {usd}"
            );
            assert!((eur - usd * EUR_PER_USD).abs() <= 0.011, "{usd} {eur}");
            assert!(crate::PLAUSIBLE.contains(&usd) && crate::PLAUSIBLE.contains(&eur));
            last_usd = usd;
        }
    }

    #[test]
    fn prices_have_at_most_two_decimals() {
        let walk = DemoWalk::with_rng(fastrand::Rng::with_seed(1));
        for _ in 0..100 {
            for (_, price) in walk.next(&[Currency::EUR]) {
                let text = price.to_string();
                let decimals = text.split_once('.').map_or(0, |(_, frac)| frac.len());
                assert!(decimals <= 2, "{text}");
            }
        }
    }

    #[test]
    fn stays_in_its_band() {
        let walk = DemoWalk::with_rng(fastrand::Rng::with_seed(3));
        walk.state.lock().unwrap().usd = 2_000_000.0;
        let (usd, _) = usd_and_eur(&walk);
        assert_eq!(usd, 1_000_000.0);
    }
}
