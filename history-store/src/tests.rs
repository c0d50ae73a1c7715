use rusqlite::Connection;
use ticks::{Currency, Gap, GapReason, Interval, Tick, Timedate};

use super::*;

fn tick(currency: Currency, t: &str, price: &str) -> Tick {
    Tick {
        currency,
        timedate: t.parse().unwrap(),
        price: price.parse().unwrap(),
    }
}

fn at(t: &str) -> Timedate {
    t.parse().unwrap()
}

async fn gaps(store: &HistoryStore, currencies: &[Currency], from: Timedate) -> Vec<Gap> {
    let currencies = currencies.to_vec();
    store
        .read(move |s| s.gaps_overlapping(&currencies, from, None))
        .await
        .unwrap()
}

#[tokio::test]
async fn ticks_come_back_exactly_oldest_first_from_an_inclusive_since() {
    let store = HistoryStore::open_in_memory().unwrap();
    let usd = [
        tick(Currency::USD, "2026-11-24T01:40:10Z", "97001.5"),
        tick(Currency::USD, "2026-11-24T01:40:00Z", "97000"),
        tick(Currency::USD, "2026-11-24T01:40:05Z", "97000.25"),
    ];
    assert_eq!(store.insert_ticks(usd.to_vec()).await.unwrap(), 3);
    store
        .insert_tick(tick(Currency::EUR, "2026-11-24T01:40:05Z", "89000.1"))
        .await
        .unwrap();

    let (got, limited, eur, bounds) = store
        .read(|s| {
            Ok((
                s.ticks_since(Currency::USD, at("2026-11-24T01:40:05Z"), 10)?,
                s.ticks_since(Currency::USD, at("2026-11-24T01:40:00Z"), 2)?,
                s.ticks_since(Currency::EUR, at("2026-11-24T00:00:00Z"), 10)?,
                s.bounds(Currency::USD)?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(got, vec![usd[2], usd[0]]);
    assert_eq!(limited, vec![usd[1], usd[2]]);
    assert_eq!(eur[0].price.to_string(), "89000.1");
    assert_eq!(bounds, Some((usd[1], usd[0])));
    assert_eq!(store.latest(Currency::EUR).await.unwrap(), Some(eur[0]));
    assert_eq!(store.read(|s| s.tick_count()).await.unwrap(), 4);
}

#[tokio::test]
async fn the_first_tick_of_a_slot_wins() {
    let store = HistoryStore::open_in_memory().unwrap();
    let first = tick(Currency::USD, "2026-11-24T01:40:00Z", "1");
    assert!(store.insert_tick(first).await.unwrap());
    assert!(
        !store
            .insert_tick(tick(Currency::USD, "2026-11-24T01:40:00Z", "2"))
            .await
            .unwrap()
    );
    assert_eq!(store.latest(Currency::USD).await.unwrap(), Some(first));
}

/// The bulk insert takes an iterator (the benchmark streams a year of ticks through it) and
/// counts only what was new.
#[tokio::test]
async fn a_bulk_insert_streams_ticks_and_counts_the_new_ones() {
    let store = HistoryStore::open_in_memory().unwrap();
    let t0 = at("2026-11-24T00:00:00Z");
    let ticks = (0..10_000i64).flat_map(|i| {
        let timedate = Timedate::from_unix_millis(t0.unix_millis() + i * 5000).unwrap();
        Currency::ALL.map(|currency| Tick {
            currency,
            timedate,
            price: ticks::Price::from_parts(6_000_000 + i as u64, 2).unwrap(),
        })
    });
    assert_eq!(store.insert_ticks_blocking(ticks.clone()).unwrap(), 20_000);
    assert_eq!(store.insert_ticks_blocking(ticks.take(10)).unwrap(), 0);
    let (count, newest) = store
        .read(|s| Ok((s.tick_count()?, s.newest(Currency::EUR)?)))
        .await
        .unwrap();
    assert_eq!(count, 20_000);
    let newest = newest.unwrap();
    assert_eq!(newest.timedate.to_string(), "2026-11-24T13:53:15Z");
    assert_eq!(newest.price.to_string(), "60099.99");
}

#[tokio::test]
async fn consecutive_missing_slots_form_one_gap() {
    let store = HistoryStore::open_in_memory().unwrap();
    let i = Interval::DEFAULT;
    let t0 = at("2026-11-24T01:40:00Z");
    let mut slot = t0;
    for _ in 0..3 {
        store
            .record_missing_slot(Currency::USD, slot, i, GapReason::SourcesUnavailable)
            .await
            .unwrap();
        slot = slot.next(i);
    }
    // A different reason right after starts a new gap.
    store
        .record_missing_slot(Currency::USD, slot, i, GapReason::StoreUnavailable)
        .await
        .unwrap();
    assert_eq!(
        gaps(&store, &Currency::ALL, t0).await,
        vec![
            Gap {
                currency: Currency::USD,
                from: t0,
                until: at("2026-11-24T01:40:15Z"),
                reason: GapReason::SourcesUnavailable,
            },
            Gap {
                currency: Currency::USD,
                from: at("2026-11-24T01:40:15Z"),
                until: at("2026-11-24T01:40:20Z"),
                reason: GapReason::StoreUnavailable,
            }
        ]
    );
    // Overlap is half-open: a query starting where a gap ends does not see it.
    assert!(
        gaps(&store, &[Currency::USD], at("2026-11-24T01:40:20Z"))
            .await
            .is_empty()
    );
    assert!(gaps(&store, &[Currency::EUR], t0).await.is_empty());
}

/// A gap recorded between two of the same reason joins them into one, and a later one that
/// reaches back over several is one gap too.
#[tokio::test]
async fn gaps_of_one_reason_that_touch_become_one() {
    let store = HistoryStore::open_in_memory().unwrap();
    let gap = |from: &str, until: &str, reason| Gap {
        currency: Currency::EUR,
        from: at(from),
        until: at(until),
        reason,
    };
    use GapReason::{PublisherDown, SourcesUnavailable};
    for g in [
        gap(
            "2026-11-24T00:00:00Z",
            "2026-11-24T00:00:05Z",
            PublisherDown,
        ),
        gap(
            "2026-11-24T00:00:10Z",
            "2026-11-24T00:00:15Z",
            PublisherDown,
        ),
        gap(
            "2026-11-24T00:00:20Z",
            "2026-11-24T00:00:25Z",
            PublisherDown,
        ),
        gap(
            "2026-11-24T00:00:30Z",
            "2026-11-24T00:00:35Z",
            SourcesUnavailable,
        ),
    ] {
        store.record_gap(g).await.unwrap();
    }
    // The answer is the gap as it now stands, reaching over the ones it joined.
    let recorded = store
        .record_gap(gap(
            "2026-11-24T00:00:05Z",
            "2026-11-24T00:00:10Z",
            PublisherDown,
        ))
        .await
        .unwrap();
    assert_eq!(
        recorded,
        Some(gap(
            "2026-11-24T00:00:00Z",
            "2026-11-24T00:00:15Z",
            PublisherDown
        ))
    );
    let t0 = at("2026-11-24T00:00:00Z");
    assert_eq!(
        gaps(&store, &[Currency::EUR], t0).await,
        vec![
            gap(
                "2026-11-24T00:00:00Z",
                "2026-11-24T00:00:15Z",
                PublisherDown
            ),
            gap(
                "2026-11-24T00:00:20Z",
                "2026-11-24T00:00:25Z",
                PublisherDown
            ),
            gap(
                "2026-11-24T00:00:30Z",
                "2026-11-24T00:00:35Z",
                SourcesUnavailable
            ),
        ]
    );
    let recorded = store
        .record_gap(gap(
            "2026-11-24T00:00:12Z",
            "2026-11-24T00:00:21Z",
            PublisherDown,
        ))
        .await
        .unwrap();
    assert_eq!(
        recorded,
        Some(gap(
            "2026-11-24T00:00:00Z",
            "2026-11-24T00:00:25Z",
            PublisherDown
        ))
    );
    assert_eq!(
        gaps(&store, &[Currency::EUR], t0).await,
        vec![
            gap(
                "2026-11-24T00:00:00Z",
                "2026-11-24T00:00:25Z",
                PublisherDown
            ),
            gap(
                "2026-11-24T00:00:30Z",
                "2026-11-24T00:00:35Z",
                SourcesUnavailable
            ),
        ]
    );
}

/// What a node that was away does when it comes back: its own `publisher_down` gap over the time
/// it missed is replaced by a peer's ticks and gaps for that stretch, and what lies outside the
/// stretch is untouched.
#[tokio::test]
async fn a_stretch_from_a_peer_replaces_ours_and_shrinks_our_gap() {
    let ours = HistoryStore::open_in_memory().unwrap();
    let peer = HistoryStore::open_in_memory().unwrap();
    let usd = |t: &str, p: &str| tick(Currency::USD, t, p);
    let gap = |from: &str, until: &str, reason| Gap {
        currency: Currency::USD,
        from: at(from),
        until: at(until),
        reason,
    };
    // Both saw 00:00; we were down from 00:05 to 00:40 and recorded that at start-up. We also
    // hold a tick for 00:20 that we stored but never published before we died: the peer's
    // history, which the feed published, wins.
    for store in [&ours, &peer] {
        store
            .insert_tick(usd("2026-11-24T00:00:00Z", "1"))
            .await
            .unwrap();
    }
    ours.insert_tick(usd("2026-11-24T00:00:20Z", "99"))
        .await
        .unwrap();
    ours.record_gap(gap(
        "2026-11-24T00:00:05Z",
        "2026-11-24T00:00:40Z",
        GapReason::PublisherDown,
    ))
    .await
    .unwrap();
    // The peer published 00:05 to 00:15, had no source for 00:20 and 00:25, then 00:30 on.
    let peer_ticks = vec![
        usd("2026-11-24T00:00:05Z", "2"),
        usd("2026-11-24T00:00:10Z", "3"),
        usd("2026-11-24T00:00:15Z", "4"),
        usd("2026-11-24T00:00:30Z", "5"),
        usd("2026-11-24T00:00:35Z", "6"),
    ];
    let outage = gap(
        "2026-11-24T00:00:20Z",
        "2026-11-24T00:00:30Z",
        GapReason::SourcesUnavailable,
    );
    peer.insert_ticks(peer_ticks.clone()).await.unwrap();
    peer.record_gap(outage).await.unwrap();

    // We fill only up to 00:30: the rest of our gap must stay.
    let stretch = Stretch {
        currency: Currency::USD,
        from: at("2026-11-24T00:00:05Z"),
        until: at("2026-11-24T00:00:30Z"),
        ticks: peer_ticks[..3].to_vec(),
        gaps: vec![outage],
    };
    assert_eq!(ours.fill(stretch.clone()).await.unwrap(), 3);
    let t0 = at("2026-11-24T00:00:00Z");
    assert_eq!(
        gaps(&ours, &[Currency::USD], t0).await,
        vec![
            outage,
            gap(
                "2026-11-24T00:00:30Z",
                "2026-11-24T00:00:40Z",
                GapReason::PublisherDown
            )
        ]
    );
    assert!(
        ours.read(move |s| s.ticks_since(Currency::USD, t0, 100))
            .await
            .unwrap()
            .iter()
            .all(|t| t.price.to_string() != "99"),
        "the tick the feed never published is gone"
    );
    // Filling again changes nothing.
    assert_eq!(ours.fill(stretch).await.unwrap(), 0);

    // The rest of the stretch: now both stores hold the same history.
    ours.fill(Stretch {
        currency: Currency::USD,
        from: at("2026-11-24T00:00:30Z"),
        until: at("2026-11-24T00:00:40Z"),
        ticks: peer_ticks[3..].to_vec(),
        gaps: vec![],
    })
    .await
    .unwrap();
    let everything = move |s: &Snapshot<'_>| {
        Ok((
            s.ticks_since(Currency::USD, t0, 100)?,
            s.gaps_overlapping(&[Currency::USD], t0, None)?,
        ))
    };
    assert_eq!(
        ours.read(everything).await.unwrap(),
        peer.read(everything).await.unwrap()
    );
}

#[tokio::test]
async fn a_stretch_with_a_stray_tick_or_gap_writes_nothing() {
    let store = HistoryStore::open_in_memory().unwrap();
    let from = at("2026-11-24T00:00:05Z");
    let until = at("2026-11-24T00:00:15Z");
    store
        .record_gap(Gap {
            currency: Currency::USD,
            from,
            until,
            reason: GapReason::PublisherDown,
        })
        .await
        .unwrap();
    let stray = [
        tick(Currency::USD, "2026-11-24T00:00:15Z", "1"),
        tick(Currency::USD, "2026-11-24T00:00:00Z", "1"),
        tick(Currency::EUR, "2026-11-24T00:00:05Z", "1"),
    ];
    for stray in stray {
        let err = store
            .fill(Stretch {
                currency: Currency::USD,
                from,
                until,
                ticks: vec![tick(Currency::USD, "2026-11-24T00:00:05Z", "1"), stray],
                gaps: vec![],
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    }
    let err = store
        .fill(Stretch {
            currency: Currency::USD,
            from,
            until,
            ticks: vec![],
            gaps: vec![Gap {
                currency: Currency::EUR,
                from,
                until,
                reason: GapReason::SourcesUnavailable,
            }],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert_eq!(store.read(|s| s.tick_count()).await.unwrap(), 0);
    assert_eq!(gaps(&store, &[Currency::USD], from).await.len(), 1);
}

#[tokio::test]
async fn a_file_store_reopens_with_its_data_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.db");
    let t = tick(Currency::EUR, "2026-11-24T01:40:00Z", "89000.1");
    {
        let store = HistoryStore::open(&path).unwrap();
        store.insert_tick(t).await.unwrap();
    }
    let store = HistoryStore::open(&path).unwrap();
    assert_eq!(store.latest(Currency::EUR).await.unwrap(), Some(t));
    let mode: String = Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn the_version_changes_with_every_commit_from_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.db");
    let reader = HistoryStore::open(&path).unwrap();
    let writer = HistoryStore::open(&path).unwrap();
    let v0 = reader.version().unwrap();
    assert_eq!(reader.version().unwrap(), v0, "no commit, no change");
    writer
        .insert_tick(tick(Currency::USD, "2026-11-24T01:40:00Z", "1"))
        .await
        .unwrap();
    let v1 = reader.version().unwrap();
    assert_ne!(v1, v0, "another handle's commit is seen");
    reader
        .insert_tick(tick(Currency::USD, "2026-11-24T01:40:05Z", "1"))
        .await
        .unwrap();
    assert_ne!(reader.version().unwrap(), v1, "our own commit is seen");
    let memory = HistoryStore::open_in_memory().unwrap();
    let m0 = memory.version().unwrap();
    memory
        .insert_tick(tick(Currency::USD, "2026-11-24T01:40:00Z", "1"))
        .await
        .unwrap();
    assert_ne!(memory.version().unwrap(), m0);
}

#[tokio::test]
async fn feed_info_round_trips() {
    let store = HistoryStore::open_in_memory().unwrap();
    assert_eq!(store.feed_info().await.unwrap(), None);
    let info = FeedInfo {
        interval: "250ms".parse().unwrap(),
        demo: true,
    };
    store.set_feed_info(info).await.unwrap();
    assert_eq!(store.feed_info().await.unwrap(), Some(info));
}

#[tokio::test]
async fn a_newer_schema_is_refused_not_mangled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.db");
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(
        HistoryStore::open(&path),
        Err(StoreError::TooNew {
            found: 99,
            known: 2
        })
    ));
}

#[tokio::test]
async fn a_full_disk_is_a_clear_error_and_keeps_what_was_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.db");
    let store = HistoryStore::open(&path).unwrap();
    let first = tick(Currency::USD, "2026-11-24T00:00:00Z", "1");
    store.insert_tick(first).await.unwrap();
    // Cap the file at its current size: SQLite then fails writes exactly as on a full disk.
    store
        .tamper_blocking(|conn| {
            let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
            conn.pragma_update(None, "max_page_count", pages)
        })
        .unwrap();
    let mut err = None;
    for i in 1..10_000 {
        let t = Timedate::from_unix_millis(first.timedate.unix_millis() + i * 5000).unwrap();
        if let Err(e) = store
            .insert_tick(Tick {
                timedate: t,
                ..first
            })
            .await
        {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("the capped store must fill up");
    assert!(matches!(err, StoreError::DiskFull(_)), "{err:?}");
    assert_eq!(err.to_string(), "the disk holding the store is full");
    drop(store);
    let reopened = HistoryStore::open(&path).unwrap();
    assert_eq!(
        reopened
            .read(|s| s.bounds(Currency::USD))
            .await
            .unwrap()
            .unwrap()
            .0,
        first
    );
}

#[tokio::test]
async fn unreadable_rows_are_reported_not_served() {
    let store = HistoryStore::open_in_memory().unwrap();
    store
        .tamper_blocking(|conn| conn.execute("INSERT INTO ticks VALUES (840, 0, 'NaN')", []))
        .unwrap();
    let err = store
        .read(|s| s.ticks_since(Currency::USD, Timedate::EPOCH, 10))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}
