//! `GET /v1/ticks` through the in-process router: answers, pages, gaps and every refusal.

mod common;

use common::*;
use history_api::app;
use serde_json::{Value, json};
use ticks::{Currency, Gap, GapReason, Tick};

fn payloads(ticks: impl IntoIterator<Item = Tick>) -> Vec<String> {
    ticks.into_iter().map(|t| t.payload()).collect()
}

fn range(currency: Currency, slots: std::ops::Range<i64>) -> Vec<String> {
    payloads(slots.map(|i| tick(currency, i)))
}

#[tokio::test]
async fn a_small_answer_is_exactly_these_bytes() {
    let app = app(state(store_with(2).await));
    let answer = get(&app, "/v1/ticks?since=2026-11-24T01:40:00Z").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), "application/json");
    assert_eq!(
        answer.text(),
        concat!(
            r#"{"since":"2026-11-24T01:40:00Z","currencies":["USD","EUR"],"#,
            r#""ticks":{"USD":[{"timedate":"2026-11-24T01:40:00Z","price":97000},"#,
            r#"{"timedate":"2026-11-24T01:40:05Z","price":97000.5}],"#,
            r#""EUR":[{"timedate":"2026-11-24T01:40:00Z","price":89000.25},"#,
            r#"{"timedate":"2026-11-24T01:40:05Z","price":89001.25}]},"#,
            r#""gaps":[],"earliest":"2026-11-24T01:40:00Z","since_before_earliest":false,"#,
            r#""latest":"2026-11-24T01:40:05Z","interval":"5s","demo":false,"next_cursor":null}"#
        )
    );
}

#[tokio::test]
async fn since_is_inclusive_and_ticks_are_the_exact_payloads_oldest_first() {
    let app = app(state(store_with(10).await));
    // slot(3) is 2026-11-24T01:40:15Z, unix 1795484415.
    for since in [
        "2026-11-24T01:40:15Z",
        "2026-11-24T02:40:15%2B01:00",
        "1795484415",
    ] {
        let answer = get(&app, &format!("/v1/ticks?since={since}")).await;
        assert_eq!(answer.status, 200, "{since}");
        assert_eq!(answer.raw_ticks(Currency::USD), range(Currency::USD, 3..10));
        assert_eq!(answer.raw_ticks(Currency::EUR), range(Currency::EUR, 3..10));
        assert_eq!(answer.json()["since"], "2026-11-24T01:40:15Z");
    }
    // One millisecond later excludes the slot-3 ticks.
    let answer = get(&app, "/v1/ticks?since=2026-11-24T01:40:15.001Z").await;
    assert_eq!(answer.raw_ticks(Currency::USD), range(Currency::USD, 4..10));
    assert_eq!(answer.json()["since"], "2026-11-24T01:40:15.001Z");
    // Sub-millisecond digits round up, so inclusive never reaches back.
    let answer = get(&app, "/v1/ticks?since=1795484414.9999").await;
    assert_eq!(answer.raw_ticks(Currency::USD), range(Currency::USD, 3..10));
}

#[tokio::test]
async fn one_currency_answers_only_that_currency() {
    let app = app(state(store_with(4).await));
    for currency in ["EUR", "eur", "EUR,EUR"] {
        let answer = get(&app, &format!("/v1/ticks?since={T0}&currency={currency}")).await;
        assert_eq!(answer.status, 200);
        let page = answer.json();
        assert_eq!(page["currencies"], json!(["EUR"]));
        assert_eq!(page["ticks"].as_object().unwrap().len(), 1);
        assert_eq!(answer.raw_ticks(Currency::EUR), range(Currency::EUR, 0..4));
    }
    let both = get(&app, &format!("/v1/ticks?since={T0}&currency=both")).await;
    assert_eq!(both.json()["currencies"], json!(["USD", "EUR"]));
    let reversed = get(&app, &format!("/v1/ticks?since={T0}&currency=EUR,USD")).await;
    assert_eq!(reversed.body, both.body);
}

