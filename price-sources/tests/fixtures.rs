//! Every recorded or documented response of our five vendors, through the pure parser, with the
//! exact prices or the exact failure class.

use price_sources::{SourceError, SourceKind, parse};
use ticks::Currency::{self, EUR, USD};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../tests/fixtures/sources/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The prices as the strings they print as, so a test states exactly what a tick would carry.
fn prices(kind: SourceKind, currencies: &[Currency], name: &str) -> Vec<(Currency, String)> {
    parse(kind, currencies, &fixture(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_iter()
        .map(|(c, p)| (c, p.to_string()))
        .collect()
}

fn error(kind: SourceKind, currencies: &[Currency], name: &str) -> SourceError {
    match parse(kind, currencies, &fixture(name)) {
        Ok(prices) => panic!("{name} parsed as {prices:?}"),
        Err(e) => e,
    }
}

fn owned(expected: &[(Currency, &str)]) -> Vec<(Currency, String)> {
    expected.iter().map(|(c, p)| (*c, p.to_string())).collect()
}

#[test]
fn kraken_reads_the_last_trade_of_each_canonical_pair() {
    assert_eq!(
        prices(SourceKind::Kraken, &[USD, EUR], "kraken.json"),
        owned(&[(USD, "77726.1"), (EUR, "68644.2")])
    );
    assert_eq!(
        prices(SourceKind::Kraken, &[EUR], "kraken.json"),
        owned(&[(EUR, "68644.2")])
    );
    assert_eq!(
        prices(SourceKind::Kraken, &[USD], "kraken_ticker_xbtusd.json"),
        owned(&[(USD, "77726.1")])
    );
}

#[test]
fn kraken_without_the_eur_pair_names_the_missing_field() {
    let err = error(SourceKind::Kraken, &[USD, EUR], "kraken_ticker_xbtusd.json");
    assert_eq!(err.kind(), "missing_field");
    assert_eq!(err.to_string(), "missing field result.XXBTZEUR.c[0]");
}

#[test]
fn kraken_errors_arrive_in_a_200_body() {
    let err = error(SourceKind::Kraken, &[USD], "kraken_error_unknown_pair.json");
    assert_eq!(err.kind(), "error_body");
    assert_eq!(err.to_string(), "Kraken error: EQuery:Unknown asset pair");

    let err = error(
        SourceKind::Kraken,
        &[USD, EUR],
        "kraken_error_too_many_requests.json",
    );
    assert_eq!(err.kind(), "rate_limited");
    assert_eq!(
        err.to_string(),
        "Kraken error: EGeneral:Too many requests (rate limited)"
    );
}

#[test]
fn coinbase_reads_data_amount() {
    assert_eq!(
        prices(SourceKind::Coinbase, &[USD], "coinbase.json"),
        owned(&[(USD, "81401.385")])
    );
    assert_eq!(
        prices(SourceKind::Coinbase, &[EUR], "coinbase_spot_btc_eur.json"),
        owned(&[(EUR, "41191.91")])
    );
    // Unknown keys (`warnings`) are ignored; "8125.00" is the decimal 8125.
    assert_eq!(
        prices(
            SourceKind::Coinbase,
            &[USD],
            "coinbase_spot_btc_usd_legacy_with_warnings.json"
        ),
        owned(&[(USD, "8125")])
    );
}

#[test]
fn coinbase_refuses_an_answer_for_another_currency() {
    let err = error(SourceKind::Coinbase, &[USD], "coinbase_spot_btc_eur.json");
    assert_eq!(err.kind(), "missing_field");
    assert_eq!(
        err.to_string(),
        "field data.currency is \"EUR\", expected \"USD\""
    );
}

#[test]
fn coinbase_error_bodies() {
    let err = error(
        SourceKind::Coinbase,
        &[USD],
        "coinbase_spot_error_invalid_currency.json",
    );
    assert_eq!(err.kind(), "error_body");
    assert_eq!(
        err.to_string(),
        "Coinbase error: Invalid base currency (not_found)"
    );

    let err = error(
        SourceKind::Coinbase,
        &[EUR],
        "coinbase_spot_error_rate_limit.json",
    );
    assert_eq!(err.kind(), "rate_limited");
    assert_eq!(
        err.to_string(),
        "Coinbase error: Too many requests (rate_limit_exceeded) (rate limited)"
    );
}

#[test]
fn bitstamp_reads_last() {
    assert_eq!(
        prices(SourceKind::Bitstamp, &[USD], "bitstamp.json"),
        owned(&[(USD, "85052.34")])
    );
    assert_eq!(
        prices(
            SourceKind::Bitstamp,
            &[EUR],
            "bitstamp_ticker_btceur_legacy_2020.json"
        ),
        owned(&[(EUR, "9165.14")])
    );
}

#[test]
fn coingecko_reads_json_numbers_exactly() {
    // 67187.3358936566 has more digits than survive a trip through f64 formatting at some
    // magnitudes; it must come out as written.
    assert_eq!(
        prices(SourceKind::CoinGecko, &[USD, EUR], "coingecko.json"),
        owned(&[(USD, "67187.3358936566"), (EUR, "62185.12")])
    );
    assert_eq!(
        prices(
            SourceKind::CoinGecko,
            &[USD],
            "coingecko_simple_price_doc_example.json"
        ),
        owned(&[(USD, "67187.3358936566")])
    );
}

#[test]
fn coingecko_failures() {
    let err = error(
        SourceKind::CoinGecko,
        &[USD, EUR],
        "coingecko_simple_price_doc_example.json",
    );
    assert_eq!(err.kind(), "missing_field");
    assert_eq!(err.to_string(), "missing field bitcoin.eur");

    let err = error(
        SourceKind::CoinGecko,
        &[USD, EUR],
        "coingecko_unknown_id_empty.json",
    );
    assert_eq!(err.kind(), "missing_field");
    assert_eq!(err.to_string(), "missing field bitcoin.usd");

    let err = error(SourceKind::CoinGecko, &[USD], "coingecko_error_429.json");
    assert_eq!(err.kind(), "rate_limited");
    assert!(
        err.to_string().starts_with(
            "CoinGecko error: You've exceeded the Rate Limit. Please visit https://www.coingecko.com"
        ),
        "{err}"
    );
    assert!(
        err.to_string().ends_with("(code 429) (rate limited)"),
        "{err}"
    );
}

#[test]
fn coindesk_reads_rate_float_not_the_display_string() {
    assert_eq!(
        prices(SourceKind::CoinDesk, &[USD, EUR], "coindesk.json"),
        owned(&[(USD, "59524.4038"), (EUR, "53958.5744")])
    );
}

#[test]
fn a_fixture_of_one_vendor_is_not_a_price_for_another() {
    for (kind, name) in [
        (SourceKind::Kraken, "coinbase.json"),
        (SourceKind::Coinbase, "kraken.json"),
        (SourceKind::Bitstamp, "coingecko.json"),
        (SourceKind::CoinGecko, "bitstamp.json"),
        (SourceKind::CoinDesk, "kraken.json"),
    ] {
        let err = error(kind, &[USD], name);
        assert_eq!(err.kind(), "missing_field", "{kind} {name}: {err}");
    }
}

#[test]
fn the_demo_source_has_nothing_to_parse() {
    let err = parse(SourceKind::Demo, &[USD], &fixture("kraken.json")).unwrap_err();
    assert_eq!(err.kind(), "error_body");
}

#[test]
fn the_vendors_that_date_their_answers_are_read_for_their_date() {
    let at = |kind, name| price_sources::vendor_time(kind, &fixture(name)).map(|t| t.to_string());
    assert_eq!(
        at(SourceKind::CoinDesk, "coindesk.json").as_deref(),
        Some("2024-08-18T04:19:23Z")
    );
    assert_eq!(
        at(SourceKind::Bitstamp, "bitstamp.json").as_deref(),
        Some("2026-09-27T13:33:10Z")
    );
    // Kraken's ticker, Coinbase's spot price and CoinGecko's simple price carry no date.
    assert_eq!(at(SourceKind::Kraken, "kraken.json"), None);
    assert_eq!(at(SourceKind::Coinbase, "coinbase.json"), None);
    assert_eq!(at(SourceKind::CoinGecko, "coingecko.json"), None);
    assert_eq!(
        at(SourceKind::CoinDesk, "kraken.json"),
        None,
        "no date, no verdict"
    );
}
