//! Answers are cached against the store's version: a repeated question is served from memory, and
//! a tick committed by another process is in the very next answer.

mod common;

use common::{T0, request, slot, state, tick};
use history_api::app;
use ticks::{Currency, HistoryStore};

#[tokio::test]
async fn a_commit_from_another_process_is_in_the_next_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.db");
    // The server's handle, and a second one standing for the publisher process.
    let served = HistoryStore::open(&path).unwrap();
    let publisher = HistoryStore::open(&path).unwrap();
    publisher
        .insert_ticks((0..3).map(|i| tick(Currency::USD, i)).collect())
        .await
        .unwrap();
    let app = app(state(served));
    let uri = format!("/v1/ticks?since={T0}&currency=USD");

    let first = request(&app, "GET", &uri).await;
    let again = request(&app, "GET", &uri).await;
    assert_eq!(
        first.text(),
        again.text(),
        "same question, same store: same answer"
    );
    assert_eq!(first.raw_ticks(Currency::USD).len(), 3);

    publisher.insert_tick(tick(Currency::USD, 3)).await.unwrap();
    let after = request(&app, "GET", &uri).await;
    let ticks = after.raw_ticks(Currency::USD);
    assert_eq!(
        ticks.len(),
        4,
        "the new tick is served at once: {}",
        after.text()
    );
    assert_eq!(ticks[3], tick(Currency::USD, 3).payload());
    assert_eq!(after.json()["latest"], slot(3).to_string());

    // A gap recorded without a tick changes the answer too.
    publisher
        .record_gap(ticks::Gap {
            currency: Currency::USD,
            from: slot(4),
            until: slot(6),
            reason: ticks::GapReason::SourcesUnavailable,
        })
        .await
        .unwrap();
    let with_gap = request(&app, "GET", &uri).await;
    assert_eq!(with_gap.json()["gaps"].as_array().unwrap().len(), 1);
}
