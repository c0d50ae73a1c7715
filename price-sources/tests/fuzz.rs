//! Property-based fuzzing of every source parser, on the stable toolchain (proptest; `cargo fuzz`
//! needs nightly). Each vendor's recorded bodies are mutated (bytes flipped, cut, spliced, numbers
//! replaced by arbitrary JSON values) and arbitrary bytes are thrown at it: no input panics, and a
//! body that parses yields prices that make valid ticks (positive, plausible, and exactly the same
//! after the wire round trip).
//!
//! Bounded in CI (proptest's default, 256 cases per property); longer:
//!   PROPTEST_CASES=200000 cargo test --release -p price-sources --test fuzz

use price_sources::{SourceKind, parse};
use proptest::prelude::*;
use ticks::Currency::{self, EUR, USD};
use ticks::{Tick, Timedate};

/// A vendor, the currencies one request asks it for, and a body it really sent.
const CASES: [(SourceKind, &[Currency], &str); 7] = [
    (SourceKind::Kraken, &[USD, EUR], "kraken.json"),
    (SourceKind::Kraken, &[USD], "kraken_ticker_xbtusd.json"),
    (SourceKind::Coinbase, &[USD], "coinbase.json"),
    (SourceKind::Coinbase, &[EUR], "coinbase_spot_btc_eur.json"),
    (SourceKind::Bitstamp, &[USD], "bitstamp.json"),
    (SourceKind::CoinGecko, &[USD, EUR], "coingecko.json"),
    (SourceKind::CoinDesk, &[USD, EUR], "coindesk.json"),
];

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../tests/fixtures/sources/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Whatever `parse` says, it says without panicking; what it accepts makes valid ticks.
fn check(kind: SourceKind, currencies: &[Currency], body: &[u8]) -> Result<(), TestCaseError> {
    let Ok(prices) = parse(kind, currencies, body) else {
        return Ok(());
    };
    prop_assert_eq!(
        prices.len(),
        currencies.len(),
        "a price per currency asked for"
    );
    for (currency, price) in prices {
        prop_assert!(currencies.contains(&currency));
        prop_assert!(price.as_f64() > 0.0, "{kind:?} accepted {price}");
        let tick = Tick {
            currency,
            timedate: Timedate::EPOCH,
            price,
        };
        let back = Tick::from_message(currency.topic(), tick.payload().as_bytes());
        prop_assert_eq!(
            back.ok(),
            Some(tick),
            "the wire round trip keeps it exactly"
        );
    }
    Ok(())
}

/// A JSON value a vendor could put where a price belongs.
fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|f| format!("{f}")),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|i| format!("\"{i}.{i}\"")),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("null".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("1e400".to_string()),
        Just("\"-0\"".to_string()),
        Just("\"NaN\"".to_string()),
        Just("\"1e3\"".to_string()),
        Just("\"  97000.5 \"".to_string()),
    ]
}

/// The body with its `n`th number (quoted or not) replaced.
fn replace_nth_number(body: &str, n: usize, with: &str) -> String {
    let bytes = body.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            // A quoted number is replaced with its quotes.
            let (s, e) = if start > 0 && bytes[start - 1] == b'"' && bytes.get(i) == Some(&b'"') {
                (start - 1, i + 1)
            } else {
                (start, i)
            };
            spans.push((s, e));
        } else {
            i += 1;
        }
    }
    if spans.is_empty() {
        return body.to_string();
    }
    let (s, e) = spans[n % spans.len()];
    format!("{}{with}{}", &body[..s], &body[e..])
}

proptest! {
    #[test]
    fn arbitrary_bytes(case in 0..CASES.len(), body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (kind, currencies, _) = CASES[case];
        check(kind, currencies, &body)?;
    }

    #[test]
    fn a_number_of_a_real_body_replaced(case in 0..CASES.len(), n in any::<usize>(), with in json_value()) {
        let (kind, currencies, name) = CASES[case];
        let body = String::from_utf8(fixture(name)).unwrap();
        check(kind, currencies, replace_nth_number(&body, n, &with).as_bytes())?;
    }

    #[test]
    fn a_real_body_cut_flipped_or_spliced(
        case in 0..CASES.len(),
        other in 0..CASES.len(),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let (kind, currencies, name) = CASES[case];
        let mut body = fixture(name);
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        check(kind, currencies, &body)?;
        // Cut, then another vendor's body appended: a truncated or mixed-up response.
        body.truncate(cut.index(body.len() + 1));
        body.extend(fixture(CASES[other].2));
        check(kind, currencies, &body)?;
    }
}
