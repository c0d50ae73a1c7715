//! Every kind of event a real `GET /v1/stream` sends matches what `openapi.json` says of it: the
//! event's schema (`StreamEvent`), and its JSON data the schema its branch names in
//! `contentSchema` (the tick, the gap, the status, the end). Schemathesis reads the document the
//! same way in CI (`ops/schemathesis/check.sh`); this keeps it true between its runs.

use std::time::Duration;

use jsonschema::{Draft, Validator};
use serde_json::{Value, json};
use testkit::sse::{SseEvent, SseReader};
use testkit::{FeedProcess, FixtureServer, Mode};

const WAIT: Duration = Duration::from_secs(40);

fn document() -> Value {
    serde_json::from_str(history_api::OPENAPI).expect("openapi.json is JSON")
}

/// A validator for `reference` (`#/components/schemas/…`) with the document as its root, so that
/// its `$ref`s resolve inside the document.
fn validator(reference: &str) -> Validator {
    let mut root = document();
    root["$ref"] = json!(reference);
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("{reference}: {e}"))
}

/// What is wrong with `event` by the document, if anything. JSON Schema only annotates with
/// `contentSchema`, so the data is checked against its branch's content schema here.
fn violations(event: &SseEvent) -> Vec<String> {
    let mut instance = json!({"event": event.event, "data": event.data});
    if let Some(id) = &event.id {
        instance["id"] = json!(id);
    }
    let mut errors: Vec<String> = validator("#/components/schemas/StreamEvent")
        .iter_errors(&instance)
        .map(|e| format!("{e}"))
        .collect();
    let doc = document();
    let branch = doc["components"]["schemas"]["StreamEvent"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| {
            let name = &b["properties"]["event"];
            name["const"] == json!(event.event)
                || name["enum"]
                    .as_array()
                    .is_some_and(|e| e.contains(&json!(event.event)))
        });
    let Some(content) =
        branch.and_then(|b| b["properties"]["data"]["contentSchema"]["$ref"].as_str())
    else {
        return errors;
    };
    match serde_json::from_str::<Value>(&event.data) {
        Ok(data) => errors.extend(
            validator(content)
                .iter_errors(&data)
                .map(|e| format!("data: {e}")),
        ),
        Err(e) => errors.push(format!("data is not JSON: {e}")),
    }
    errors
}

async fn read_until(
    stream: &mut SseReader,
    events: &mut Vec<SseEvent>,
    done: impl Fn(&[SseEvent]) -> bool,
) {
    while !done(events) {
        events.push(stream.next(WAIT).await.expect("the stream goes on"));
    }
}

fn has(events: &[SseEvent], kind: &str) -> bool {
    events.iter().any(|e| e.event == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_event_a_stream_sends_matches_the_document() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let feed = FeedProcess::kraken(&dir.path().join("feed.db"), &kraken, "500ms").await;
    let mut stream = SseReader::start(&format!("http://{}/v1/stream?since=0", feed.http), &[]);
    let mut events: Vec<SseEvent> = Vec::new();
    read_until(&mut stream, &mut events, |e| {
        has(e, "btc/USD") && has(e, "btc/EUR") && has(e, "status") && has(e, "live")
    })
    .await;
    // The source fails: a gap, and a status that is not live.
    kraken.set_mode(Mode::Status(503));
    read_until(&mut stream, &mut events, |e| {
        has(e, "gap")
            && e.iter()
                .any(|e| e.event == "status" && !e.data.contains(r#""live""#))
    })
    .await;
    kraken.set_mode(Mode::Serve);
    // The server stops: `end`.
    assert!(feed.process.terminate(WAIT).await.success());
    while let Some(event) = stream.next(WAIT).await {
        events.push(event);
    }
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("end"),
        "{events:?}"
    );

    for event in &events {
        assert_eq!(violations(event), Vec::<String>::new(), "{event:?}");
    }

    // The check finds what the document does not allow.
    let tick = events.iter().find(|e| e.event == "btc/USD").unwrap();
    let wrong = [
        SseEvent {
            data: tick.data.replace('}', r#","currency":"USD"}"#),
            ..tick.clone()
        },
        SseEvent {
            id: Some("2026-11-24T01:40:05Z".into()),
            ..tick.clone()
        },
        SseEvent {
            event: "tick".into(),
            ..tick.clone()
        },
        SseEvent {
            event: "end".into(),
            data: r#"{"reason":"bored","message":"x"}"#.into(),
            id: None,
        },
    ];
    for event in wrong {
        assert!(!violations(&event).is_empty(), "{event:?} passes");
    }
}
