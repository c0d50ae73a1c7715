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

async fn rewrites(store: &HistoryStore) -> u64 {
    store.read(|s| s.changes()).await.unwrap().rewrites
}

/// While nothing is committed the version is told from the WAL-index header without asking
/// SQLite; every commit of another program is seen, also after checkpoints that empty the WAL and
/// commits that start it over.
#[tokio::test]
async fn the_version_follows_another_programs_commits_through_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.db");
    let store = HistoryStore::open(&path).unwrap();
    let (header_read, _) = store.connections.watching().unwrap();
    assert!(header_read, "in WAL mode the header is read");
    let other = Connection::open(&path).unwrap();
    let mut seen = vec![store.version().unwrap()];
    for i in 0..60i64 {
        let checkpoint = [
            "",
            "PRAGMA wal_checkpoint(TRUNCATE)",
            "PRAGMA wal_checkpoint(RESTART)",
        ];
        other.execute_batch(checkpoint[i as usize % 3]).unwrap();
        let settled = store.version().unwrap();
        let (_, asked) = store.connections.watching().unwrap();
        for _ in 0..50 {
            assert_eq!(store.version().unwrap(), settled, "no commit, no change");
        }
        assert_eq!(
            store.connections.watching().unwrap().1,
            asked,
            "with the header unchanged, SQLite is not asked"
        );
        other
            .execute(
                "INSERT INTO ticks VALUES (840, ?1, '97000')",
                [1_795_484_400_000 + 5_000 * i],
            )
            .unwrap();
        let version = store.version().unwrap();
        assert!(!seen.contains(&version), "commit {i} is seen");
        seen.push(version);
    }
}

async fn gap_writes(store: &HistoryStore) -> u64 {
    store.read(|s| s.changes()).await.unwrap().gap_writes
}

/// A store written before the change count existed (schema version 2, exactly as that version
/// created it) gains the count when opened, keeps its ticks and version number, and a second open
/// of the up-to-date file writes nothing.
#[tokio::test]
async fn an_older_store_gains_the_change_count_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.db");
    {
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE ticks (
                 currency INTEGER NOT NULL,
                 ts       INTEGER NOT NULL,
                 price    TEXT    NOT NULL,
                 PRIMARY KEY (currency, ts)
             ) WITHOUT ROWID;
             CREATE TABLE gaps (
                 currency INTEGER NOT NULL,
                 start_ts INTEGER NOT NULL,
                 end_ts   INTEGER NOT NULL,
                 reason   TEXT    NOT NULL,
                 PRIMARY KEY (currency, start_ts)
             ) WITHOUT ROWID;
             CREATE TABLE feed_info (
                 key   TEXT PRIMARY KEY,
                 value TEXT NOT NULL
             ) WITHOUT ROWID;
             PRAGMA user_version = 2;
             INSERT INTO ticks VALUES (840, 1795484400000, '97001.5'), (840, 1795484405000, '97002');",
        )
        .unwrap();
    }
    let store = HistoryStore::open(&path).unwrap();
    assert_eq!(rewrites(&store).await, 0);
    let usd = store
        .read(|s| s.ticks_since(Currency::USD, Timedate::EPOCH, 10))
        .await
        .unwrap();
    assert_eq!(usd.len(), 2);
    assert_eq!(usd[1].price.to_string(), "97002");
    let user_version: i64 = Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(
        user_version, 2,
        "no numbered migration: older binaries still open it"
    );

    // The triggers count from now on, for this store and for any other program writing the file.
    store
        .insert_tick(tick(Currency::USD, "2026-11-24T01:40:10Z", "97003"))
        .await
        .unwrap();
    assert_eq!(rewrites(&store).await, 0, "an append is not a rewrite");
    Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO ticks VALUES (840, 1795484395000, '97000')", [])
        .unwrap();
    assert_eq!(
        rewrites(&store).await,
        1,
        "another program stored an older tick"
    );

    let before = store.version().unwrap();
    let again = HistoryStore::open(&path).unwrap();
    assert_eq!(
        store.version().unwrap(),
        before,
        "opening an up-to-date file commits nothing"
    );
    assert_eq!(rewrites(&again).await, 1);
}

