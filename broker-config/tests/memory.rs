//! What one idle subscriber costs the embedded broker in memory: a regression guard for the
//! patched rmqtt-net (`patches/rmqtt-net`: small connection buffers) and the memory changes of the
//! patched rmqtt (`patches/rmqtt`: a smaller connection task, an empty inflight window that holds
//! nothing). rmqtt is pinned exactly, and an upgrade that brings either registry crate back fails
//! here. The broker runs in this process, so the growth of this
//! process's resident memory while the subscribers connect is the broker's: the clients are plain
//! blocking sockets, which hold no memory in the process.
//!
//! This is its own test binary, so no other test's allocations share the measurement.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use broker_config::{Credentials, EmbeddedBroker};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// Idle subscribers connected for the measurement (fewer if the descriptor limit is lower).
const SUBSCRIBERS: u64 = 2_000;

/// Resident memory one subscriber may add. With both patches: about 7.5 KB (the connection task's
/// state, the session and its queues); without the memory changes of `patches/rmqtt` about 10.4
/// KB; with rmqtt-net's own 8 KiB buffers about 18 KB.
const MAX_KB_PER_SUBSCRIBER: f64 = 9.0;

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Raises this process's descriptor limit as far as allowed; how many subscribers fit.
fn subscribers_that_fit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    // Each subscriber is two descriptors here: the client's socket and the broker's.
    SUBSCRIBERS.min(soft.saturating_sub(200) / 2)
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut out = vec![first, body.len() as u8];
    out.extend_from_slice(body);
    out
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// An MQTT 3.1.1 subscriber to `btc/#` at QoS 1, as a display is: connected, subscribed, and
/// the retained tick received and acknowledged.
fn subscribe(broker: SocketAddr, i: u64) -> TcpStream {
    let mut stream = TcpStream::connect(broker).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut connect = Vec::new();
    string(b"MQTT", &mut connect);
    connect.extend_from_slice(&[4, 0x02, 0x04, 0xB0]); // 3.1.1, clean session, keep-alive 1200 s
    string(format!("memory-{i}").as_bytes(), &mut connect);
    stream.write_all(&packet(0x10, &connect)).unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    let mut sub = vec![0, 1];
    string(broker_config::TICKS_FILTER.as_bytes(), &mut sub);
    sub.push(1);
    stream.write_all(&packet(0x82, &sub)).unwrap();
    // SUBACK (5 bytes) and the retained tick (QoS 1), in either order.
    let (mut suback, mut retained) = (false, false);
    while !(suback && retained) {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).unwrap();
        assert!(head[1] < 128, "a short packet");
        let mut body = vec![0u8; head[1] as usize];
        stream.read_exact(&mut body).unwrap();
        match head[0] & 0xF0 {
            0x90 => {
                assert_eq!(body, [0, 1, 1], "SUBACK granting QoS 1");
                suback = true;
            }
            0x30 => {
                let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
                let id = &body[2 + topic_len..4 + topic_len];
                stream.write_all(&packet(0x40, id)).unwrap();
                retained = true;
            }
            other => panic!("unexpected packet type {other:#x}"),
        }
    }
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_idle_subscriber_costs_the_embedded_broker_under_13_kb() {
    let n = subscribers_that_fit();
    assert!(
        n >= 500,
        "too few file descriptors for a measurement: {n} subscribers"
    );
    let creds = Credentials::publisher("correct-horse");
    let mut cfg = EmbeddedBroker::new("127.0.0.1:0".parse().unwrap(), creds.clone());
    cfg.worker_threads = 1;
    let broker = cfg.start().unwrap();
    let addr = broker.local_addr();

    // The retained tick every subscriber receives at QoS 1, as from the feed.
    let mut opts = MqttOptions::new("publisher", addr.ip().to_string(), addr.port());
    opts.set_credentials(&creds.username, &creds.password);
    let (publisher, mut eventloop) = AsyncClient::new(opts, 16);
    publisher
        .publish(
            ticks::Currency::USD.topic(),
            QoS::AtLeastOnce,
            true,
            r#"{"timedate":"2026-11-24T01:40:05Z","price":97001.5}"#,
        )
        .await
        .unwrap();
    timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("the retained tick was acknowledged");

    // A first few, so that the broker's one-time allocations (its tables, the malloc arenas of
    // its threads) are made before the baseline.
    let subscribe_all = |from: u64, to: u64| {
        tokio::task::spawn_blocking(move || {
            (from..to).map(|i| subscribe(addr, i)).collect::<Vec<_>>()
        })
    };
    let warm = subscribe_all(0, 100).await.unwrap();
    let before = rss_kb();
    let subscribers = subscribe_all(100, 100 + n).await.unwrap();
    let after = rss_kb();
    let per_subscriber = (after.saturating_sub(before)) as f64 / n as f64;
    eprintln!(
        "{n} idle subscribers: resident memory {before} kB -> {after} kB, {per_subscriber:.1} KB each"
    );
    assert!(
        per_subscriber < MAX_KB_PER_SUBSCRIBER,
        "an idle subscriber costs the embedded broker {per_subscriber:.1} KB, over {MAX_KB_PER_SUBSCRIBER} KB"
    );
    drop((warm, subscribers));
}
