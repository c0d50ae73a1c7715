//! `GET /v1/stream` as users meet it: `curl -N` on the `pricefeed` binary, the Kraken fixture as
//! the source. What the stream sends is checked against `/v1/ticks`; a restart of the server is
//! bridged with `Last-Event-ID` as a browser's `EventSource` does it.

use std::collections::BTreeMap;
use std::time::Duration;

use testkit::sse::{SseEvent, SseReader, curl_history, tick_of};
use testkit::{
    FeedProcess, FixtureServer, HistoryProcess, Mode, free_port_below_ephemeral, run_command,
};
use ticks::{Currency, Tick, Timedate};

const WAIT: Duration = Duration::from_secs(40);

/// Reads events until `done` says so, keeping them all.
async fn read_until(
    reader: &mut SseReader,
    events: &mut Vec<SseEvent>,
    mut done: impl FnMut(&[SseEvent]) -> bool,
) {
    while !done(events) {
        let event = reader.next(WAIT).await.expect("the stream goes on");
        events.push(event);
    }
}

fn ticks_in(events: &[SseEvent]) -> Vec<Tick> {
    events.iter().filter_map(tick_of).collect()
}

fn by_currency(ticks: &[Tick]) -> BTreeMap<Currency, Vec<Tick>> {
    let mut out: BTreeMap<Currency, Vec<Tick>> = BTreeMap::new();
    for tick in ticks {
        out.entry(tick.currency).or_default().push(*tick);
    }
    out
}

