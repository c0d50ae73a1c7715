//! The slot loop under tokio's paused time: the grid, slow and silent sources, and gaps.
//!
//! Sources here are scripted (see `Sampler`), since real sockets and an auto-advancing paused clock
//! race each other; the real sources over real HTTP are exercised in `feed.rs` and in the
//! price-sources crate.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use history_api::Metrics;
use history_store::HistoryStore;
use price_sources::{Quote, Sample, SourceKind};
use publisher::clock::WallClock;
use publisher::leadership::{Answer, Gate, Leadership};
use publisher::slot_loop::{
    FeedState, FeedStatus, JUMP_REFERENCE_SLOTS, Sampler, SlotLoop, TickSink,
};
use ticks::{Currency, Gap, GapReason, Interval, Tick, Timedate};
use tokio_util::sync::CancellationToken;

fn t(s: &str) -> Timedate {
    s.parse().unwrap()
}

#[derive(Default)]
struct Recorder {
    ticks: Mutex<Vec<Tick>>,
    gaps: Mutex<Vec<Gap>>,
    statuses: Mutex<Vec<FeedStatus>>,
    activations: Mutex<Vec<bool>>,
}

impl TickSink for Recorder {
    fn publish_tick(&self, tick: &Tick) {
        self.ticks.lock().unwrap().push(*tick);
    }
    fn publish_gap(&self, gap: &Gap) {
        self.gaps.lock().unwrap().push(*gap);
    }
    fn publish_status(&self, status: &FeedStatus) {
        self.statuses.lock().unwrap().push(status.clone());
    }
    fn set_active(&self, active: bool) {
        self.activations.lock().unwrap().push(active);
    }
}

/// One slot's behaviour of the scripted source.
#[derive(Clone)]
struct Step {
    /// How long the source takes to answer.
    delay: Duration,
    /// What it answers (nothing = every source failed).
    prices: Vec<(Currency, &'static str)>,
    /// A well-behaved chain gives up at the deadline; a stuck one does not.
    honours_deadline: bool,
}

fn answer(prices: &[(Currency, &'static str)]) -> Step {
    Step {
        delay: Duration::from_millis(150),
        prices: prices.to_vec(),
        honours_deadline: true,
    }
}

struct Scripted {
    clock: WallClock,
    steps: Mutex<VecDeque<Step>>,
    /// The wall-clock time at which each sample started.
    calls: Mutex<Vec<Timedate>>,
    /// What each second opinion answers (none left: no second source answers).
    confirms: Mutex<VecDeque<Option<&'static str>>>,
}

impl Sampler for Scripted {
    async fn sample(&self, wanted: &[Currency], deadline: tokio::time::Instant) -> Sample {
        self.calls.lock().unwrap().push(self.clock.now());
        let step = self
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| answer(&[(Currency::USD, "1"), (Currency::EUR, "1")]));
        let work = tokio::time::sleep(step.delay);
        if step.honours_deadline {
            if tokio::time::timeout_at(deadline, work).await.is_err() {
                return Sample {
                    quotes: vec![],
                    failures: vec![],
                };
            }
        } else {
            work.await;
        }
        Sample {
            quotes: step
                .prices
                .iter()
                .filter(|(c, _)| wanted.contains(c))
                .map(|(c, p)| Quote {
                    currency: *c,
                    price: p.parse().unwrap(),
                    source: SourceKind::Kraken,
                })
                .collect(),
            failures: vec![],
        }
    }

    fn uses_demo(&self) -> bool {
        false
    }

    async fn confirm(
        &self,
        currency: Currency,
        _except: SourceKind,
        _deadline: tokio::time::Instant,
    ) -> Option<Quote> {
        let price = self.confirms.lock().unwrap().pop_front().flatten()?;
        Some(Quote {
            currency,
            price: price.parse().unwrap(),
            source: SourceKind::Coinbase,
        })
    }
}

struct Run {
    store: HistoryStore,
    recorder: Arc<Recorder>,
    calls: Vec<Timedate>,
    metrics: Arc<Metrics>,
}

/// Runs the loop from `start` for `run_for` of (paused) time with the scripted steps.
async fn run(start: &str, run_for: Duration, steps: Vec<Step>, store: HistoryStore) -> Run {
    run_gated(start, run_for, steps, store, None).await
}

/// [`run`] on the given clock.
async fn run_on(clock: WallClock, run_for: Duration, steps: Vec<Step>, store: HistoryStore) -> Run {
    run_clocked(clock, run_for, steps, store, None, None, vec![]).await
}

/// [`run`] as a node of a cluster whose election says what `leads` says.
async fn run_gated(
    start: &str,
    run_for: Duration,
    steps: Vec<Step>,
    store: HistoryStore,
    leads: Option<Arc<Election>>,
) -> Run {
    run_clocked(
        WallClock::anchored(t(start)),
        run_for,
        steps,
        store,
        leads,
        None,
        vec![],
    )
    .await
}

async fn run_clocked(
    clock: WallClock,
    run_for: Duration,
    steps: Vec<Step>,
    store: HistoryStore,
    leads: Option<Arc<Election>>,
    max_move: Option<f64>,
    confirms: Vec<Option<&'static str>>,
) -> Run {
    let shutdown = CancellationToken::new();
    let node = leads.is_some().then_some(2);
    let gate = leads.map(|election| {
        let (_, caught_up) = tokio::sync::watch::channel(true);
        Gate::start(election, caught_up, shutdown.clone())
    });
    let recorder = Arc::new(Recorder::default());
    let metrics = Arc::new(Metrics::new());
    let sampler = Arc::new(Scripted {
        clock: clock.clone(),
        steps: Mutex::new(steps.into()),
        calls: Mutex::new(vec![]),
        confirms: Mutex::new(confirms.into()),
    });
    let slots = SlotLoop {
        interval: Interval::DEFAULT,
        currencies: Currency::ALL.to_vec(),
        chain: SharedSampler(sampler.clone()),
        store: store.clone(),
        sink: recorder.clone(),
        metrics: metrics.clone(),
        clock,
        gate,
        node,
        max_move,
    };
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(run_for).await;
        stop.cancel();
    });
    slots.run(shutdown).await;
    let calls = sampler.calls.lock().unwrap().clone();
    Run {
        store,
        recorder,
        calls,
        metrics,
    }
}

