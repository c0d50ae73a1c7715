//! `openapi.json` checked against what the server really answers.
//!
//! The document is loaded as a JSON Schema 2020-12 resource (OpenAPI 3.1 schemas are that
//! dialect), and each real response body is validated against the schema the document gives for
//! that path and status, found by walking `paths` (following `$ref` to `components/responses`)
//! exactly as a client generator would. A status the document does not list for the path fails
//! the test, and every schema is closed (`additionalProperties: false`), so a field the server
//! adds or drops without the document saying so fails too.

mod common;

use axum::http::StatusCode;
use common::*;
use history_api::{DEFAULT_LIMIT, MAX_LIMIT, OPENAPI, app};
use jsonschema::{Draft, Validator};
use serde_json::{Value, json};
use ticks::{Currency, Gap, GapReason};

fn document() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
}

/// A validator for the schema at `pointer` (a JSON pointer into the document), with every `$ref`
/// resolved inside the document.
fn validator_at(pointer: &str) -> Validator {
    // The document itself is the root schema: its OpenAPI keywords are unknown to JSON Schema and
    // so ignored, and `#/components/...` references resolve within it.
    let mut root = document();
    root["$ref"] = json!(format!("#{pointer}"));
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema at {pointer}: {e}"))
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The JSON pointer of the response schema the document gives for `GET path` answering `status`.
fn response_schema(path: &str, status: u16, media_type: &str) -> String {
    let doc = document();
    let operation = format!("/paths/{}/get", escape(path));
    let mut response_pointer = format!("{operation}/responses/{status}");
    let mut response = doc
        .pointer(&response_pointer)
        .unwrap_or_else(|| panic!("openapi.json does not document status {status} for GET {path}"));
    if let Some(reference) = response.get("$ref").and_then(Value::as_str) {
        response_pointer = reference.trim_start_matches('#').to_string();
        response = doc.pointer(&response_pointer).unwrap();
    }
    let pointer = format!("{response_pointer}/content/{}/schema", escape(media_type));
    assert!(
        response
            .pointer(&format!("/content/{}/schema", escape(media_type)))
            .is_some(),
        "no {media_type} schema at {pointer}"
    );
    pointer
}

fn assert_valid(pointer: &str, instance: &Value) {
    let validator = validator_at(pointer);
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{instance} against {pointer}: {errors:#?}"
    );
}

/// Validates a real answer to `GET uri` against what the document says for its path and status.
fn check(path: &str, answer: &Answer) {
    let pointer = response_schema(path, answer.status.as_u16(), "application/json");
    assert_eq!(answer.content_type(), "application/json");
    assert_valid(&pointer, &answer.json());
}

#[tokio::test]
async fn real_answers_match_the_document() {
    let store = store_with(25).await;
    store
        .record_gap(Gap {
            currency: Currency::EUR,
            from: slot(3),
            until: slot(5),
            reason: GapReason::StoreUnavailable,
        })
        .await
        .unwrap();
    let app = app(state(store));

    for uri in [
        format!("/v1/ticks?since={T0}"),
        format!("/v1/ticks?since={T0}&limit=7"),
        format!("/v1/ticks?since={T0}&currency=EUR&limit=3"),
        "/v1/ticks?since=9999-01-01T00:00:00Z&currency=usd".to_string(),
        "/v1/ticks?since=0".to_string(),
    ] {
        let answer = get(&app, &uri).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}");
        check("/v1/ticks", &answer);
    }
    let cut = get(&app, &format!("/v1/ticks?since={T0}&limit=7")).await;
    check_cache_headers(&cut, 200);
    let held = cut.header("etag").to_string();
    let not_modified = get_with(
        &app,
        &format!("/v1/ticks?since={T0}&limit=7"),
        &[("if-none-match", &held)],
    )
    .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    check_cache_headers(&not_modified, 304);
    let cut = cut.json();
    let cursor = cut["next_cursor"].as_str().unwrap();
    let next = get(&app, &format!("/v1/ticks?cursor={cursor}")).await;
    check("/v1/ticks", &next);

    for uri in [
        "/v1/ticks?since=garbage",
        "/v1/ticks?since=%FF",
        "/v1/ticks?%ZZ=1",
        "/v1/ticks?since=0&limit=0",
        "/v1/ticks",
    ] {
        let answer = get(&app, uri).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{uri}");
        check("/v1/ticks", &answer);
    }

    check("/healthz", &get(&app, "/healthz").await);
    check("/readyz", &get(&app, "/readyz").await);

    let metrics = get(&app, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    response_schema("/metrics", 200, "text/plain; version=0.0.4");
    assert!(
        metrics
            .content_type()
            .starts_with("text/plain; version=0.0.4")
    );

    let served = get(&app, "/openapi.json").await;
    check("/openapi.json", &served);
    assert_eq!(served.json(), document());

    // 404 and 405 answer the shared error responses.
    let not_found = get(&app, "/nope").await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    assert_valid(
        "/components/responses/NotFound/content/application~1json/schema",
        &not_found.json(),
    );
    let wrong_method = request(&app, "DELETE", "/healthz").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_valid(
        "/components/responses/MethodNotAllowed/content/application~1json/schema",
        &wrong_method.json(),
    );
}

/// The documented headers of a `/v1/ticks` answer are there and match their schemas; a 304 has no
/// body and the document gives it none.
fn check_cache_headers(answer: &Answer, status: u16) {
    let doc = document();
    let response = doc
        .pointer(&format!("/paths/~1v1~1ticks/get/responses/{status}"))
        .unwrap_or_else(|| panic!("status {status} is not documented"));
    let headers = response["headers"].as_object().unwrap();
    // serde_json's map sorts the keys.
    assert_eq!(
        headers.keys().collect::<Vec<_>>(),
        ["Cache-Control", "ETag"]
    );
    for name in headers.keys() {
        let pointer = format!("/paths/~1v1~1ticks/get/responses/{status}/headers/{name}/schema");
        assert_valid(&pointer, &json!(answer.header(name)));
    }
    if status == 304 {
        assert!(response.get("content").is_none());
        assert!(answer.body.is_empty());
    }
}

#[tokio::test]
async fn unready_and_unavailable_answers_match_the_document() {
    let unready = app(state_with_broker(store_with(2).await, false));
    let answer = get(&unready, "/readyz").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    check("/readyz", &answer);

    let broken = store_with(1).await;
    broken
        .tamper_blocking(|conn| conn.execute_batch("DROP TABLE ticks"))
        .unwrap();
    let app = app(state(broken));
    let answer = get(&app, &format!("/v1/ticks?since={T0}")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    check("/v1/ticks", &answer);
    let answer = get(&app, "/readyz").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    check("/readyz", &answer);
}

#[tokio::test]
async fn refusals_at_the_limits_match_the_document() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let limits = history_api::Limits {
        rate: 1,
        burst: 1,
        ..Default::default()
    };
    let state = state(store_with(1).await).with_limits(limits.clone());
    let options = history_api::ServeOptions {
        limits,
        ..Default::default()
    };
    tokio::spawn(history_api::serve_router(
        listener,
        app(state),
        options,
        std::future::pending(),
    ));
    // Refused for its length before it is counted against the rate.
    let long = format!("/v1/ticks?since=0&pad={}", "x".repeat(3_000));
    let (status, body) = http_get(address, long.as_bytes()).await;
    assert_eq!(status, 414);
    let pointer = response_schema("/v1/ticks", 414, "application/json");
    assert_valid(&pointer, &serde_json::from_str(&body).unwrap());

    for path in [
        "/v1/ticks?since=0",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        // One request a second is allowed: ask until refused.
        let mut tries = 0;
        let (status, body) = loop {
            let (status, body) = http_get(address, path.as_bytes()).await;
            tries += 1;
            if status == 429 || tries == 20 {
                break (status, body);
            }
        };
        assert_eq!(status, 429, "{path}");
        let path = path.split('?').next().unwrap();
        let pointer = response_schema(path, 429, "application/json");
        assert_valid(&pointer, &serde_json::from_str(&body).unwrap());
    }
}

#[test]
fn every_parameter_is_described_with_the_servers_limits() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let parameters = doc["paths"]["/v1/ticks"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let names: Vec<(&str, &str)> = parameters
        .iter()
        .map(|p| (p["in"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("query", "since"),
            ("query", "currency"),
            ("query", "limit"),
            ("query", "cursor"),
            ("header", "If-None-Match")
        ]
    );
    let limit = &parameters[2]["schema"];
    assert_eq!(limit["minimum"], 1);
    assert_eq!(limit["maximum"], json!(MAX_LIMIT));
    assert_eq!(limit["default"], json!(DEFAULT_LIMIT));

    // Exactly the routes `app` serves (serde_json's map sorts the keys).
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(
        paths,
        [
            "/",
            "/app.js",
            "/favicon.svg",
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/readyz",
            "/style.css",
            "/v1/stream",
            "/v1/ticks"
        ]
    );
    let stream: Vec<(&str, &str)> = doc["paths"]["/v1/stream"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["in"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stream,
        [
            ("query", "since"),
            ("query", "currency"),
            ("header", "Last-Event-ID")
        ]
    );
}

#[test]
fn the_documents_examples_are_valid() {
    let doc = document();
    for name in ["Timedate", "Cursor", "Tick", "BadRequestError"] {
        let pointer = format!("/components/schemas/{name}");
        for example in doc
            .pointer(&format!("{pointer}/examples"))
            .unwrap()
            .as_array()
            .unwrap()
        {
            assert_valid(&pointer, example);
        }
    }
    // And a few things that must not validate, so the schemas are not vacuous.
    let tick = "/components/schemas/Tick";
    let not_ticks = [
        json!({"timedate": "2026-11-24T01:40:05Z", "price": 1, "currency": "USD"}),
        json!({"timedate": "2026-11-24T01:40:05+01:00", "price": 1}),
        json!({"timedate": "2026-11-24T01:40:05Z", "price": "1"}),
        json!({"timedate": "2026-11-24T01:40:05Z"}),
    ];
    for bad in not_ticks {
        assert!(!validator_at(tick).is_valid(&bad), "{bad}");
    }
    assert!(!validator_at("/components/schemas/Cursor").is_valid(&json!("v1.1.GBP.USD.00000000")));
}
