//! Bodies a broken or hostile server might send: each is a classified error, never a price and
//! never a panic.

use price_sources::{SourceKind, parse};
use ticks::Currency::{self, EUR, USD};

/// The error class `parse` gives, or the prices if it (wrongly) accepted the body.
fn kind_of(kind: SourceKind, currencies: &[Currency], body: &[u8]) -> Result<String, String> {
    match parse(kind, currencies, body) {
        Ok(prices) => Err(format!("accepted {prices:?}")),
        Err(e) => Ok(e.kind().to_string()),
    }
}

fn message(kind: SourceKind, currencies: &[Currency], body: &str) -> String {
    parse(kind, currencies, body.as_bytes())
        .expect_err(body)
        .to_string()
}

const HTML_429: &str = "<!DOCTYPE html>\n<html><head><title>429 Too Many Requests</title></head>\
                        <body>Slow down</body></html>";

#[test]
fn not_json_for_every_source() {
    let http_sources = [
        SourceKind::Kraken,
        SourceKind::Coinbase,
        SourceKind::Bitstamp,
        SourceKind::CoinGecko,
        SourceKind::CoinDesk,
    ];
    for kind in http_sources {
        for body in [
            HTML_429.as_bytes(),
            b"",
            b"   \n",
            b"Too Many Requests",
            b"{\"truncated\": ",
            b"\xff\xfe{}",
            br#"{"bitcoin":{"usd":NaN}}"#,
        ] {
            assert_eq!(
                kind_of(kind, &[USD], body),
                Ok("not_json".into()),
                "{kind} {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
    assert_eq!(
        message(SourceKind::CoinGecko, &[USD], HTML_429),
        "body is not JSON (starts with \"<!DOCTYPE html>\")"
    );
    assert_eq!(
        message(SourceKind::Kraken, &[USD], ""),
        "body is empty or blank, not JSON"
    );
}

#[test]
fn json_of_the_wrong_shape_is_a_missing_field() {
    for body in ["null", "[]", "42", "\"77726.1\"", "true", "{}"] {
        assert_eq!(
            kind_of(SourceKind::Kraken, &[USD], body.as_bytes()),
            Ok("missing_field".into()),
            "{body}"
        );
    }
    assert_eq!(
        message(SourceKind::Kraken, &[USD], "null"),
        "body is null, expected an object"
    );
    assert_eq!(
        message(SourceKind::Kraken, &[USD], "{}"),
        "missing field result.XXBTZUSD.c[0]"
    );
    assert_eq!(
        message(
            SourceKind::Kraken,
            &[USD],
            r#"{"error":[],"result":{"XXBTZUSD":{"c":"77726.1"}}}"#
        ),
        "field result.XXBTZUSD.c is a string, expected an array"
    );
    assert_eq!(
        message(
            SourceKind::Kraken,
            &[USD],
            r#"{"error":[],"result":{"XXBTZUSD":{"c":[]}}}"#
        ),
        "missing field result.XXBTZUSD.c[0]"
    );
    // Kraken writes prices as strings; a bare number is not what it documents.
    assert_eq!(
        message(
            SourceKind::Kraken,
            &[USD],
            r#"{"error":[],"result":{"XXBTZUSD":{"c":[77726.1,"1"]}}}"#
        ),
        "field result.XXBTZUSD.c[0] is a number, expected a string"
    );
    // CoinGecko writes numbers; a string is not what it documents.
    assert_eq!(
        message(
            SourceKind::CoinGecko,
            &[USD],
            r#"{"bitcoin":{"usd":"67187.3"}}"#
        ),
        "field bitcoin.usd is a string, expected a number"
    );
    assert_eq!(
        message(SourceKind::Coinbase, &[USD], r#"{"data":[]}"#),
        "field data is an array, expected an object"
    );
    assert_eq!(
        message(SourceKind::Bitstamp, &[USD], r#"{"last":{"value":"1"}}"#),
        "field last is an object, expected a string"
    );
    assert_eq!(
        message(SourceKind::CoinDesk, &[EUR], r#"{"bpi":{"USD":{}}}"#),
        "missing field bpi.EUR.rate_float"
    );
}

#[test]
fn prices_that_are_not_positive_decimals() {
    let cases = [
        ("0", "price \"0\" is not positive at data.amount"),
        ("-5", "price \"-5\" is not positive at data.amount"),
        (
            "NaN",
            "price \"NaN\" is not a decimal number at data.amount",
        ),
        (
            "abc",
            "price \"abc\" is not a decimal number at data.amount",
        ),
        (
            "1e400",
            "price \"1e400\" is not a decimal number at data.amount",
        ),
        (
            "64,895.31",
            "price \"64,895.31\" is not a decimal number at data.amount",
        ),
        ("", "price \"\" is not a decimal number at data.amount"),
        (
            " 97000",
            "price \" 97000\" is not a decimal number at data.amount",
        ),
    ];
    for (amount, expected) in cases {
        let body = format!(r#"{{"data":{{"amount":"{amount}","currency":"USD"}}}}"#);
        let err = parse(SourceKind::Coinbase, &[USD], body.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), "bad_price", "{amount}");
        assert_eq!(err.to_string(), expected);
    }
    assert_eq!(
        message(
            SourceKind::Coinbase,
            &[USD],
            r#"{"data":{"amount":null,"currency":"USD"}}"#
        ),
        "price is null at data.amount"
    );
    assert_eq!(
        message(SourceKind::Bitstamp, &[USD], r#"{"last":null}"#),
        "price is null at last"
    );
    let long = format!(r#"{{"last":"{}"}}"#, "9".repeat(100_000));
    assert_eq!(
        message(SourceKind::Bitstamp, &[USD], &long),
        format!(
            "price \"{}…\" is not a positive decimal at last",
            "9".repeat(64)
        )
    );
    // Trailing zeros are not significant digits: a long but exact price is still a price.
    let zeros = format!(r#"{{"last":"97000.{}"}}"#, "0".repeat(100));
    let prices = parse(SourceKind::Bitstamp, &[USD], zeros.as_bytes()).unwrap();
    assert_eq!(prices[0].1.to_string(), "97000");
}

#[test]
fn json_numbers_that_are_not_positive_decimals() {
    for (number, kind) in [
        ("0", "bad_price"),
        ("-5", "bad_price"),
        ("-0.0", "bad_price"),
        ("1e400", "bad_price"),
        ("null", "bad_price"),
        ("0.0001", "implausible_price"),
        ("0.5", "implausible_price"),
        ("10000000.01", "implausible_price"),
        ("1e9", "implausible_price"),
    ] {
        let body = format!(r#"{{"bitcoin":{{"usd":{number},"eur":{number}}}}}"#);
        let err = parse(SourceKind::CoinGecko, &[USD, EUR], body.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), kind, "{number}: {err}");
    }
    assert_eq!(
        message(
            SourceKind::CoinGecko,
            &[USD],
            r#"{"bitcoin":{"usd":0.0001}}"#
        ),
        "implausible price 0.0001 (outside 1..=10000000) at bitcoin.usd"
    );
    assert_eq!(
        message(
            SourceKind::CoinDesk,
            &[USD],
            r#"{"bpi":{"USD":{"rate_float":1e400}}}"#
        ),
        "price \"1e400\" is not a decimal number at bpi.USD.rate_float"
    );
}

#[test]
fn the_edges_of_plausible_are_prices() {
    for (number, expected) in [("1", "1"), ("10000000", "10000000"), ("1e7", "10000000")] {
        let body = format!(r#"{{"bitcoin":{{"usd":{number}}}}}"#);
        let prices = parse(SourceKind::CoinGecko, &[USD], body.as_bytes()).unwrap();
        assert_eq!(prices[0].1.to_string(), expected);
    }
}

#[test]
fn a_huge_body_is_an_error_not_a_crash() {
    // What the HTTP layer would hand over after cutting a 10 MB answer at its limit: a prefix.
    let mut body = br#"{"error":[],"result":{"XXBTZUSD":{"c":["77726.1","1"],"pad":""#.to_vec();
    body.resize(10 * 1024 * 1024, b'x');
    let prefix = &body[..1024 * 1024];
    assert_eq!(
        kind_of(SourceKind::Kraken, &[USD], prefix),
        Ok("not_json".into())
    );
    // And the whole 10 MB, if it is well-formed, is parsed without trouble (the cap on what is
    // read belongs to the HTTP layer, see tests/chain.rs).
    body.extend_from_slice(b"\"}}}");
    let prices = parse(SourceKind::Kraken, &[USD], &body).unwrap();
    assert_eq!(prices[0].1.to_string(), "77726.1");
}

#[test]
fn deep_nesting_is_rejected_without_a_stack_overflow() {
    let deep = |open: &str, inner: &str, close: &str| {
        format!("{}{inner}{}", open.repeat(100_000), close.repeat(100_000))
    };
    assert_eq!(
        message(SourceKind::CoinGecko, &[USD], &deep("[", "", "]")),
        "body is an array, expected an object"
    );
    let body = format!(r#"{{"bitcoin":{{"usd":{}}}}}"#, deep("[", "1", "]"));
    assert_eq!(
        message(SourceKind::CoinGecko, &[USD], &body),
        "field bitcoin.usd is an array, expected a number"
    );
    let body = format!(r#"{{"bitcoin":{}}}"#, deep(r#"{"a":"#, "1", "}"));
    assert_eq!(
        message(SourceKind::CoinGecko, &[USD], &body),
        "missing field bitcoin.usd"
    );
}

#[test]
fn vendor_errors_win_over_missing_prices() {
    assert_eq!(
        message(
            SourceKind::Bitstamp,
            &[USD],
            r#"{"status":"error","reason":"Invalid currency pair.","code":"API0001"}"#
        ),
        "Bitstamp error: Invalid currency pair."
    );
    assert_eq!(
        message(
            SourceKind::CoinGecko,
            &[USD],
            r#"{"error":"coin not found"}"#
        ),
        "CoinGecko error: coin not found"
    );
    // Kraken's warnings (W…) come with a valid result and are not errors.
    let body = r#"{"error":["WGeneral:Deprecated"],"result":{"XXBTZUSD":{"c":["77726.1","1"]}}}"#;
    assert_eq!(
        parse(SourceKind::Kraken, &[USD], body.as_bytes()).unwrap()[0]
            .1
            .to_string(),
        "77726.1"
    );
    // A hostile error message is clipped to one line.
    let long = format!(
        r#"{{"error":["EGeneral:{}\n{}"]}}"#,
        "x".repeat(500),
        "forged"
    );
    let text = message(SourceKind::Kraken, &[USD], &long);
    assert!(!text.contains('\n'), "{text}");
    assert!(text.chars().count() < 250, "{}", text.len());
}

#[test]
fn duplicate_currencies_are_answered_once() {
    let body = br#"{"bitcoin":{"usd":67187.5,"eur":62185.12}}"#;
    let prices = parse(SourceKind::CoinGecko, &[USD, USD, EUR, USD], body).unwrap();
    assert_eq!(prices.len(), 2);
    assert_eq!(prices[0].0, USD);
    assert_eq!(prices[1].0, EUR);
}
