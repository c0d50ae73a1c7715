//! The live page at `/` in headless Chromium, against the built `pricefeed` on a fixture source
//! whose price moves: ticks arrive; across a restart of the server the page's series stays equal
//! to history (no gap history does not have, no tick twice); with the source failing it draws the
//! gap with its reason and warns that the prices are stale. A plain `EventSource` in the same page
//! is checked too: the exact payloads, equal to history, across the restart.
//!
//! Needs Chromium, Node and `tests/browser`'s npm packages (`tests/run.sh` installs them); without
//! them the test fails, unless `PRICEFEED_SKIP_BROWSER_TESTS=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use testkit::{
    Browser, FeedProcess, FixtureServer, Mode, bin_dir, free_port_below_ephemeral, run_command,
};
use ticks::wire::WireTick;
use ticks::{Currency, Gap, GapReason, Interval, Tick, Timedate};

const INTERVAL: &str = "500ms";
const WAIT: Duration = Duration::from_secs(90);

/// A `/v1/ticks` answer, its prices read exactly.
#[derive(Deserialize)]
struct Page {
    ticks: BTreeMap<Currency, Vec<WireTick>>,
    gaps: Vec<Gap>,
    next_cursor: Option<String>,
}

/// What history holds from `since` on: every tick per currency, and the gaps.
struct History {
    ticks: BTreeMap<Currency, Vec<Tick>>,
    gaps: Vec<Gap>,
}

async fn history(http: &str, since: Timedate) -> History {
    let mut out = History {
        ticks: BTreeMap::new(),
        gaps: Vec::new(),
    };
    let mut query = format!("since={since}&limit=1000");
    loop {
        let url = format!("http://{http}/v1/ticks?{query}");
        let (status, body, stderr) = run_command("curl", &["-sS", "--fail", &url], WAIT).await;
        assert!(status.success(), "curl {url}: {stderr}");
        let page: Page = serde_json::from_str(&body).unwrap();
        for (currency, run) in page.ticks {
            out.ticks
                .entry(currency)
                .or_default()
                .extend(run.into_iter().map(|w| Tick {
                    currency,
                    timedate: w.timedate,
                    price: w.price,
                }));
        }
        for gap in page.gaps {
            if !out.gaps.contains(&gap) {
                out.gaps.push(gap);
            }
        }
        match page.next_cursor {
            Some(cursor) => query = format!("cursor={cursor}&limit=1000"),
            None => return out,
        }
    }
}

/// The ticks the page draws, per currency, read as the feed's ticks.
fn series(page: &Value) -> BTreeMap<Currency, Vec<Tick>> {
    Currency::ALL
        .iter()
        .map(|&currency| {
            let ticks = page["series"][currency.code()]
                .as_array()
                .unwrap()
                .iter()
                .map(|point| {
                    Tick::from_message(currency.topic(), point.to_string().as_bytes())
                        .unwrap_or_else(|e| panic!("{point}: {e}"))
                })
                .collect();
            (currency, ticks)
        })
        .collect()
}

/// The gaps the page holds.
fn page_gaps(page: &Value) -> BTreeSet<(Currency, Timedate, Timedate, &'static str)> {
    // Timedate reads from borrowed text, which a Value cannot lend.
    serde_json::from_str::<Vec<Gap>>(&page["gaps"].to_string())
        .unwrap()
        .into_iter()
        .map(|g| (g.currency, g.from, g.until, g.reason.as_str()))
        .collect()
}

/// Each currency's newest drawn tick.
fn newest(page: &Value) -> BTreeMap<Currency, Timedate> {
    series(page)
        .into_iter()
        .filter_map(|(c, ticks)| Some((c, ticks.last()?.timedate)))
        .collect()
}

