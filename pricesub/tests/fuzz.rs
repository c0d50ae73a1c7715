//! Property-based fuzzing of what `pricesub` reads from users and from the broker, on the stable
//! toolchain (proptest): `--since` and `--broker` values, and MQTT messages (tick and gap payloads)
//! of every shape. No input panics; what is accepted is valid: a tick or gap prints and parses back
//! to itself, a broker URL prints back to an equal one, a `--since` is a real instant.
//!
//! Bounded in CI (256 cases per property); longer:
//!   PROPTEST_CASES=200000 cargo test --release -p pricesub --test fuzz

use proptest::prelude::*;
use ticks::{BrokerUrl, Currency, Gap, Tick, Timedate};

fn now() -> Timedate {
    "2026-11-24T01:40:05Z".parse().unwrap()
}

/// Text near the grammar: the pieces real values are made of, shuffled, plus arbitrary text.
fn near(pieces: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(pieces), 0..8).prop_map(|p| p.concat()),
        any::<String>(),
    ]
}

const SINCE: &[&str] = &[
    "5",
    "m",
    "h",
    "d",
    "s",
    "ms",
    "-",
    "+",
    ":",
    "T",
    "Z",
    "2026",
    "-11-24",
    "01:40:05",
    ".5",
    "1764000000",
    "0",
    "999999999999999999999",
    " ",
    "now",
    "e3",
];
const BROKER: &[&str] = &[
    "mqtt://",
    "mqtts://",
    "tcp://",
    "127.0.0.1",
    "[::1]",
    "host",
    ":",
    "1883",
    "65536",
    "0",
    "/",
    "@",
    ",",
    "%",
    " ",
];
const TIMES: &[&str] = &[
    "\"2026-11-24T01:40:05Z\"",
    "\"2026-11-24T01:40:05.5Z\"",
    "\"2026-11-24T02:40:05+01:00\"",
    "\"1970-01-01T00:00:00Z\"",
    "\"9999-12-31T23:59:59Z\"",
    "\"2026-02-30T00:00:00Z\"",
    "0",
    "null",
];
const PRICES: &[&str] = &[
    "97001.5",
    "\"97001.5\"",
    "1e-3",
    "0.00000001",
    "0",
    "-1",
    "1e400",
    "123456789012345678901",
    "\"\"",
    "null",
    "97001.50000",
];

/// A tick payload: its two fields (in either order, sometimes with a third) from the pools.
fn tick_object() -> impl Strategy<Value = String> {
    (
        prop::sample::select(TIMES),
        prop::sample::select(PRICES),
        any::<bool>(),
        prop::sample::select(vec!["", ",\"extra\":1", ",\"price\":1"]),
    )
        .prop_map(|(t, p, swap, extra)| {
            if swap {
                format!("{{\"price\":{p},\"timedate\":{t}{extra}}}")
            } else {
                format!("{{\"timedate\":{t},\"price\":{p}{extra}}}")
            }
        })
}

/// A gap payload: its four fields from the pools.
fn gap_object() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["\"USD\"", "\"EUR\"", "\"GBP\"", "null"]),
        prop::sample::select(TIMES),
        prop::sample::select(TIMES),
        prop::sample::select(vec![
            "\"publisher_down\"",
            "\"sources_unavailable\"",
            "\"store_unavailable\"",
            "\"other\"",
        ]),
    )
        .prop_map(|(c, from, until, r)| {
            format!("{{\"currency\":{c},\"from\":{from},\"until\":{until},\"reason\":{r}}}")
        })
}

const PAYLOAD: &[&str] = &[
    "{",
    "}",
    "\"timedate\"",
    "\"price\"",
    "\"from\"",
    "\"until\"",
    "\"currency\"",
    "\"reason\"",
    ":",
    ",",
    "\"2026-11-24T01:40:05Z\"",
    "97001.5",
    "\"97001.5\"",
    "-1",
    "0",
    "1e400",
    "null",
    "\"USD\"",
    "\"publisher_down\"",
    "\"sources_unavailable\"",
    " ",
    "[]",
];

proptest! {
    #[test]
    fn since(text in near(SINCE)) {
        if let Ok(t) = pricesub::parse_since(&text, now()) {
            // A real instant: it prints as RFC 3339 and reads back the same.
            prop_assert_eq!(t.to_string().parse::<Timedate>().ok(), Some(t));
        }
    }

    #[test]
    fn broker_url(text in near(BROKER)) {
        if let Ok(url) = text.parse::<BrokerUrl>() {
            prop_assert!(!url.host.is_empty(), "{text:?}");
            prop_assert_eq!(url.to_string().parse::<BrokerUrl>().ok(), Some(url));
        }
    }

    #[test]
    fn tick_message(
        topic in prop::sample::select(vec!["btc/USD", "btc/EUR", "btc/GBP", "btc/usd", ""]),
        payload in prop_oneof![near(PAYLOAD), tick_object()],
    ) {
        if let Ok(tick) = Tick::from_message(topic, payload.as_bytes()) {
            prop_assert_eq!(tick.currency.topic(), topic);
            // What pricesub prints parses back to the very same tick.
            let line = tick.line();
            let (t, p) = line.split_once(' ').unwrap();
            prop_assert_eq!(Tick::from_message(t, p.as_bytes()).ok(), Some(tick));
        }
    }

    #[test]
    fn gap_message(
        payload in prop_oneof![near(PAYLOAD), gap_object()],
    ) {
        if let Ok(gap) = Gap::from_payload(payload.as_bytes()) {
            prop_assert!(gap.from < gap.until, "{gap:?}");
            prop_assert!(Currency::ALL.contains(&gap.currency));
            prop_assert_eq!(Gap::from_payload(gap.payload().as_bytes()).ok(), Some(gap));
        }
    }
}
