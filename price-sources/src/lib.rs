//! Where the BTC price comes from: public price APIs polled over HTTP, validated before anyone sees
//! a number.
//!
//! A [`SourceChain`] holds an ordered list of sources (Kraken, Coinbase, Bitstamp, CoinGecko, the
//! CoinDesk BPI v1 format, or an offline demo walk). [`SourceChain::sample`] asks them in order until
//! every wanted currency has a price or the deadline passes; a source that answers for only some
//! currencies keeps those and the next source fills the rest. Every answer is checked: the body
//! must be the JSON the vendor documents, the price a positive decimal kept exactly as the vendor
//! wrote it (never through `f64`), and within [`PLAUSIBLE`]. What went wrong is a [`SourceError`]
//! with a stable [`kind`](SourceError::kind) for metrics.
//!
//! This crate does not schedule polls, publish ticks, record gaps or retry later: the publisher does
//! that with the [`Sample`] it gets back. It never invents a price: a currency no source answered
//! for is simply absent from the sample. The demo source is for trying the feed offline; its
//! prices are a random walk, not market data.
//!
//! # Layout
//!
//! - [`SourceKind`], [`DEFAULT_CHAIN`], [`PLAUSIBLE`]: which sources exist and what a price may be.
//! - [`parse`]: the pure per-vendor response parsers (no I/O), shared by the chain and the tests.
//! - [`SourceChain`], [`Sample`]: the HTTP client and the fall-through logic.
//! - [`SourceError`], [`ConfigError`]: why a source gave no price, and why a chain cannot be built.

mod chain;
mod demo;
mod error;
mod parse;

use std::fmt;
use std::str::FromStr;

pub use chain::{Quote, Sample, SourceChain, SourceConfig, SourceFailure};
pub use error::{ConfigError, Mismatch, SourceError, UnknownSource};
pub use parse::{parse, vendor_time};

/// The range a BTC price must fall in, in any currency we publish. Anything outside is a broken or
/// hostile source (a price in satoshis, a misplaced decimal point), never a tick.
pub const PLAUSIBLE: std::ops::RangeInclusive<f64> = 1.0..=10_000_000.0;

/// The chain used when none is configured. Demo is never a default: it would publish made-up prices.
pub const DEFAULT_CHAIN: &[SourceKind] = &[
    SourceKind::Kraken,
    SourceKind::Coinbase,
    SourceKind::Bitstamp,
    SourceKind::CoinGecko,
];

/// A price source we know how to ask and how to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    /// `GET /0/public/Ticker`, last trade price; one request for every currency.
    Kraken,
    /// Coinbase v2 spot price; one request per currency.
    Coinbase,
    /// Bitstamp v2 ticker, last trade price; one request per currency.
    Bitstamp,
    /// CoinGecko simple price; one request for every currency.
    CoinGecko,
    /// The CoinDesk BPI v1 format (`/v1/bpi/currentprice.json`). CoinDesk's own host is gone, so this
    /// needs a base URL pointing at a mirror.
    CoinDesk,
    /// Offline random walk near a plausible price. Not market data.
    Demo,
}

impl SourceKind {
    pub const ALL: [SourceKind; 6] = [
        SourceKind::Kraken,
        SourceKind::Coinbase,
        SourceKind::Bitstamp,
        SourceKind::CoinGecko,
        SourceKind::CoinDesk,
        SourceKind::Demo,
    ];

    /// The lowercase name used in configuration, logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Kraken => "kraken",
            SourceKind::Coinbase => "coinbase",
            SourceKind::Bitstamp => "bitstamp",
            SourceKind::CoinGecko => "coingecko",
            SourceKind::CoinDesk => "coindesk",
            SourceKind::Demo => "demo",
        }
    }

    /// The vendor's own spelling, for messages such as "Kraken error: …".
    pub fn vendor_name(self) -> &'static str {
        match self {
            SourceKind::Kraken => "Kraken",
            SourceKind::Coinbase => "Coinbase",
            SourceKind::Bitstamp => "Bitstamp",
            SourceKind::CoinGecko => "CoinGecko",
            SourceKind::CoinDesk => "CoinDesk",
            SourceKind::Demo => "Demo",
        }
    }

    /// The vendor's public API root; empty for the demo source, which makes no requests.
    pub fn default_base_url(self) -> &'static str {
        match self {
            SourceKind::Kraken => "https://api.kraken.com",
            SourceKind::Coinbase => "https://api.coinbase.com",
            SourceKind::Bitstamp => "https://www.bitstamp.net",
            SourceKind::CoinGecko => "https://api.coingecko.com",
            SourceKind::CoinDesk => "https://api.coindesk.com",
            SourceKind::Demo => "",
        }
    }

    pub fn is_demo(self) -> bool {
        self == SourceKind::Demo
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SourceKind {
    type Err = UnknownSource;

    /// Case-insensitive, so `Kraken` in an environment variable works as well as `kraken`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        SourceKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownSource(s.to_string()))
    }
}

/// `currencies` without repeats, in their first-seen order.
pub(crate) fn distinct(currencies: &[ticks::Currency]) -> Vec<ticks::Currency> {
    let mut out = Vec::with_capacity(currencies.len());
    for c in currencies {
        if !out.contains(c) {
            out.push(*c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in SourceKind::ALL {
            assert_eq!(kind.name().parse::<SourceKind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.name());
        }
        assert_eq!(
            "CoinGecko".parse::<SourceKind>().unwrap(),
            SourceKind::CoinGecko
        );
        let err = "binance".parse::<SourceKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown price source \"binance\" (expected one of kraken, coinbase, bitstamp, \
             coingecko, coindesk, demo)"
        );
    }

    #[test]
    fn demo_is_never_a_default() {
        assert!(DEFAULT_CHAIN.iter().all(|k| !k.is_demo()));
        assert_eq!(SourceKind::Demo.default_base_url(), "");
        assert!(
            SourceKind::ALL
                .iter()
                .filter(|k| !k.is_demo())
                .all(|k| k.default_base_url().starts_with("https://"))
        );
    }
}