/// A raw request's status line, headers and body, with curl (`-i`).
async fn curl_i(args: &[&str]) -> String {
    let mut all = vec!["-sS", "-i", "--max-time", "20"];
    all.extend_from_slice(args);
    let (_, out, stderr) = run_command("curl", &all, WAIT).await;
    assert!(!out.is_empty(), "curl {args:?}: {stderr}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_exact_ticks_and_resumes_across_a_restart_with_last_event_id() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let url = format!("kraken={}", kraken.url());
    // A fixed port: the client comes back to the restarted server where it left the first.
    let listen = format!("127.0.0.1:{}", free_port_below_ephemeral());
    let flags = [
        "--interval",
        "1s",
        "--source",
        "kraken",
        "--source-url",
        &url,
        "--mqtt-listen",
        "127.0.0.1:0",
        "--http-listen",
        &listen,
    ];
    let feed = FeedProcess::launch_with(&testkit::bin_dir(), &db, &flags)
        .await
        .unwrap();
    let http = feed.http.to_string();
    // Start from a stored tick, so the stream backfills before it turns live.
    let since = loop {
        let stored = curl_history(&http, Timedate::from_unix_millis(0).unwrap()).await;
        if let Some(run) = stored.get(&Currency::USD).filter(|r| r.len() >= 2) {
            break run[0].timedate;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stream_url = format!("http://{http}/v1/stream?since={since}");

    let mut first = SseReader::start(&stream_url, &[]);
    let mut events = Vec::new();
    read_until(&mut first, &mut events, |e| {
        e.iter().any(|e| e.event == "live")
            && e.iter().any(|e| e.event == "status")
            && ticks_in(e).len() >= 8
    })
    .await;
    assert_eq!(
        first.retry,
        ["1000"],
        "the stream says how soon to reconnect"
    );
    let live = events.iter().position(|e| e.event == "live").unwrap();
    assert!(
        ticks_in(&events[..live]).len() >= 4,
        "the ticks before `live` are the backfill: {events:?}"
    );
    let status = events.iter().find(|e| e.event == "status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status.data).unwrap();
    assert_eq!(status["interval"], "1s", "{status}");
    assert!(
        events.iter().all(|e| e.event != "end"),
        "no end before the server stops: {events:?}"
    );

    // The server stops: the stream says so in an `end` event, then ends.
    assert!(feed.process.terminate(WAIT).await.success());
    while let Some(event) = first.next(WAIT).await {
        events.push(event);
    }
    let end = events.last().unwrap();
    assert_eq!(end.event, "end", "{events:?}");
    let end: serde_json::Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(end["reason"], "shutting_down", "{end}");
    let position = first.last_id().expect("tick events carry ids").to_string();
    let before = ticks_in(&events);
    let last_usd = before
        .iter()
        .rev()
        .find(|t| t.currency == Currency::USD)
        .unwrap();
    assert!(
        position.contains(&format!("USD={}", last_usd.timedate)),
        "the id is the position after the last USD tick: {position}"
    );

    // The server comes back; the source fails for a while, then answers again.
    let feed = FeedProcess::launch_with(&testkit::bin_dir(), &db, &flags)
        .await
        .unwrap();
    kraken.set_mode(Mode::Status(503));
    let resume = format!("Last-Event-ID: {position}");
    let mut second = SseReader::start(&stream_url, &["-H", &resume]);
    let mut resumed = Vec::new();
    read_until(&mut second, &mut resumed, |e| {
        e.iter().any(|e| e.event == "gap")
            && e.iter()
                .any(|e| e.event == "status" && !e.data.contains(r#""state":"live""#))
    })
    .await;
    kraken.set_mode(Mode::Serve);
    let ticks_before_recovery = ticks_in(&resumed).len();
    read_until(&mut second, &mut resumed, |e| {
        ticks_in(e).len() >= ticks_before_recovery + 4
    })
    .await;
    second.process.child.kill().await.unwrap();

    let gap = resumed.iter().find(|e| e.event == "gap").unwrap();
    let gap: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert!(
        gap["reason"].is_string() && gap["from"].is_string(),
        "{gap}"
    );

    // Both streams together: every tick history holds from `since` to the last one received,
    // once each, in order, each event carrying the tick's exact payload.
    let mut all = before;
    all.extend(ticks_in(&resumed));
    let got = by_currency(&all);
    let history = curl_history(&feed.http.to_string(), since).await;
    for (currency, ticks) in &got {
        let last = ticks.last().unwrap().timedate;
        let held: Vec<Tick> = history[currency]
            .iter()
            .filter(|t| t.timedate <= last)
            .copied()
            .collect();
        assert_eq!(ticks, &held, "{currency}: the streams against history");
        assert_eq!(ticks[0].timedate, since);
    }
    assert!(feed.process.terminate(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_cap_bad_input_cors_and_a_server_without_a_feed() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let url = format!("kraken={}", kraken.url());
    let feed = FeedProcess::start(
        &db,
        &[
            "--interval",
            "1s",
            "--source",
            "kraken",
            "--source-url",
            &url,
            "--sse-max-streams",
            "1",
            "--sse-heartbeat",
            "200ms",
            "--cors-origin",
            "https://app.example",
        ],
    )
    .await;
    let http = feed.http.to_string();
    let stream_url = format!("http://{http}/v1/stream?currency=EUR");

    // One stream open, with heartbeats while nothing else comes.
    let mut open = SseReader::start(&stream_url, &[]);
    let mut events = Vec::new();
    read_until(&mut open, &mut events, |e| ticks_in(e).len() >= 2).await;
    assert!(
        ticks_in(&events)
            .iter()
            .all(|t| t.currency == Currency::EUR),
        "only the currency asked for: {events:?}"
    );
    assert!(open.comments > 0, "heartbeat comment lines");
    let metrics = curl_i(&[&format!("http://{http}/metrics")]).await;
    assert!(
        metrics.contains("\npricefeed_history_streams 1\n"),
        "{metrics}"
    );

    // The next one is refused while it stays open.
    let refused = curl_i(&[&stream_url]).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_lowercase().contains("\nretry-after: "),
        "{refused}"
    );
    assert!(
        refused.contains(r#""error":"too_many_streams""#),
        "{refused}"
    );
    let metrics = curl_i(&[&format!("http://{http}/metrics")]).await;
    assert!(
        metrics.contains("\npricefeed_history_streams_refused_total 1\n"),
        "{metrics}"
    );
    open.process.child.kill().await.unwrap();
    drop(open);

    // Bad input is a 400 naming what is wrong (and takes no stream).
    for (args, parameter) in [
        (
            vec![format!("http://{http}/v1/stream?since=yesterday")],
            "since",
        ),
        (
            vec![format!("http://{http}/v1/stream?currency=GBP")],
            "currency",
        ),
        (vec![format!("http://{http}/v1/stream?limit=5")], "limit"),
        (
            vec![
                format!("http://{http}/v1/stream"),
                "-H".into(),
                "Last-Event-ID: USD=noon".into(),
            ],
            "Last-Event-ID",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let answer = curl_i(&args).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{args:?}: {answer}");
        assert!(
            answer.contains(&format!(r#""parameter":"{parameter}""#)),
            "{args:?}: {answer}"
        );
    }

    // CORS: the allowed origin may read answers and send the stream's and the cache's headers;
    // another origin is not told it may.
    let ticks_url = format!("http://{http}/v1/ticks?since=0");
    let allowed = curl_i(&["-H", "Origin: https://app.example", &ticks_url]).await;
    assert!(
        allowed
            .to_lowercase()
            .contains("\naccess-control-allow-origin: https://app.example"),
        "{allowed}"
    );
    let other = curl_i(&["-H", "Origin: https://other.example", &ticks_url]).await;
    assert!(
        !other.to_lowercase().contains("access-control-allow-origin"),
        "{other}"
    );
    let preflight = curl_i(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example",
        "-H",
        "Access-Control-Request-Method: GET",
        "-H",
        "Access-Control-Request-Headers: last-event-id",
        &stream_url,
    ])
    .await;
    let preflight = preflight.to_lowercase();
    assert!(preflight.starts_with("http/1.1 200"), "{preflight}");
    assert!(
        preflight.contains("access-control-allow-headers: ") && preflight.contains("last-event-id"),
        "{preflight}"
    );
    assert!(feed.process.terminate(WAIT).await.success());

    // A standalone history-api without --broker follows no feed: it says so.
    let history = HistoryProcess::start(&db, &[]).await;
    let answer = curl_i(&[&format!("http://{}/v1/stream", history.addr)]).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains(r#""error":"stream_unavailable""#),
        "{answer}"
    );
}