/// Only appends at each currency's newest tick leave the count alone; every other change to the
/// ticks, through the store or around it, moves it.
#[tokio::test]
async fn the_change_count_moves_for_everything_but_appends() {
    let store = HistoryStore::open_in_memory().unwrap();
    let usd = |t: &str, p: &str| tick(Currency::USD, t, p);
    let eur = |t: &str, p: &str| tick(Currency::EUR, t, p);
    store
        .insert_ticks(vec![
            usd("2026-11-24T00:00:00Z", "1"),
            usd("2026-11-24T00:00:10Z", "2"),
        ])
        .await
        .unwrap();
    // EUR's first tick is older than USD's newest: still an append for EUR.
    store
        .insert_tick(eur("2026-11-24T00:00:05Z", "3"))
        .await
        .unwrap();
    // A replayed tick is ignored, not stored.
    store
        .insert_tick(usd("2026-11-24T00:00:10Z", "9"))
        .await
        .unwrap();
    store
        .record_gap(Gap {
            currency: Currency::USD,
            from: at("2026-11-24T00:00:15Z"),
            until: at("2026-11-24T00:00:25Z"),
            reason: GapReason::SourcesUnavailable,
        })
        .await
        .unwrap();
    assert_eq!(rewrites(&store).await, 0);
    assert_eq!(gap_writes(&store).await, 1, "a gap recorded");

    store
        .insert_tick(usd("2026-11-24T00:00:05Z", "4"))
        .await
        .unwrap();
    assert_eq!(
        rewrites(&store).await,
        1,
        "a tick stored before a newer one"
    );
    store
        .tamper_blocking(|c| c.execute("UPDATE ticks SET price = '5' WHERE price = '4'", []))
        .unwrap();
    assert_eq!(rewrites(&store).await, 2, "a changed tick");
    store
        .tamper_blocking(|c| c.execute("DELETE FROM ticks WHERE price = '5'", []))
        .unwrap();
    assert_eq!(rewrites(&store).await, 3, "a deleted tick");
    // A catch-up from a peer replaces our newest tick with the peer's.
    store
        .fill(Stretch {
            currency: Currency::USD,
            from: at("2026-11-24T00:00:10Z"),
            until: at("2026-11-24T00:00:20Z"),
            ticks: vec![
                usd("2026-11-24T00:00:10Z", "2.5"),
                usd("2026-11-24T00:00:15Z", "6"),
            ],
            gaps: Vec::new(),
        })
        .await
        .unwrap();
    assert!(
        rewrites(&store).await > 3,
        "a stretch filled over our newest tick"
    );
    assert!(gap_writes(&store).await > 1, "the stretch cut our gap");
    let filled = gap_writes(&store).await;
    // A gap growing, as it does every slot of an outage.
    store
        .record_gap(Gap {
            currency: Currency::USD,
            from: at("2026-11-24T00:00:25Z"),
            until: at("2026-11-24T00:00:30Z"),
            reason: GapReason::SourcesUnavailable,
        })
        .await
        .unwrap();
    assert!(gap_writes(&store).await > filled, "a gap grown");
    let grown = gap_writes(&store).await;
    store
        .tamper_blocking(|c| c.execute("DELETE FROM gaps", []))
        .unwrap();
    assert!(gap_writes(&store).await > grown, "a gap deleted");
}

/// A store of both currencies with holes, prices of every printed shape, and two rows written
/// by another program: one price not in its printed form, which reads as its printed form.
async fn store_for_wire_reads() -> HistoryStore {
    let store = HistoryStore::open_in_memory().unwrap();
    let prices = ["97001.5", "1", "0.005", "60000", "123456.78"];
    let mut ticks = Vec::new();
    for slot in 0..300i64 {
        let t = Timedate::from_unix_millis(1_795_484_400_000 + slot * 5000).unwrap();
        for (k, currency) in Currency::ALL.into_iter().enumerate() {
            if (slot + k as i64) % 7 != 3 && !(100..140).contains(&(slot + 30 * k as i64)) {
                ticks.push(Tick {
                    currency,
                    timedate: t,
                    price: prices[(slot as usize + k) % prices.len()].parse().unwrap(),
                });
            }
        }
    }
    store.insert_ticks(ticks).await.unwrap();
    store
        .tamper_blocking(|c| {
            c.execute(
                "UPDATE ticks SET price = '97001.50' WHERE currency = 840 AND ts = ?1",
                [1_795_484_400_000i64],
            )
        })
        .unwrap();
    store
}

fn joined(ticks: &[Tick]) -> String {
    ticks
        .iter()
        .map(Tick::payload)
        .collect::<Vec<_>>()
        .join(",")
}

fn run_text(wire: &WireTicks) -> String {
    String::from_utf8(wire.run(0, wire.len()).to_vec()).unwrap()
}