/// Waits until the page is live and every currency has a tick after `after` (and at least
/// `count` in all).
async fn wait_for_ticks(browser: &mut Browser, after: Timedate, count: usize) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = browser.page().await;
        let drawn = series(&page);
        let fresh = drawn
            .values()
            .all(|ticks| ticks.len() >= count && ticks.last().is_some_and(|t| t.timedate > after));
        if fresh && drawn.len() == Currency::ALL.len() && page["connection"]["state"] == "live" {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no fresh ticks after {after} within {WAIT:?}: {page:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The page draws exactly what history holds over the range it shows: every tick once, in order,
/// each line broken exactly where history has a gap, and that gap shaded with its reason.
async fn assert_page_equals_history(page: &Value, http: &str, interval: Interval) {
    let drawn = series(page);
    let first = drawn.values().map(|t| t[0].timedate).min().unwrap();
    let held = history(http, first).await;
    for (&currency, ticks) in &drawn {
        let (start, end) = (ticks[0].timedate, ticks.last().unwrap().timedate);
        let expected: Vec<Tick> = held.ticks[&currency]
            .iter()
            .filter(|t| t.timedate >= start && t.timedate <= end)
            .copied()
            .collect();
        assert_eq!(
            ticks, &expected,
            "{currency}: the page's series is history's"
        );

        // Where consecutive ticks are not one slot apart, the line breaks, and history recorded
        // a gap over exactly the missing slots, which the chart shades with its reason.
        let chart = &page["charts"][currency.code()];
        let runs = chart["runs"].as_array().unwrap();
        let mut breaks = Vec::new();
        for pair in ticks.windows(2) {
            if pair[1].timedate != pair[0].timedate.next(interval) {
                breaks.push((pair[0].timedate.next(interval), pair[1].timedate));
            }
        }
        assert_eq!(runs.len(), breaks.len() + 1, "{currency}: {chart:#}");
        let counted: u64 = runs.iter().map(|r| r["count"].as_u64().unwrap()).sum();
        assert_eq!(
            counted as usize,
            ticks.len(),
            "{currency}: every tick drawn once"
        );
        for (i, (from, until)) in breaks.iter().enumerate() {
            assert_eq!(
                runs[i + 1]["first"],
                until.to_string(),
                "{currency}: {chart:#}"
            );
            let recorded: Vec<&Gap> = held
                .gaps
                .iter()
                .filter(|g| g.currency == currency && g.from < *until && g.until > *from)
                .collect();
            assert!(
                !recorded.is_empty(),
                "{currency}: no gap recorded over {from}..{until}"
            );
            for gap in recorded {
                let shaded = chart["gaps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|g| g["from"] == gap.from.to_string())
                    .unwrap_or_else(|| panic!("{currency}: {gap:?} is not drawn: {chart:#}"));
                assert_eq!(shaded["until"], gap.until.to_string());
                assert_eq!(shaded["reason"], gap.reason.as_str());
            }
        }
    }
    // The page holds the gaps history holds over the range, each with its final end.
    let last = drawn
        .values()
        .map(|t| t.last().unwrap().timedate)
        .max()
        .unwrap();
    let expected: BTreeSet<_> = held
        .gaps
        .iter()
        .filter(|g| g.until > first && g.from <= last)
        .map(|g| (g.currency, g.from, g.until, g.reason.as_str()))
        .collect();
    assert_eq!(page_gaps(page), expected, "the page's gaps are history's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_the_feed_across_a_restart_and_shows_an_outage() {
    let Some(mut browser) = Browser::start_or_skip().await else {
        return;
    };
    let source = FixtureServer::kraken_walk(7).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    // The same address after the restart: the page reconnects to where it was loaded from.
    let http = format!("127.0.0.1:{}", free_port_below_ephemeral());
    let source_url = format!("kraken={}", source.url());
    let flags = [
        "--interval",
        INTERVAL,
        "--source",
        "kraken",
        "--source-url",
        &source_url,
        "--http-listen",
        &http,
        "--mqtt-listen",
        "127.0.0.1:0",
    ];
    let interval: Interval = INTERVAL.parse().unwrap();
    let feed = FeedProcess::launch_with(&bin_dir(), &db, &flags)
        .await
        .unwrap();
    let base = format!("http://{http}/");

    // The page loads with its headers, and ticks arrive.
    let opened = browser.open(&base, "light").await;
    assert_eq!(opened["status"], 200);
    let csp = opened["headers"]["content-security-policy"]
        .as_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let page = wait_for_ticks(&mut browser, Timedate::now(), 4).await;
    let since = series(&page).values().map(|t| t[0].timedate).min().unwrap();

    // The fourth client of the stream: a plain EventSource in the browser, from `since` on.
    browser
        .probe(&format!("{base}v1/stream?currency=USD,EUR&since={since}"))
        .await;
    let before = *newest(&page).values().max().unwrap();
    wait_for_ticks(&mut browser, before, 8).await;

    // A restart on the same port and the same store: both EventSources reconnect by themselves.
    let stopped = Timedate::now();
    assert!(feed.process.terminate(WAIT).await.success());
    // Down for a few slots, so that the restart leaves a gap for the page to draw.
    tokio::time::sleep(interval.as_duration() * 4).await;
    let feed = FeedProcess::launch_with(&bin_dir(), &db, &flags)
        .await
        .unwrap();
    let page = wait_for_ticks(&mut browser, Timedate::now(), 8).await;
    assert_page_equals_history(&page, &http, interval).await;
    let restart_gaps = page_gaps(&page);
    assert!(
        restart_gaps.iter().any(|&(_, from, _, reason)| reason
            == GapReason::PublisherDown.as_str()
            && from >= stopped),
        "the restart is a publisher_down gap: {restart_gaps:?}"
    );

    // The source fails: the page draws the growing gap with its reason and warns.
    source.set_mode(Mode::Status(503));
    let failed = Timedate::now();
    let deadline = tokio::time::Instant::now() + WAIT;
    let outage = loop {
        let page = browser.page().await;
        let shaded = Currency::ALL.iter().all(|c| {
            page["charts"][c.code()]["gaps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| {
                    g["reason"] == "sources_unavailable"
                        && g["from"].as_str().unwrap().parse::<Timedate>().unwrap() >= failed
                        && g["title"]
                            .as_str()
                            .unwrap()
                            .contains("no price source answered")
                })
        });
        if shaded && page["stale"]["shown"] == true && page["feed"]["state"] == "down" {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no gap, warning and down status within {WAIT:?}: {page:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(outage["stale"]["currencies"], "USD,EUR");
    let warning = outage["stale"]["text"].as_str().unwrap();
    assert!(warning.contains("may be out of date"), "{warning}");
    let listed = outage["gapList"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|l| l.as_str().unwrap().contains("no price source answered")),
        "{listed:?}"
    );

    // It comes back: the warning goes, and the page still equals history, the gap's end included.
    source.set_mode(Mode::Serve);
    let back = Timedate::now();
    let deadline = tokio::time::Instant::now() + WAIT;
    let page = loop {
        let page = wait_for_ticks(&mut browser, back, 8).await;
        if page["stale"]["shown"] == false && page["feed"]["state"] == "live" {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_page_equals_history(&page, &http, interval).await;
    assert!(page_gaps(&page).iter().any(|&(_, from, _, reason)| reason
        == GapReason::SourcesUnavailable.as_str()
        && from >= failed));

    // The plain EventSource got exactly history's payloads, each once, across the restart and
    // the outage.
    let deadline = tokio::time::Instant::now() + WAIT;
    let probe = loop {
        let probe = browser.probe_events().await;
        let events = probe["events"].as_array().unwrap();
        let caught_up = Currency::ALL.iter().all(|c| {
            events
                .iter()
                .rev()
                .find(|e| e["type"] == c.topic())
                .is_some_and(|e| {
                    let tick =
                        Tick::from_message(c.topic(), e["data"].as_str().unwrap().as_bytes());
                    tick.unwrap().timedate > back
                })
        });
        if caught_up {
            break probe;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the EventSource did not follow past {back}: {probe:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        probe["opens"].as_u64().unwrap() >= 2,
        "it reconnected: {probe:#}"
    );
    let held = history(&http, since).await;
    let events = probe["events"].as_array().unwrap();
    for currency in Currency::ALL {
        let topic = currency.topic();
        let got: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == topic)
            .map(|e| e["data"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = held.ticks[&currency]
            .iter()
            .take(got.len())
            .map(Tick::payload)
            .collect();
        assert_eq!(
            got, expected,
            "{currency}: the stream's payloads are history's"
        );
    }

    // No script error and no Content-Security-Policy violation; refused connections while the
    // server restarted are expected.
    let errors: Vec<&Value> = page["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e.as_str().unwrap().contains("net::ERR_CONNECTION_REFUSED"))
        .collect();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    browser.close().await;
    assert!(feed.process.terminate(WAIT).await.success());
}

/// Takes `docs/live-page.png`: the real 5 s interval, a few minutes of a moving fixture price with
/// a half-minute outage of the source. Run by hand when the page changes:
/// `cargo test -p pricefeed-tests --test live_page -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes minutes; run by hand to renew docs/live-page.png"]
async fn screenshot_for_the_docs() {
    let mut browser = Browser::start_or_skip()
        .await
        .expect("a browser to take the screenshot with");
    let source = FixtureServer::kraken_walk(11).await;
    let dir = tempfile::tempdir().unwrap();
    let feed = FeedProcess::kraken(&dir.path().join("feed.db"), &source, "5s").await;
    let minutes = |m: u64| tokio::time::sleep(Duration::from_secs(m * 60));
    minutes(2).await;
    source.set_mode(Mode::Status(503));
    tokio::time::sleep(Duration::from_secs(30)).await;
    source.set_mode(Mode::Serve);
    minutes(2).await;
    browser
        .open(&format!("http://{}/", feed.http), "light")
        .await;
    wait_for_ticks(&mut browser, Timedate::now(), 40).await;
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/live-page.png");
    browser.screenshot(&docs).await;
    browser.close().await;
}