/// An election whose answer the test sets.
#[derive(Default)]
struct Election(std::sync::atomic::AtomicBool);

impl Election {
    fn set(&self, leads: bool) {
        self.0.store(leads, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Leadership for Election {
    fn check(&self) -> Answer<'_, bool> {
        Box::pin(async move { self.0.load(std::sync::atomic::Ordering::SeqCst) })
    }

    fn leader(&self) -> Answer<'_, Option<u64>> {
        Box::pin(async { None })
    }

    fn others_can_take_over(&self) -> Answer<'_, bool> {
        Box::pin(async { true })
    }
}

struct SharedSampler(Arc<Scripted>);

impl Sampler for SharedSampler {
    async fn sample(&self, wanted: &[Currency], deadline: tokio::time::Instant) -> Sample {
        self.0.sample(wanted, deadline).await
    }
    fn uses_demo(&self) -> bool {
        false
    }

    async fn confirm(
        &self,
        currency: Currency,
        except: SourceKind,
        deadline: tokio::time::Instant,
    ) -> Option<Quote> {
        self.0.confirm(currency, except, deadline).await
    }
}

#[tokio::test(start_paused = true)]
async fn ticks_fall_on_the_wall_clock_grid_one_per_slot_per_currency() {
    let store = HistoryStore::open_in_memory().unwrap();
    let r = run(
        "2026-11-24T01:40:02.300Z",
        Duration::from_millis(18_100), // until 01:40:20.400
        vec![
            answer(&[(Currency::USD, "97001.5"), (Currency::EUR, "89000.25")]),
            answer(&[(Currency::USD, "97002"), (Currency::EUR, "89001")]),
            answer(&[(Currency::USD, "97003.10"), (Currency::EUR, "89002")]),
            answer(&[(Currency::USD, "97004"), (Currency::EUR, "89003")]),
        ],
        store,
    )
    .await;
    assert_eq!(
        r.calls,
        vec![
            t("2026-11-24T01:40:05Z"),
            t("2026-11-24T01:40:10Z"),
            t("2026-11-24T01:40:15Z"),
            t("2026-11-24T01:40:20Z")
        ],
        "sampling starts exactly on the grid"
    );
    let lines: Vec<String> = r
        .recorder
        .ticks
        .lock()
        .unwrap()
        .iter()
        .map(Tick::line)
        .collect();
    assert_eq!(
        lines,
        vec![
            r#"btc/USD {"timedate":"2026-11-24T01:40:05Z","price":97001.5}"#,
            r#"btc/EUR {"timedate":"2026-11-24T01:40:05Z","price":89000.25}"#,
            r#"btc/USD {"timedate":"2026-11-24T01:40:10Z","price":97002}"#,
            r#"btc/EUR {"timedate":"2026-11-24T01:40:10Z","price":89001}"#,
            r#"btc/USD {"timedate":"2026-11-24T01:40:15Z","price":97003.1}"#,
            r#"btc/EUR {"timedate":"2026-11-24T01:40:15Z","price":89002}"#,
            r#"btc/USD {"timedate":"2026-11-24T01:40:20Z","price":97004}"#,
            r#"btc/EUR {"timedate":"2026-11-24T01:40:20Z","price":89003}"#,
        ]
    );
    // Every published tick is in the store.
    let stored = r
        .store
        .read(move |s| s.ticks_since(Currency::USD, t("2026-11-24T01:40:00Z"), 100))
        .await
        .unwrap();
    let published_usd: Vec<Tick> = r
        .recorder
        .ticks
        .lock()
        .unwrap()
        .iter()
        .filter(|t| t.currency == Currency::USD)
        .copied()
        .collect();
    assert_eq!(stored, published_usd);
    let statuses = r.recorder.statuses.lock().unwrap();
    assert_eq!(statuses.len(), 1, "a steady feed announces its state once");
    assert_eq!(statuses[0].state, FeedState::Live);
}