/// The reads into wire bytes return, byte for byte, the payloads of the ticks the decoding reads
/// return: from any start, with any limit or end, the newest ones, and merged across currencies.
#[tokio::test]
async fn wire_reads_are_the_payloads_of_the_tick_reads() {
    let store = store_for_wire_reads().await;
    store
        .read(|s| {
            let base = 1_795_484_400_000i64;
            let mut merged_cases = 0;
            for offset in (-5000..1_600_000).step_by(2500) {
                let from = Timedate::from_unix_millis(base + offset).unwrap();
                for limit in [0, 1, 2, 7, 150, 1000] {
                    for currency in Currency::ALL {
                        let ticks = s.ticks_since(currency, from, limit)?;
                        let wire = s.wire_ticks(currency, from, None, limit)?;
                        assert_eq!(run_text(&wire), joined(&ticks));
                        let times: Vec<Timedate> = ticks.iter().map(|t| t.timedate).collect();
                        assert_eq!(wire.times(), times.as_slice());
                        let until = Timedate::from_unix_millis(base + offset + 60_000).unwrap();
                        let bounded: Vec<Tick> = ticks
                            .iter()
                            .filter(|t| t.timedate < until)
                            .copied()
                            .collect();
                        let wire = s.wire_ticks(currency, from, Some(until), limit)?;
                        assert_eq!(run_text(&wire), joined(&bounded));
                        let newest = s.newest_ticks(currency, limit)?;
                        assert_eq!(
                            run_text(&s.newest_wire_ticks(currency, limit)?),
                            joined(&newest)
                        );
                        let all_since = s.ticks_since(currency, from, usize::MAX)?;
                        let newest_since = &all_since[all_since.len().saturating_sub(limit)..];
                        let wire = s.newest_wire_ticks_since(currency, from, limit)?;
                        assert_eq!(run_text(&wire), joined(newest_since));
                    }
                    // USD from `from`, EUR from a little later: the merge takes the first
                    // `limit` by time, USD first at equal times.
                    let later = Timedate::from_unix_millis(base + offset + 7500).unwrap();
                    let starts = [(Currency::USD, from), (Currency::EUR, later)];
                    let lists = [
                        s.ticks_since(Currency::USD, from, limit)?,
                        s.ticks_since(Currency::EUR, later, limit)?,
                    ];
                    let mut expected = [Vec::new(), Vec::new()];
                    let mut taken = [0, 0];
                    for _ in 0..limit {
                        let next = (0..2)
                            .filter_map(|i| lists[i].get(taken[i]).map(|t| (t.timedate, i)))
                            .min();
                        let Some((_, i)) = next else { break };
                        expected[i].push(lists[i][taken[i]]);
                        taken[i] += 1;
                    }
                    let merged = s.merged_wire_ticks(&starts, limit)?;
                    for i in 0..2 {
                        assert_eq!(
                            run_text(&merged[i]),
                            joined(&expected[i]),
                            "{offset} {limit}"
                        );
                    }
                    let one = s.merged_wire_ticks(&starts[1..], limit)?;
                    assert_eq!(run_text(&one[0]), joined(&lists[1]));
                    merged_cases += usize::from(!expected[0].is_empty() && !expected[1].is_empty());
                }
            }
            assert!(merged_cases > 1000, "{merged_cases}");
            // The row another program wrote reads in its printed form.
            let first = s.wire_ticks(Currency::USD, Timedate::EPOCH, None, 1)?;
            assert!(
                run_text(&first).ends_with(r#""price":97001.5}"#),
                "{}",
                run_text(&first)
            );
            Ok(())
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn unreadable_rows_are_reported_by_the_wire_reads_too() {
    let store = HistoryStore::open_in_memory().unwrap();
    store
        .tamper_blocking(|conn| conn.execute("INSERT INTO ticks VALUES (840, 0, 'NaN')", []))
        .unwrap();
    store
        .tamper_blocking(|conn| conn.execute("INSERT INTO ticks VALUES (978, -5, '1')", []))
        .unwrap();
    let errors = store
        .read(|s| {
            Ok([
                s.wire_ticks(Currency::USD, Timedate::EPOCH, None, 10).err(),
                s.newest_wire_ticks(Currency::USD, 10).err(),
                s.newest_wire_ticks(Currency::EUR, 10).err(),
                s.merged_wire_ticks(&[(Currency::USD, Timedate::EPOCH)], 10)
                    .err(),
            ])
        })
        .await
        .unwrap();
    for error in errors {
        assert!(matches!(error, Some(StoreError::Corrupt(_))), "{error:?}");
    }
}
