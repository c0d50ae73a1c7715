//! What caches in front of the history API rely on: every answer carries a strong `ETag`; a closed
//! page (cut by `limit` before the newest tick of every requested currency) never changes and may
//! be kept for a day; a page that reaches the live edge may be kept until the next slot; a client
//! that names the answer it holds in `If-None-Match` gets `304 Not Modified`; errors are never kept.

mod common;

use axum::http::StatusCode;
use common::*;
use history_api::app;
use history_store::HistoryStore;
use ticks::{Currency, Gap, GapReason, NodeRole};

const CLOSED: &str = "public, max-age=86400, immutable";

/// The `max-age` of an open answer, which must be at most the 5 s interval.
fn short_max_age(answer: &Answer) -> u64 {
    let control = answer.header("cache-control");
    let seconds = control
        .strip_prefix("public, max-age=")
        .unwrap_or_else(|| panic!("not a short public max-age: {control:?}"))
        .parse()
        .unwrap();
    assert!(seconds <= 5, "{control}");
    seconds
}

fn etag(answer: &Answer) -> String {
    let tag = answer.header("etag").to_string();
    assert!(
        tag.len() > 2 && tag.starts_with('"') && tag.ends_with('"'),
        "a strong entity tag: {tag:?}"
    );
    tag
}

#[tokio::test]
async fn a_closed_page_is_immutable_and_the_same_bytes_later() {
    let store = store_with(100).await;
    let app = app(state(store.clone()));
    let uri = format!("/v1/ticks?since={T0}&limit=10");
    let first = get(&app, &uri).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("cache-control"), CLOSED);
    let page = first.json();
    assert!(page["next_cursor"].is_string());
    assert_eq!(page["latest"], serde_json::Value::Null, "{}", first.text());
    assert_eq!(page["earliest"], T0);
    let tag = etag(&first);

    // The feed goes on: the page neither changes nor is tagged differently.
    store
        .insert_ticks(Currency::ALL.map(|c| tick(c, 100)).to_vec())
        .await
        .unwrap();
    let later = get(&app, &uri).await;
    assert_eq!(later.text(), first.text());
    assert_eq!(etag(&later), tag);
    assert_eq!(later.header("cache-control"), CLOSED);

    // Another replica holding the same history serves the same bytes under the same tag.
    let replica = app_with(store_with(101).await);
    let there = get(&replica, &uri).await;
    assert_eq!(there.text(), first.text());
    assert_eq!(etag(&there), tag);

    // The next page, by cursor, is closed too, and tagged differently.
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = get(&app, &format!("/v1/ticks?cursor={cursor}&limit=10")).await;
    assert_eq!(next.header("cache-control"), CLOSED);
    assert_ne!(etag(&next), tag);
}

fn app_with(store: HistoryStore) -> axum::Router {
    app(state(store))
}