#[tokio::test(start_paused = true)]
async fn a_source_slower_than_the_interval_neither_shifts_the_grid_nor_invents_a_price() {
    let store = HistoryStore::open_in_memory().unwrap();
    let slow = Step {
        delay: Duration::from_secs(7),
        prices: vec![(Currency::USD, "1"), (Currency::EUR, "1")],
        honours_deadline: true,
    };
    let r = run(
        "2026-11-24T01:40:04Z",
        Duration::from_millis(20_500), // until 01:40:24.500
        vec![
            answer(&[(Currency::USD, "97001.5"), (Currency::EUR, "89000")]),
            slow.clone(),
            slow,
            // Late within the slot, still on time: the tick is stamped with the slot, not the reply.
            Step {
                delay: Duration::from_millis(3_900),
                ..answer(&[(Currency::USD, "97100"), (Currency::EUR, "89100")])
            },
        ],
        store,
    )
    .await;
    assert_eq!(
        r.calls,
        vec![
            t("2026-11-24T01:40:05Z"),
            t("2026-11-24T01:40:10Z"),
            t("2026-11-24T01:40:15Z"),
            t("2026-11-24T01:40:20Z")
        ]
    );
    let timedates: Vec<String> = r
        .recorder
        .ticks
        .lock()
        .unwrap()
        .iter()
        .map(|t| format!("{} {}", t.currency, t.timedate))
        .collect();
    assert_eq!(
        timedates,
        vec![
            "USD 2026-11-24T01:40:05Z",
            "EUR 2026-11-24T01:40:05Z",
            "USD 2026-11-24T01:40:20Z",
            "EUR 2026-11-24T01:40:20Z"
        ]
    );
    let gaps = r
        .store
        .read(move |s| s.gaps_overlapping(&Currency::ALL, t("2026-11-24T01:40:00Z"), None))
        .await
        .unwrap();
    let expected = |currency| Gap {
        currency,
        from: t("2026-11-24T01:40:10Z"),
        until: t("2026-11-24T01:40:20Z"),
        reason: GapReason::SourcesUnavailable,
    };
    assert_eq!(gaps, vec![expected(Currency::USD), expected(Currency::EUR)]);
    let states: Vec<FeedState> = r
        .recorder
        .statuses
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(
        states,
        vec![FeedState::Live, FeedState::Down, FeedState::Live],
        "outages are announced, and recoveries"
    );
}