/// Follows `next_cursor` from `first` to the end; returns each page's JSON.
async fn all_pages(app: &axum::Router, first: &str, currency: &str) -> Vec<common::Answer> {
    let mut pages = vec![get(app, first).await];
    while let Some(cursor) = pages.last().unwrap().json()["next_cursor"].as_str() {
        let cursor = cursor.to_string();
        let uri = format!("/v1/ticks?cursor={cursor}&limit=7{currency}");
        let answer = get(app, &uri).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        pages.push(answer);
        assert!(pages.len() < 100, "paging does not end");
    }
    pages
}

#[tokio::test]
async fn pages_concatenate_to_the_unlimited_answer() {
    let app = app(state(store_with(25).await));
    let whole = get(&app, &format!("/v1/ticks?since={T0}&limit=50000")).await;
    assert_eq!(whole.json()["next_cursor"], Value::Null);
    assert_eq!(whole.raw_ticks(Currency::USD), range(Currency::USD, 0..25));
    assert_eq!(whole.raw_ticks(Currency::EUR), range(Currency::EUR, 0..25));

    // The same request with and without `currency`: a cursor remembers its currencies.
    for repeat_currency in ["", "&currency=USD,EUR"] {
        let pages = all_pages(
            &app,
            &format!("/v1/ticks?since={T0}&limit=7"),
            repeat_currency,
        )
        .await;
        // 50 ticks in pages of 7: seven full pages and one of 1.
        let sizes: Vec<(usize, usize)> = pages
            .iter()
            .map(|p| {
                (
                    p.raw_ticks(Currency::USD).len(),
                    p.raw_ticks(Currency::EUR).len(),
                )
            })
            .collect();
        assert_eq!(
            sizes,
            [
                (4, 3),
                (3, 4),
                (4, 3),
                (3, 4),
                (4, 3),
                (3, 4),
                (4, 3),
                (0, 1)
            ]
        );
        // The first cut falls between the USD and the EUR tick of slot 3.
        let first = pages[0].json();
        let cursor = first["next_cursor"].as_str().unwrap();
        assert!(
            cursor.starts_with("v1.1795484415000.EUR.USD-EUR."),
            "{cursor}"
        );
        assert_eq!(pages[1].json()["since"], "2026-11-24T01:40:15Z");
        for currency in Currency::ALL {
            let joined: Vec<String> = pages.iter().flat_map(|p| p.raw_ticks(currency)).collect();
            assert_eq!(joined, whole.raw_ticks(currency), "{currency}");
        }
        assert_eq!(pages.last().unwrap().json()["next_cursor"], Value::Null);
    }
}

#[tokio::test]
async fn one_currency_pages_and_a_limit_that_divides_the_total() {
    let app = app(state(store_with(25).await));
    let pages = all_pages(
        &app,
        &format!("/v1/ticks?since={T0}&limit=7&currency=USD"),
        "",
    )
    .await;
    let sizes: Vec<usize> = pages
        .iter()
        .map(|p| p.raw_ticks(Currency::USD).len())
        .collect();
    assert_eq!(sizes, [7, 7, 7, 4]);
    let joined: Vec<String> = pages
        .iter()
        .flat_map(|p| p.raw_ticks(Currency::USD))
        .collect();
    assert_eq!(joined, range(Currency::USD, 0..25));
    for page in &pages {
        assert_eq!(page.json()["currencies"], json!(["USD"]));
    }

    // 50 ticks, limit 25: two full pages and no empty third.
    let first = get(&app, &format!("/v1/ticks?since={T0}&limit=25")).await;
    let cursor = first.json()["next_cursor"].as_str().unwrap().to_string();
    let second = get(&app, &format!("/v1/ticks?cursor={cursor}&limit=25")).await;
    assert_eq!(second.json()["next_cursor"], Value::Null);
    assert_eq!(
        second.raw_ticks(Currency::EUR),
        range(Currency::EUR, 12..25)
    );
    assert_eq!(
        second.raw_ticks(Currency::USD),
        range(Currency::USD, 13..25)
    );
}

