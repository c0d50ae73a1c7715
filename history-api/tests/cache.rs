//! Answers are cached against the store's version: a repeated question is served from memory, and
//! a tick committed by another process is in the very next answer.

mod common;

use common::{T0, request, slot, state, tick};
use history_api::app;
use history_store::HistoryStore;
use ticks::Currency;

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
    let state = state(served);
    let metrics = state.metrics.clone();
    let app = app(state);
    let uri = format!("/v1/ticks?since={T0}&currency=USD");

    let first = request(&app, "GET", &uri).await;
    assert_eq!(answers_from(&metrics, "cache"), 0);
    let again = request(&app, "GET", &uri).await;
    assert_eq!(
        first.text(),
        again.text(),
        "same question, same store: same answer"
    );
    assert_eq!(
        answers_from(&metrics, "cache"),
        1,
        "the repeated question was answered from the cache"
    );
    assert_eq!(first.raw_ticks(Currency::USD).len(), 3);

    publisher.insert_tick(tick(Currency::USD, 3)).await.unwrap();
    let after = request(&app, "GET", &uri).await;
    assert_eq!(
        answers_from(&metrics, "cache"),
        1,
        "a commit retires the cached answer"
    );
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

/// How many answers came from `source` (`cache`, `memory`, `store`), per `/metrics`.
fn answers_from(metrics: &history_api::Metrics, source: &str) -> u64 {
    let prefix = format!("pricefeed_history_answers_total{{source=\"{source}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn the_tail_in_memory_follows_commits_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.db");
    let served = HistoryStore::open(&path).unwrap();
    let publisher = HistoryStore::open(&path).unwrap();
    publisher
        .insert_ticks(
            (0..20)
                .flat_map(|i| Currency::ALL.map(|c| tick(c, i)))
                .collect(),
        )
        .await
        .unwrap();
    let state = state(served);
    let metrics = state.metrics.clone();
    let app = app(state);
    // A different `since` each time, so the answer cache never serves: what is measured is the
    // tail, which the first question starts reading in the background.
    let mut asked = 0;
    let mut ask = |app: &axum::Router| {
        asked += 1;
        let uri = format!("/v1/ticks?since={}", slot(asked % 10));
        let app = app.clone();
        async move { (request(&app, "GET", &uri).await, asked % 10) }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while answers_from(&metrics, "memory") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tail was never used"
        );
        let (answer, from) = ask(&app).await;
        assert_eq!(answer.raw_ticks(Currency::USD).len(), 20 - from as usize);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        answers_from(&metrics, "store") >= 1,
        "the first answer came from SQLite"
    );

    // Another process commits: the copy in memory is stale, and the next answer must not use it.
    publisher
        .insert_tick(tick(Currency::EUR, 20))
        .await
        .unwrap();
    let memory_before = answers_from(&metrics, "memory");
    let (answer, from) = ask(&app).await;
    let eur = answer.raw_ticks(Currency::EUR);
    assert_eq!(eur.len(), 21 - from as usize, "{}", answer.text());
    assert_eq!(eur.last().unwrap(), &tick(Currency::EUR, 20).payload());
    assert_eq!(answer.json()["latest"], slot(20).to_string());
    assert_eq!(answers_from(&metrics, "memory"), memory_before);

    // Once refreshed, the tail serves again, with the new tick.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while answers_from(&metrics, "memory") == memory_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the tail was never refreshed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let (answer, from) = ask(&app).await;
        assert_eq!(answer.raw_ticks(Currency::EUR).len(), 21 - from as usize);
    }
}

/// Questions about the past before the tail are answered from blocks of ticks held in memory,
/// exactly; when another process rewrites that past, the next answers have the change.
#[tokio::test]
async fn older_ticks_come_from_blocks_and_follow_a_rewrite_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.db");
    let served = HistoryStore::open(&path).unwrap();
    let publisher = HistoryStore::open(&path).unwrap();
    // More than the tail holds (20,000 per currency), so the first hours are older than it.
    let slots = 25_000;
    publisher
        .insert_ticks(
            (0..slots)
                .flat_map(|i| Currency::ALL.map(|c| tick(c, i)))
                .collect(),
        )
        .await
        .unwrap();
    let state = state(served);
    let metrics = state.metrics.clone();
    let app = app(state);
    // Distinct questions (50 starts from `first` on), so the answer cache never serves; each
    // must be exact.
    let mut asked = 0;
    let mut ask = |app: &axum::Router, first: i64| {
        asked += 1;
        let from = first + asked % 50;
        let uri = format!("/v1/ticks?since={}&limit=300", slot(from));
        let app = app.clone();
        async move { (request(&app, "GET", &uri).await, from) }
    };
    let expect = |answer: &common::Answer, from: i64, changed: Option<(i64, &str)>| {
        let usd = answer.raw_ticks(Currency::USD);
        let eur = answer.raw_ticks(Currency::EUR);
        assert_eq!((usd.len(), eur.len()), (150, 150), "{}", answer.text());
        for (i, (u, e)) in usd.iter().zip(&eur).enumerate() {
            let i = from + i as i64;
            match changed {
                Some((at, price)) if at == i => {
                    assert_eq!(
                        u,
                        &format!(r#"{{"timedate":"{}","price":{price}}}"#, slot(i))
                    );
                }
                _ => assert_eq!(u, &tick(Currency::USD, i).payload()),
            }
            assert_eq!(e, &tick(Currency::EUR, i).payload());
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while answers_from(&metrics, "blocks") < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "blocks never answered"
        );
        let (answer, from) = ask(&app, 100).await;
        expect(&answer, from, None);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // Another process rewrites a stretch of that past (as a node filling from a peer would).
    // Inside every page asked from now on.
    let rewritten = 260;
    let mut changed = tick(Currency::USD, rewritten);
    changed.price = "1.5".parse().unwrap();
    publisher
        .fill(history_store::Stretch {
            currency: Currency::USD,
            from: slot(rewritten),
            until: slot(rewritten + 1),
            ticks: vec![changed],
            gaps: Vec::new(),
        })
        .await
        .unwrap();
    let blocks_before = answers_from(&metrics, "blocks");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while answers_from(&metrics, "blocks") < blocks_before + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "blocks never answered again"
        );
        let (answer, from) = ask(&app, 200).await;
        expect(&answer, from, Some((rewritten, "1.5")));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