#[tokio::test(start_paused = true)]
async fn a_currency_without_a_price_is_a_gap_while_the_other_ticks() {
    let store = HistoryStore::open_in_memory().unwrap();
    let r = run(
        "2026-11-24T01:40:04Z",
        Duration::from_millis(6_500),
        vec![
            answer(&[(Currency::USD, "97001.5")]),
            answer(&[(Currency::USD, "97001.5")]),
        ],
        store,
    )
    .await;
    assert_eq!(r.recorder.ticks.lock().unwrap().len(), 2);
    let gaps = r
        .store
        .read(move |s| s.gaps_overlapping(&[Currency::EUR], t("2026-11-24T01:40:00Z"), None))
        .await
        .unwrap();
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (gaps[0].from, gaps[0].until),
        (t("2026-11-24T01:40:05Z"), t("2026-11-24T01:40:15Z"))
    );
    let statuses = r.recorder.statuses.lock().unwrap();
    assert_eq!(statuses[0].state, FeedState::Degraded);
    assert_eq!(
        statuses[0].missing_since.get(&Currency::EUR),
        Some(&t("2026-11-24T01:40:05Z"))
    );
}

#[tokio::test(start_paused = true)]
async fn falling_behind_records_the_skipped_slots_and_rejoins_the_grid() {
    let store = HistoryStore::open_in_memory().unwrap();
    let stuck = Step {
        delay: Duration::from_millis(12_000),
        prices: vec![],
        honours_deadline: false,
    };
    let r = run(
        "2026-11-24T01:40:04Z",
        Duration::from_millis(16_500),
        vec![stuck],
        store,
    )
    .await;
    assert_eq!(
        r.calls,
        vec![t("2026-11-24T01:40:05Z"), t("2026-11-24T01:40:20Z")]
    );
    let gaps = r
        .store
        .read(move |s| s.gaps_overlapping(&[Currency::USD], t("2026-11-24T01:40:00Z"), None))
        .await
        .unwrap();
    assert_eq!(
        gaps,
        vec![
            Gap {
                currency: Currency::USD,
                from: t("2026-11-24T01:40:05Z"),
                until: t("2026-11-24T01:40:10Z"),
                reason: GapReason::SourcesUnavailable
            },
            Gap {
                currency: Currency::USD,
                from: t("2026-11-24T01:40:10Z"),
                until: t("2026-11-24T01:40:20Z"),
                reason: GapReason::PublisherDown
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn downtime_before_a_restart_is_recorded_as_a_gap() {
    let store = HistoryStore::open_in_memory().unwrap();
    store
        .insert_tick(Tick {
            currency: Currency::USD,
            timedate: t("2026-11-24T01:39:00Z"),
            price: "97000".parse().unwrap(),
        })
        .await
        .unwrap();
    let r = run(
        "2026-11-24T01:40:04Z",
        Duration::from_millis(1_500),
        vec![],
        store,
    )
    .await;
    let gaps = r
        .store
        .read(move |s| s.gaps_overlapping(&Currency::ALL, t("2026-11-24T00:00:00Z"), None))
        .await
        .unwrap();
    assert_eq!(
        gaps,
        vec![Gap {
            currency: Currency::USD,
            from: t("2026-11-24T01:39:05Z"),
            until: t("2026-11-24T01:40:05Z"),
            reason: GapReason::PublisherDown
        }],
        "EUR had no tick before, so no downtime is claimed for it"
    );
}

/// A source outage is published on the gaps topic as it grows: one gap, the same start, a later
/// end each slot, so a subscriber learns of it at once and counts it once.
#[tokio::test(start_paused = true)]
async fn a_growing_outage_is_published_as_one_gap_growing() {
    let store = HistoryStore::open_in_memory().unwrap();
    let r = run(
        "2026-11-24T01:39:59.500Z",
        Duration::from_millis(20_200),
        vec![
            answer(&[(Currency::USD, "1"), (Currency::EUR, "1")]),
            answer(&[]),
            answer(&[]),
            answer(&[]),
            answer(&[(Currency::USD, "1"), (Currency::EUR, "1")]),
        ],
        store,
    )
    .await;
    let usd: Vec<(String, String)> = r
        .recorder
        .gaps
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.currency == Currency::USD)
        .map(|g| (g.from.to_string(), g.until.to_string()))
        .collect();
    let from = "2026-11-24T01:40:05Z".to_string();
    assert_eq!(
        usd,
        vec![
            (from.clone(), "2026-11-24T01:40:10Z".to_string()),
            (from.clone(), "2026-11-24T01:40:15Z".to_string()),
            (from, "2026-11-24T01:40:20Z".to_string()),
        ]
    );
}

/// A standby samples nothing and publishes nothing; when the election chooses it, it records
/// the slots nobody published as a gap (the failover), says so, and publishes from the next slot.
#[tokio::test(start_paused = true)]
async fn a_standby_stays_silent_and_a_takeover_records_the_slots_nobody_published() {
    let store = HistoryStore::open_in_memory().unwrap();
    // The last tick the previous publisher published, which this node recorded.
    store
        .insert_ticks(
            Currency::ALL
                .map(|currency| Tick {
                    currency,
                    timedate: t("2026-11-24T01:39:55Z"),
                    price: "1".parse().unwrap(),
                })
                .to_vec(),
        )
        .await
        .unwrap();
    let election = Arc::new(Election::default());
    let leads = election.clone();
    tokio::spawn(async move {
        // The previous publisher dies at 01:40:01; this node wins at 01:40:11.
        tokio::time::sleep(Duration::from_millis(11_500)).await;
        leads.set(true);
    });
    let r = run_gated(
        "2026-11-24T01:39:59.500Z",
        Duration::from_millis(25_000),
        vec![],
        store,
        Some(election),
    )
    .await;
    let first = t("2026-11-24T01:40:15Z");
    assert!(
        r.calls.iter().all(|&c| c >= first),
        "a standby samples nothing: {:?}",
        r.calls
    );
    assert_eq!(r.calls.first(), Some(&first));
    assert_eq!(*r.recorder.activations.lock().unwrap(), vec![true]);
    let gaps = r
        .store
        .read(|s| s.gaps_overlapping(&Currency::ALL, Timedate::EPOCH, None))
        .await
        .unwrap();
    let expected = |currency| Gap {
        currency,
        from: t("2026-11-24T01:40:00Z"),
        until: first,
        reason: GapReason::PublisherDown,
    };
    assert_eq!(gaps, vec![expected(Currency::USD), expected(Currency::EUR)]);
    assert_eq!(*r.recorder.gaps.lock().unwrap(), gaps, "and published");
    let statuses = r.recorder.statuses.lock().unwrap();
    assert_eq!(
        statuses[0].node,
        Some(2),
        "the status names the publishing node"
    );
    assert_eq!(statuses[0].slot, Some(first));
    let ticks = r.recorder.ticks.lock().unwrap();
    assert!(ticks.iter().all(|t| t.timedate >= first));
    assert_eq!(ticks.len(), 2 * 2, "01:40:15 and 01:40:20, both currencies");
}

/// An election lost while the slot is being sampled wins: nothing is stored or published for it.
#[tokio::test(start_paused = true)]
async fn an_election_lost_while_sampling_publishes_nothing_for_that_slot() {
    let store = HistoryStore::open_in_memory().unwrap();
    let election = Arc::new(Election::default());
    election.set(true);
    let loses = election.clone();
    tokio::spawn(async move {
        // 01:40:05 plus 100 ms: the source of that slot takes 150 ms to answer.
        tokio::time::sleep(Duration::from_millis(7_100)).await;
        loses.set(false);
    });
    // Started early enough to be active (several answers in a row) by 01:40:00.
    let r = run_gated(
        "2026-11-24T01:39:58Z",
        Duration::from_millis(13_500),
        vec![],
        store,
        Some(election),
    )
    .await;
    let slots: Vec<String> = r
        .recorder
        .ticks
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.timedate.to_string())
        .collect();
    assert_eq!(slots, vec!["2026-11-24T01:40:00Z", "2026-11-24T01:40:00Z"]);
    let stored = r
        .store
        .read(|s| s.ticks_since(Currency::USD, Timedate::EPOCH, 100))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "01:40:05 was sampled but not stored");
    assert_eq!(*r.recorder.activations.lock().unwrap(), vec![true, false]);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_cannot_write_publishes_nothing_and_counts_each_failure() {
    let store = HistoryStore::open_in_memory().unwrap();
    store
        .tamper_blocking(|conn| conn.execute_batch("DROP TABLE ticks; DROP TABLE gaps"))
        .unwrap();
    let r = run(
        "2026-11-24T01:40:02.300Z",
        Duration::from_millis(3_000), // one slot, 01:40:05
        vec![answer(&[
            (Currency::USD, "97001.5"),
            (Currency::EUR, "89000.25"),
        ])],
        store,
    )
    .await;
    assert!(
        r.recorder.ticks.lock().unwrap().is_empty(),
        "an unstored tick is not published"
    );
    let text = r.metrics.render();
    // Per currency: the tick, then the gap that would have said why.
    assert!(
        text.lines().any(|l| l == "pricefeed_store_errors_total 4"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "pricefeed_slots_missed_total{currency=\"USD\"} 1")
    );
}

#[tokio::test(start_paused = true)]
async fn a_stepped_wall_clock_never_repeats_or_rewinds_a_slot_and_a_jump_ahead_is_a_gap() {
    let store = HistoryStore::open_in_memory().unwrap();
    let clock = WallClock::anchored(t("2026-11-24T01:40:02.300Z"));
    let steps = {
        let clock = clock.clone();
        tokio::spawn(async move {
            // 01:40:12.3: NTP steps the clock back 12 s, into slots already published; then, at
            // 01:40:23.3 by the clock (8.3 s later), a VM resume steps it 31 s ahead.
            tokio::time::sleep(Duration::from_secs(10)).await;
            clock.step(-12_000);
            tokio::time::sleep(Duration::from_millis(11_000)).await;
            clock.step(31_000);
        })
    };
    let r = run_on(clock, Duration::from_secs(40), vec![], store).await;
    steps.await.unwrap();
    let ticks = r.recorder.ticks.lock().unwrap().clone();
    // Each slot's price was asked for while the wall clock read that slot: not early (a clock
    // stepped back), not after it (a clock stepped ahead).
    let usd: Vec<Timedate> = ticks
        .iter()
        .filter(|t| t.currency == Currency::USD)
        .map(|t| t.timedate)
        .collect();
    assert_eq!(
        usd.len(),
        r.calls.len(),
        "a tick per sample: {usd:?} {:?}",
        r.calls
    );
    for (slot, asked) in usd.iter().zip(&r.calls) {
        assert!(
            *asked >= *slot && *asked < slot.next(Interval::DEFAULT),
            "the tick of {slot} was sampled at {asked}"
        );
    }
    for currency in Currency::ALL {
        let times: Vec<Timedate> = ticks
            .iter()
            .filter(|t| t.currency == currency)
            .map(|t| t.timedate)
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] < w[1]),
            "{currency}: every timedate newer than the one before, one per slot: {times:?}"
        );
        let gaps: Vec<Gap> = r
            .recorder
            .gaps
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.currency == currency)
            .copied()
            .collect();
        assert_eq!(gaps.len(), 1, "{currency}: the jump ahead, once: {gaps:?}");
        let gap = gaps[0];
        assert_eq!(gap.reason, GapReason::PublisherDown);
        assert!(
            gap.until.unix_millis() - gap.from.unix_millis() >= 25_000,
            "the slots jumped over are a gap: {gap:?}"
        );
        assert!(
            times.iter().all(|t| *t < gap.from || *t >= gap.until),
            "nothing fills the gap: {times:?} {gap:?}"
        );
        let stored: Vec<Timedate> = r
            .store
            .read(move |s| s.ticks_since(currency, Timedate::EPOCH, 1000))
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.timedate)
            .collect();
        assert_eq!(stored, times, "{currency}: stored as published");
    }
}

