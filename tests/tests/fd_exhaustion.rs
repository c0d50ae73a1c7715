//! Out of file descriptors: `pricefeed` under a low `ulimit -n`, flooded with idle connections
//! on both of its listeners until it can accept no more, keeps sampling and storing ticks, and
//! serves MQTT and HTTP again once the flood goes away.

use std::time::{Duration, Instant};

use history_store::HistoryStore;
use testkit::{FeedProcess, FixtureServer};
use ticks::{Currency, Timedate};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Enough for the process to start and run (about 40 in use when idle), far too few for the flood.
const NOFILE: u64 = 128;
/// Connections the flood opens: well over what the limit leaves for clients.
const FLOOD: usize = 400;

/// Ticks of USD stored from `since` on, read from the store file.
async fn stored_since(store: &HistoryStore, since: Timedate) -> usize {
    store
        .read(move |s| s.ticks_since(Currency::USD, since, 1_000_000))
        .await
        .unwrap()
        .len()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// An MQTT 3.1.1 CONNECT (keep-alive 60 s), so the broker holds the connection as a client.
fn connect_packet(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// One HTTP/1.0 GET with a 3 s deadline: the status and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::AsyncReadExt;
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_it_keeps_storing_and_serves_again_when_they_free() {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let url = format!("kraken={}", kraken.url());
    let mut feed = FeedProcess::start_with_nofile(
        &db,
        NOFILE,
        &[
            "--interval",
            "1s",
            "--source",
            "kraken",
            "--source-url",
            &url,
        ],
    )
    .await;
    let store = HistoryStore::open(&db).unwrap();
    let before = Timedate::now();
    // Running as it would be when a flood comes: sampling, with its source connection open.
    let started = Instant::now();
    while stored_since(&store, before).await < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no ticks stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The flood: idle connections on both listeners, the MQTT ones as connected clients.
    let mut flood = Vec::new();
    let mut stalled = 0;
    for i in 0..FLOOD {
        let target = if i % 2 == 0 { feed.mqtt } else { feed.http };
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(target)).await
        else {
            // The listen backlogs are full too: the flood has done what it can.
            stalled += 1;
            if stalled == 4 {
                break;
            }
            continue;
        };
        if i % 2 == 0 {
            let _ = stream
                .write_all(&connect_packet(&format!("flood-{i}")))
                .await;
        }
        flood.push(stream);
    }
    // Let the process accept until it cannot, and run like that for a while.
    let mut exhausted = 0;
    let flooded = Timedate::now();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        exhausted = exhausted.max(open_fds(feed.process.pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        exhausted as u64 >= NOFILE - 4,
        "the flood did not use up the descriptors ({exhausted} of {NOFILE} open): the test proves nothing"
    );
    assert!(feed.process.is_running(), "{:?}", feed.process.log());
    let during = stored_since(&store, flooded).await;
    assert!(
        during >= 3,
        "{during} ticks stored in the 5 s out of descriptors, at one a second; log: {:?}",
        feed.process.log()
    );

    // The flood goes away: both listeners serve again.
    drop(flood);
    let mut served = false;
    let mut answered = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) && !(served && answered.is_some()) {
        if !served {
            let mut out = tokio::process::Command::new("mosquitto_sub");
            out.args([
                "-h",
                "127.0.0.1",
                "-p",
                &feed.mqtt.port().to_string(),
                "-t",
                "btc/USD",
                "-C",
                "1",
                "-W",
                "3",
            ]);
            if let Ok(out) = out.output().await {
                served = out.status.success() && !out.stdout.is_empty();
            }
        }
        if answered.is_none() {
            let since = before.to_string();
            let (status, body) =
                http_get(feed.http, &format!("/v1/ticks?currency=USD&since={since}"))
                    .await
                    .unwrap_or((0, String::new()));
            if status == 200 {
                answered = Some(body);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served, "no tick over MQTT after the flood went away");
    let body = answered.expect("no history answer after the flood went away");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = page["ticks"]["USD"].as_array().unwrap().len();
    assert!(
        listed >= stored_since(&store, before).await.min(during),
        "history lists {listed} ticks"
    );
    feed.process.stop(Duration::from_secs(10)).await;
}