#[tokio::test]
async fn ticks_stored_while_paging_appear_once_at_the_end() {
    let store = store_with(5).await;
    let app = app(state(store.clone()));
    let first = get(&app, &format!("/v1/ticks?since={T0}&limit=6")).await;
    let cursor = first.json()["next_cursor"].as_str().unwrap().to_string();
    store
        .insert_ticks(vec![tick(Currency::USD, 5), tick(Currency::EUR, 5)])
        .await
        .unwrap();
    let rest = get(&app, &format!("/v1/ticks?cursor={cursor}")).await;
    assert_eq!(rest.json()["next_cursor"], Value::Null);
    for currency in Currency::ALL {
        let mut joined = first.raw_ticks(currency);
        joined.extend(rest.raw_ticks(currency));
        assert_eq!(joined, range(currency, 0..6));
    }
}

#[tokio::test]
async fn gaps_overlapping_the_page_are_reported() {
    let store = store_with(30).await;
    let gaps = [
        Gap {
            currency: Currency::USD,
            from: slot(12),
            until: slot(15),
            reason: GapReason::SourcesUnavailable,
        },
        Gap {
            currency: Currency::EUR,
            from: slot(20),
            until: slot(21),
            reason: GapReason::PublisherDown,
        },
    ];
    for gap in gaps {
        store.record_gap(gap).await.unwrap();
    }
    let app = app(state(store));

    // A since inside the USD gap still reports it.
    let answer = get(&app, "/v1/ticks?since=2026-11-24T01:41:05Z").await;
    assert_eq!(
        answer.json()["gaps"],
        json!([
            {"currency":"USD","from":"2026-11-24T01:41:00Z","until":"2026-11-24T01:41:15Z","reason":"sources_unavailable"},
            {"currency":"EUR","from":"2026-11-24T01:41:40Z","until":"2026-11-24T01:41:45Z","reason":"publisher_down"}
        ])
    );
    let eur_only = get(&app, "/v1/ticks?since=2026-11-24T01:41:05Z&currency=EUR").await;
    assert_eq!(eur_only.json()["gaps"].as_array().unwrap().len(), 1);
    // A gap ends exclusively: from its end on, it is not reported.
    let after = get(&app, "/v1/ticks?since=2026-11-24T01:41:45Z").await;
    assert_eq!(after.json()["gaps"], json!([]));

    // A page cut before the EUR gap reports only the USD one; the page after it, the EUR one.
    let first = get(&app, &format!("/v1/ticks?since={T0}&limit=34")).await;
    let page = first.json();
    assert_eq!(
        page["next_cursor"].as_str().unwrap()[..18],
        *"v1.1795484485000.U"
    );
    assert_eq!(page["gaps"].as_array().unwrap().len(), 1);
    assert_eq!(page["gaps"][0]["currency"], "USD");
    let cursor = page["next_cursor"].as_str().unwrap();
    let second = get(&app, &format!("/v1/ticks?cursor={cursor}")).await;
    assert_eq!(second.json()["gaps"][0]["currency"], "EUR");
    assert_eq!(second.json()["gaps"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_answer_says_how_far_back_the_server_holds() {
    let app = app(state(store_with(3).await));
    let before = get(&app, "/v1/ticks?since=2026-11-24T00:00:00Z")
        .await
        .json();
    assert_eq!(before["since_before_earliest"], true);
    assert_eq!(before["earliest"], "2026-11-24T01:40:00Z");
    assert_eq!(before["latest"], "2026-11-24T01:40:10Z");
    assert_eq!(before["ticks"]["USD"].as_array().unwrap().len(), 3);
    let exact = get(&app, &format!("/v1/ticks?since={T0}")).await.json();
    assert_eq!(exact["since_before_earliest"], false);
}

#[tokio::test]
async fn a_future_since_is_an_empty_answer() {
    let app = app(state(store_with(3).await));
    let answer = get(&app, "/v1/ticks?since=9999-12-31T23:59:59Z").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({
            "since": "9999-12-31T23:59:59Z",
            "currencies": ["USD", "EUR"],
            "ticks": {"USD": [], "EUR": []},
            "gaps": [],
            "earliest": "2026-11-24T01:40:00Z",
            "since_before_earliest": false,
            "latest": "2026-11-24T01:40:10Z",
            "interval": "5s",
            "demo": false,
            "next_cursor": null
        })
    );
}

#[tokio::test]
async fn an_empty_store_answers_with_nulls() {
    let mut state = state(history_store::HistoryStore::open_in_memory().unwrap());
    state.feed.demo = true;
    state.feed.interval = "250ms".parse().unwrap();
    let answer = get(&app(state), "/v1/ticks?since=0&currency=USD").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({
            "since": "1970-01-01T00:00:00Z",
            "currencies": ["USD"],
            "ticks": {"USD": []},
            "gaps": [],
            "earliest": null,
            "since_before_earliest": false,
            "latest": null,
            "interval": "250ms",
            "demo": true,
            "next_cursor": null
        })
    );
}

#[tokio::test]
async fn every_bad_request_is_a_400_naming_the_parameter() {
    let app = app(state(store_with(3).await));
    let first = get(&app, &format!("/v1/ticks?since={T0}&limit=1")).await;
    let cursor = first.json()["next_cursor"].as_str().unwrap().to_string();
    let tampered = cursor.replace("1795484400000", "1795484405000");
    let cases: Vec<(String, Value)> = vec![
        ("since=garbage".into(), json!("since")),
        ("currency=GBP&since=0".into(), json!("currency")),
        ("since=0&currency=".into(), json!("currency")),
        ("since=0&limit=0".into(), json!("limit")),
        ("since=0&limit=50001".into(), json!("limit")),
        ("since=0&limit=x".into(), json!("limit")),
        ("since=0&foo=1".into(), json!("foo")),
        ("since=0&since=1".into(), json!("since")),
        (format!("since=0&cursor={cursor}"), json!("cursor")),
        ("cursor=garbage".into(), json!("cursor")),
        (format!("cursor={tampered}"), json!("cursor")),
        (format!("cursor={cursor}&currency=EUR"), json!("currency")),
        ("since=%ZZ".into(), json!("since")),
        ("since=%FF".into(), json!("since")),
        ("currency=USD".into(), json!("since")),
        (String::new(), json!("since")),
        ("%ZZ=1".into(), Value::Null),
    ];
    for (query, parameter) in cases {
        let answer = get(&app, &format!("/v1/ticks?{query}")).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.text());
        assert_eq!(answer.content_type(), "application/json");
        let body = answer.json();
        assert_eq!(body["error"], "bad_request", "{query}");
        assert_eq!(body["parameter"], parameter, "{query}");
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        get(&app, "/v1/ticks?since=garbage").await.json(),
        json!({
            "error": "bad_request",
            "parameter": "since",
            "message": "\"garbage\" is neither an RFC 3339 time (2026-11-24T01:40:05Z) nor unix seconds"
        })
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_are_json_errors() {
    let app = app(state(store_with(1).await));
    let answer = get(&app, "/v1/tick?since=0").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.content_type(), "application/json");
    assert_eq!(
        answer.json(),
        json!({"error": "not_found", "message": "no route for /v1/tick; the routes are listed in /openapi.json"})
    );
    let answer = request(&app, "POST", "/v1/ticks?since=0").await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.headers["allow"], "GET,HEAD");
    assert_eq!(
        answer.json(),
        json!({"error": "method_not_allowed", "message": "method POST is not allowed here; use GET"})
    );
    // HEAD is GET without the body.
    let head = request(&app, "HEAD", &format!("/v1/ticks?since={T0}")).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn a_failing_store_is_a_503_not_a_500() {
    let store = store_with(1).await;
    store
        .tamper_blocking(|conn| conn.execute_batch("DROP TABLE ticks"))
        .unwrap();
    let answer = get(&app(state(store)), &format!("/v1/ticks?since={T0}")).await;
    assert_eq!(answer.status, 503);
    let body = answer.json();
    assert_eq!(body["error"], "store_unavailable");
    assert_eq!(
        body["message"],
        "the history store is unavailable: store query failed: no such table: ticks: Error code 1: SQL error or missing database"
    );
}