#[tokio::test(start_paused = true)]
async fn a_price_that_jumps_is_published_only_if_a_second_source_confirms_it() {
    let store = HistoryStore::open_in_memory().unwrap();
    let both = |usd: &'static str| answer(&[(Currency::USD, usd), (Currency::EUR, "89000")]);
    let r = run_clocked(
        WallClock::anchored(t("2026-11-24T01:40:02.300Z")),
        Duration::from_millis(23_000), // slots 05, 10, 15, 20, 25
        vec![
            both("97000"),
            // -48% in one slot: no second source answers, so a gap, not a tick.
            both("50000"),
            // Back to normal: published (the reference is still 97000).
            both("97100"),
            // -20%, and a second source says 77,800: confirmed, published.
            both("77700"),
            // +25% from 77,700, and the second source disagrees (77,750): a gap.
            both("97200"),
        ],
        store.clone(),
        None,
        Some(0.1),
        vec![Some("77800"), Some("77750")],
    )
    .await;
    let usd: Vec<(String, String)> = r
        .recorder
        .ticks
        .lock()
        .unwrap()
        .iter()
        .filter(|t| t.currency == Currency::USD)
        .map(|t| (t.timedate.to_string(), t.price.to_string()))
        .collect();
    assert_eq!(
        usd,
        vec![
            ("2026-11-24T01:40:05Z".into(), "97000".into()),
            ("2026-11-24T01:40:15Z".into(), "97100".into()),
            ("2026-11-24T01:40:20Z".into(), "77700".into()),
        ]
    );
    let gaps: Vec<(String, GapReason)> = r
        .recorder
        .gaps
        .lock()
        .unwrap()
        .iter()
        .map(|g| (g.from.to_string(), g.reason))
        .collect();
    assert_eq!(
        gaps,
        vec![
            ("2026-11-24T01:40:10Z".into(), GapReason::PriceUnconfirmed),
            ("2026-11-24T01:40:25Z".into(), GapReason::PriceUnconfirmed),
        ]
    );
    let text = r.metrics.render();
    assert!(
        text.lines()
            .any(|l| l
                == "pricefeed_source_errors_total{source=\"kraken\",kind=\"unconfirmed_jump\"} 2"),
        "{text}"
    );
    // EUR never moved: every slot published.
    assert_eq!(
        r.recorder
            .ticks
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.currency == Currency::EUR)
            .count(),
        5
    );
}