#[tokio::test]
async fn if_none_match_naming_the_answer_is_a_304() {
    let app = app_with(store_with(100).await);
    let uri = format!("/v1/ticks?since={T0}&limit=10");
    let full = get(&app, &uri).await;
    let tag = etag(&full);

    for held in [
        tag.clone(),
        format!("\"other\", {tag}"),
        format!("W/{tag}"),
        "*".to_string(),
    ] {
        let answer = get_with(&app, &uri, &[("if-none-match", &held)]).await;
        assert_eq!(answer.status, StatusCode::NOT_MODIFIED, "{held}");
        assert!(answer.body.is_empty(), "{held}: {}", answer.text());
        assert_eq!(etag(&answer), tag);
        assert_eq!(answer.header("cache-control"), CLOSED);
    }

    // Another tag, or something that is no tag at all, is answered in full.
    let unquoted = tag.trim_matches('"').to_string();
    for held in [
        "\"0000000000000000\"",
        unquoted.as_str(),
        "\"unclosed",
        ",",
        "W/",
    ] {
        let answer = get_with(&app, &uri, &[("if-none-match", held)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{held}");
        assert_eq!(answer.text(), full.text(), "{held}");
        assert_eq!(etag(&answer), tag);
    }

    // A bad request stays a 400, whatever the client holds.
    let bad = get_with(&app, "/v1/ticks?since=garbage", &[("if-none-match", "*")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // The 304s are counted by status like every other answer.
    let metrics = get(&app, "/metrics").await;
    assert!(
        metrics
            .text()
            .contains("pricefeed_history_requests_total{status=\"304\"} 4"),
        "{}",
        metrics.text()
    );
}

/// On the wire: a 304 has the headers and no body at all.
#[tokio::test]
async fn a_304_on_the_wire_has_no_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = app_with(store_with(100).await);
    let uri = format!("/v1/ticks?since={T0}&limit=10");
    let tag = etag(&get(&app, &uri).await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(history_api::serve_router(
        listener,
        app,
        history_api::ServeOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "GET {uri} HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: {tag}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains(&format!("\r\netag: {tag}\r\n")), "{head}");
    assert!(
        head.contains(&format!("\r\ncache-control: {CLOSED}\r\n")),
        "{head}"
    );
    assert_eq!(body, "");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_last_page_is_kept_until_the_next_slot_and_changes_with_it() {
    let store = store_with(100).await;
    let app = app_with(store.clone());
    let uri = format!("/v1/ticks?since={}&limit=50", slot(95));
    let first = get(&app, &uri).await;
    let page = first.json();
    assert_eq!(page["next_cursor"], serde_json::Value::Null);
    assert_eq!(page["latest"], slot(99).to_string());
    short_max_age(&first);
    let tag = etag(&first);

    // Within a slot the bytes are the same, and so is the tag: a 304 for a client holding it.
    let again = get_with(&app, &uri, &[("if-none-match", &tag)]).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    short_max_age(&again);

    store
        .insert_ticks(Currency::ALL.map(|c| tick(c, 100)).to_vec())
        .await
        .unwrap();
    let after = get_with(&app, &uri, &[("if-none-match", &tag)]).await;
    assert_eq!(after.status, StatusCode::OK, "the held answer is stale");
    assert_eq!(after.json()["latest"], slot(100).to_string());
    assert_ne!(etag(&after), tag);
    short_max_age(&after);

    // A page the limit cut that holds a currency's newest tick (USD at slot 100, the next page
    // starting with EUR's) is open: the newest tick is the one a node catching up may replace.
    let edge = get(&app, &format!("/v1/ticks?since={}&limit=3", slot(99))).await;
    assert!(edge.json()["next_cursor"].is_string());
    assert_eq!(edge.json()["latest"], slot(100).to_string());
    short_max_age(&edge);
    // One slot earlier it is closed.
    let before = get(&app, &format!("/v1/ticks?since={}&limit=3", slot(98))).await;
    assert_eq!(before.header("cache-control"), CLOSED);
}

/// EUR's sources are down since slot 50 (no gap recorded yet: the outage is going on). A page that
/// reaches past EUR's newest tick may still gain the EUR gap, so it is not closed even though the
/// limit cut it; a page that ends before is.
#[tokio::test]
async fn a_page_past_a_currencys_newest_tick_is_open() {
    let store = HistoryStore::open_in_memory().unwrap();
    let mut ticks: Vec<_> = (0..100).map(|i| tick(Currency::USD, i)).collect();
    ticks.extend((0..50).map(|i| tick(Currency::EUR, i)));
    store.insert_ticks(ticks).await.unwrap();
    let app = app_with(store.clone());

    let before = get(&app, &format!("/v1/ticks?since={}&limit=10", slot(40))).await;
    assert!(before.json()["next_cursor"].is_string());
    assert_eq!(before.header("cache-control"), CLOSED);

    let uri = format!("/v1/ticks?since={}&limit=10", slot(48));
    let during = get(&app, &uri).await;
    let page = during.json();
    assert_eq!(page["next_cursor"].as_str().unwrap()[..18], {
        let ms = slot(56).unix_millis();
        format!("v1.{ms}.U")
    });
    assert_eq!(page["latest"], slot(99).to_string());
    short_max_age(&during);

    // The outage is recorded once EUR is back: the same page now reports it.
    store
        .record_gap(Gap {
            currency: Currency::EUR,
            from: slot(50),
            until: slot(60),
            reason: GapReason::SourcesUnavailable,
        })
        .await
        .unwrap();
    store.insert_tick(tick(Currency::EUR, 60)).await.unwrap();
    let after = get(&app, &uri).await;
    assert_eq!(after.json()["gaps"][0]["from"], slot(50).to_string());
    assert_ne!(etag(&after), etag(&during));
    assert_eq!(after.header("cache-control"), CLOSED);
}

/// A cluster node still catching up may yet write anywhere in its history: nothing it serves is
/// closed until it has caught up.
#[tokio::test]
async fn nothing_is_closed_on_a_node_catching_up() {
    let (role, watched) = tokio::sync::watch::channel(NodeRole::CatchingUp);
    let app = app(state(store_with(100).await).with_node(1, watched));
    let uri = format!("/v1/ticks?since={T0}&limit=10");
    let catching_up = get(&app, &uri).await;
    assert_eq!(catching_up.json()["latest"], slot(99).to_string());
    short_max_age(&catching_up);

    role.send(NodeRole::Standby).unwrap();
    let caught_up = get(&app, &uri).await;
    assert_eq!(caught_up.header("cache-control"), CLOSED);
    assert_eq!(caught_up.json()["latest"], serde_json::Value::Null);

    // And a closed answer it has kept is not served once it catches up again.
    role.send(NodeRole::CatchingUp).unwrap();
    short_max_age(&get(&app, &uri).await);
}

#[tokio::test]
async fn errors_are_never_kept() {
    let app = app_with(store_with(3).await);
    for uri in ["/v1/ticks?since=garbage", "/v1/ticks", "/nope"] {
        let answer = get(&app, uri).await;
        assert!(answer.status.is_client_error(), "{uri}");
        assert_eq!(answer.header("cache-control"), "no-store", "{uri}");
        assert_eq!(answer.header("etag"), "", "{uri}");
    }
    let broken = store_with(1).await;
    broken
        .tamper_blocking(|conn| conn.execute_batch("DROP TABLE ticks"))
        .unwrap();
    let answer = get(&app_with(broken), &format!("/v1/ticks?since={T0}")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.header("cache-control"), "no-store");
}
