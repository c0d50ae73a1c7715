//! Property-based fuzzing of the history API's input, on the stable toolchain (proptest): query
//! strings of every shape, percent escapes included, and cursors, real ones mutated and arbitrary
//! ones, sent as requests to the real router over a real store. No input panics or gets a 5xx: a
//! client's mistake is a 400 with our JSON error, and a question that can be answered is a 200.
//!
//! Bounded in CI (256 cases per property); longer:
//!   PROPTEST_CASES=20000 cargo test --release -p history-api --test fuzz

mod common;

use std::sync::OnceLock;

use axum::Router;
use common::*;
use history_api::app;
use proptest::prelude::*;

/// One runtime and one app over a store of 300 ticks a currency, shared by every case.
fn fixture() -> &'static (tokio::runtime::Runtime, Router) {
    static FIXTURE: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let router = runtime.block_on(async { app(state(store_with(300).await)) });
        (runtime, router)
    })
}

fn ask(uri: &str) -> Answer {
    let (runtime, router) = fixture();
    runtime.block_on(get(router, uri))
}

/// A piece of a query string: the parameters' names and values we know, the characters that
/// matter to the grammar, and arbitrary text, percent-encoded or raw.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "since=",
            "until=",
            "currency=",
            "limit=",
            "cursor=",
            "&",
            "=",
            ",",
            "USD",
            "EUR",
            "usd",
            "GBP",
            "0",
            "-1",
            "1e3",
            "2026-11-24T01:40:05Z",
            "2026-11-24T01:40:05.5+02:00",
            "now",
            "5m",
            "18446744073709551616",
            "%",
            "%2",
            "%zz",
            "%26",
            "%3D",
            "+",
            ".",
            "v1",
        ])
        .prop_map(str::to_string),
        any::<u8>().prop_map(|b| format!("%{b:02X}")),
        "[a-zA-Z0-9._~-]{0,12}",
    ]
}

/// Checks one answer: never a 5xx; a 400 is our JSON error; a 200 is a page.
fn check(uri: &str) -> Result<(), TestCaseError> {
    let answer = ask(uri);
    let status = answer.status.as_u16();
    prop_assert!(
        status < 500,
        "{uri}: {status} {}",
        String::from_utf8_lossy(&answer.body)
    );
    prop_assert!(matches!(status, 200 | 400), "{uri}: {status}");
    let body = answer.json();
    if status == 400 {
        prop_assert!(body["error"].is_string(), "{uri}: {body}");
    } else {
        prop_assert!(body["ticks"].is_object(), "{uri}: {body}");
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_query_string_is_answered_or_refused_never_a_5xx(
        pieces in prop::collection::vec(piece(), 0..12),
    ) {
        check(&format!("/v1/ticks?{}", pieces.concat()))?;
    }

    #[test]
    fn well_formed_parameters_with_any_values(
        pairs in prop::collection::vec(
            (
                prop::sample::select(vec!["since", "until", "currency", "limit", "cursor"]),
                prop_oneof![
                    prop::sample::select(vec![
                        "0", "1", "1764000000", "2026-11-24T01:40:05Z", "2026-11-24T02:00:00%2B02:00",
                        "USD", "EUR", "USD,EUR", "EUR,USD,EUR", "usd", "", "10", "50000", "50001",
                        "-5", "99999999999999999999", "1e3", "%FF", "5m",
                    ])
                    .prop_map(str::to_string),
                    piece(),
                ],
            ),
            1..5,
        ),
    ) {
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        check(&format!("/v1/ticks?{}", query.join("&")))?;
    }

    #[test]
    fn a_real_cursor_mutated_is_a_400_or_a_page(
        at in any::<prop::sample::Index>(),
        with in any::<char>(),
        cut in any::<bool>(),
    ) {
        // A real cursor: the first page of a question that needs several.
        let first = ask("/v1/ticks?since=0&limit=10").json();
        let cursor = first["next_cursor"].as_str().unwrap().to_string();
        let mut chars: Vec<char> = cursor.chars().collect();
        let i = at.index(chars.len());
        if cut {
            chars.truncate(i);
        } else {
            chars[i] = with;
        }
        let mutated: String = chars.into_iter().collect();
        let encoded: String = mutated
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            })
            .collect();
        check(&format!("/v1/ticks?cursor={encoded}"))?;
    }
}