#[tokio::test(start_paused = true)]
async fn a_move_seen_by_a_single_source_is_published_once_the_last_tick_is_old() {
    // A real crash with one source: the jump is held back for the reference window, then, with
    // the last tick too old to judge against, published.
    let store = HistoryStore::open_in_memory().unwrap();
    let mut steps = vec![answer(&[
        (Currency::USD, "97000"),
        (Currency::EUR, "89000"),
    ])];
    for _ in 0..15 {
        steps.push(answer(&[
            (Currency::USD, "60000"),
            (Currency::EUR, "89000"),
        ]));
    }
    let r = run_clocked(
        WallClock::anchored(t("2026-11-24T01:40:02.300Z")),
        Duration::from_millis(78_000), // 16 slots
        steps,
        store,
        None,
        Some(0.1),
        vec![],
    )
    .await;
    let usd: Vec<String> = r
        .recorder
        .ticks
        .lock()
        .unwrap()
        .iter()
        .filter(|t| t.currency == Currency::USD)
        .map(|t| t.price.to_string())
        .collect();
    assert_eq!(usd[0], "97000");
    assert!(
        usd.len() >= 2 && usd[1..].iter().all(|p| p == "60000"),
        "published after the window: {usd:?}"
    );
    let held = 16 - usd.len();
    assert_eq!(
        held as i64, JUMP_REFERENCE_SLOTS,
        "held back for the window: {usd:?}"
    );
}
