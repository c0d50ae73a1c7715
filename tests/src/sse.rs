//! Server-Sent Events as `curl -N` receives them: [`SseReader`] reads a stream's events from a
//! `curl` process; [`curl_history`] asks `/v1/ticks` for what the events must equal.

use std::collections::BTreeMap;
use std::time::Duration;

use ticks::wire::WireTick;
use ticks::{Currency, Tick, Timedate};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

use crate::process::{Process, run_command, which};

/// One event: its type (`message` when the stream named none), data and id (the stream's last
/// id, as a browser keeps it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// `curl -sN` on a stream, its events read as they come.
pub struct SseReader {
    pub process: Process,
    lines: Lines<BufReader<ChildStdout>>,
    last_id: Option<String>,
    /// `retry:` values seen.
    pub retry: Vec<String>,
    /// Comment lines seen (heartbeats).
    pub comments: usize,
}

impl SseReader {
    /// Runs `curl -sN url` with more curl arguments (`-H`, `--cacert`, …).
    pub fn start(url: &str, curl_args: &[&str]) -> SseReader {
        let mut args = vec!["-sN", "--fail", url];
        args.extend_from_slice(curl_args);
        let mut process = Process::start(&which("curl").expect("curl"), &args).unwrap();
        let stdout = process.child.stdout.take().unwrap();
        SseReader {
            process,
            lines: BufReader::new(stdout).lines(),
            last_id: None,
            retry: Vec::new(),
            comments: 0,
        }
    }

    /// The next event, or `None` when the stream ended; panics after `within` with nothing.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let mut event = None;
        let mut data: Option<String> = None;
        loop {
            let line = tokio::time::timeout(within, self.lines.next_line())
                .await
                .expect("an SSE line in time")
                .expect("reading curl's output")?;
            if line.is_empty() {
                if let Some(data) = data.take() {
                    return Some(SseEvent {
                        event: event.take().unwrap_or_else(|| "message".into()),
                        data,
                        id: self.last_id.clone(),
                    });
                }
                event = None;
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "event" => event = Some(value),
                "data" => {
                    data = Some(match data.take() {
                        Some(before) => format!("{before}\n{value}"),
                        None => value,
                    })
                }
                "id" => self.last_id = Some(value),
                "retry" => self.retry.push(value),
                other => panic!("an unknown SSE field {other:?} in {line:?}"),
            }
        }
    }

    /// The id of the last event received.
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }
}

/// The tick an event carries, if it is a tick event; panics if its data is not the exact
/// payload of that tick.
pub fn tick_of(event: &SseEvent) -> Option<Tick> {
    let currency = Currency::from_topic(&event.event)?;
    let tick = Tick::from_message(currency.topic(), event.data.as_bytes())
        .unwrap_or_else(|e| panic!("{event:?}: {e}"));
    assert_eq!(tick.payload(), event.data, "not the exact payload");
    Some(tick)
}

/// Every tick `/v1/ticks` holds from `since`, per currency, paging with the cursor (`curl`).
pub async fn curl_history(http: &str, since: Timedate) -> BTreeMap<Currency, Vec<Tick>> {
    curl_history_paged(http, since, 200).await
}

/// [`curl_history`] in pages of at most `limit` ticks: small pages make a short history cross
/// several cursors.
pub async fn curl_history_paged(
    http: &str,
    since: Timedate,
    limit: usize,
) -> BTreeMap<Currency, Vec<Tick>> {
    #[derive(serde::Deserialize)]
    struct Page {
        ticks: BTreeMap<Currency, Vec<WireTick>>,
        next_cursor: Option<String>,
    }
    let mut out: BTreeMap<Currency, Vec<Tick>> = BTreeMap::new();
    let mut query = format!("since={since}&limit={limit}");
    loop {
        let url = format!("http://{http}/v1/ticks?{query}");
        let (status, body, stderr) =
            run_command("curl", &["-sS", "--fail", &url], Duration::from_secs(30)).await;
        assert!(status.success(), "curl {url}: {stderr}");
        let page: Page = serde_json::from_str(&body).unwrap();
        for (currency, run) in page.ticks {
            out.entry(currency)
                .or_default()
                .extend(run.into_iter().map(|w| Tick {
                    currency,
                    timedate: w.timedate,
                    price: w.price,
                }));
        }
        match page.next_cursor {
            Some(cursor) => query = format!("cursor={cursor}&limit={limit}"),
            None => return out,
        }
    }
}
