//! The embedded broker's limits on one client and one client address: open connections and the
//! connect rate per address, the largest packet, the keep-alive. Raw MQTT 3.1.1 over sockets bound
//! to different loopback addresses (127.0.0.2, 127.0.0.3, ...), so "another address" is a real
//! one, while a subscriber on 127.0.0.1 checks that ticks keep flowing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use broker_config::{BrokerHandle, ClientLimits, Credentials, EmbeddedBroker};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn start(limits: ClientLimits) -> (BrokerHandle, Credentials) {
    let creds = Credentials::publisher("correct-horse");
    let mut cfg = EmbeddedBroker::new("127.0.0.1:0".parse().unwrap(), creds.clone());
    cfg.worker_threads = 1;
    cfg.limits = limits;
    (cfg.start().unwrap(), creds)
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// An MQTT 3.1.1 CONNECT, clean session, no credentials.
fn connect_packet(client_id: &str, keepalive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(4); // 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&keepalive.to_be_bytes());
    string(client_id.as_bytes(), &mut body);
    let mut packet = vec![0x10];
    remaining_length(body.len(), &mut packet);
    packet.extend(body);
    packet
}

fn subscribe_packet(filter: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 1]; // packet id
    string(filter, &mut body);
    body.push(0); // QoS 0
    let mut packet = vec![0x82];
    remaining_length(body.len(), &mut packet);
    packet.extend(body);
    packet
}

/// How a raw CONNECT ended.
#[derive(Debug, PartialEq, Eq)]
enum Connack {
    /// CONNACK with this return code (0: accepted).
    Code(u8),
    /// Closed (or reset) without a CONNACK.
    Closed,
}

/// Connects from `from` (a loopback address) and sends a CONNECT; the socket and the answer.
async fn raw_connect(
    from: &str,
    broker: SocketAddr,
    id: &str,
    keepalive: u16,
) -> (TcpStream, Connack) {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let mut stream = socket.connect(broker).await.unwrap();
    stream
        .write_all(&connect_packet(id, keepalive))
        .await
        .unwrap();
    let mut ack = [0u8; 4];
    let answer = match timeout(WAIT, stream.read_exact(&mut ack)).await {
        Ok(Ok(_)) if ack[0] == 0x20 => Connack::Code(ack[3]),
        Ok(_) => Connack::Closed,
        Err(_) => panic!("no CONNACK and no close within {WAIT:?}"),
    };
    (stream, answer)
}

/// Whether the broker closes `stream` within `within` (reading and discarding what it sends).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A rumqttc subscriber on 127.0.0.1 to `btc/USD`; yields each payload.
async fn watcher(broker: SocketAddr) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let mut opts = MqttOptions::new("watcher", broker.ip().to_string(), broker.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client.subscribe("btc/USD", QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        let _client = client;
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send(String::from_utf8_lossy(&p.payload).into_owned());
                }
                _ => {}
            }
        }
    });
    timeout(WAIT, subscribed).await.unwrap().unwrap();
    rx
}

async fn publish(broker: SocketAddr, creds: &Credentials, payload: &str) {
    let mut opts = MqttOptions::new("publisher", broker.ip().to_string(), broker.port());
    opts.set_credentials(&creds.username, &creds.password);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .publish("btc/USD", QoS::AtLeastOnce, false, payload.to_string())
        .await
        .unwrap();
    let acked = timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    })
    .await;
    acked.expect("the publisher's tick was acknowledged");
}

#[tokio::test]
async fn an_address_over_its_connection_cap_is_refused_and_everyone_else_gets_ticks() {
    let (broker, creds) = start(ClientLimits {
        connections_per_address: 3,
        connect_rate: 0,
        ..ClientLimits::default()
    });
    let addr = broker.local_addr();
    let mut ticks = watcher(addr).await;

    let mut held = Vec::new();
    for i in 0..3 {
        let (stream, answer) = raw_connect("127.0.0.2", addr, &format!("held-{i}"), 60).await;
        assert_eq!(answer, Connack::Code(0), "connection {i}");
        held.push(stream);
    }
    let (_, answer) = raw_connect("127.0.0.2", addr, "one-too-many", 60).await;
    assert_eq!(
        answer,
        Connack::Code(5),
        "the fourth from one address: not authorized"
    );
    // Another address is untouched, and the feed goes on.
    let (_other, answer) = raw_connect("127.0.0.3", addr, "other", 60).await;
    assert_eq!(answer, Connack::Code(0));
    publish(addr, &creds, "tick-1").await;
    assert_eq!(
        timeout(WAIT, ticks.recv()).await.unwrap().unwrap(),
        "tick-1"
    );

    // A connection that closes frees its place.
    drop(held.pop());
    let started = Instant::now();
    loop {
        let (_stream, answer) = raw_connect("127.0.0.2", addr, "again", 60).await;
        if answer == Connack::Code(0) {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the address stayed refused after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_address_connecting_faster_than_its_rate_is_refused() {
    let (broker, creds) = start(ClientLimits {
        connect_rate: 1,
        connect_burst: 3,
        ..ClientLimits::default()
    });
    let addr = broker.local_addr();
    let mut ticks = watcher(addr).await;
    // Connect and go, over and over: the burst passes, then one a second at most.
    let started = Instant::now();
    let mut accepted = 0u64;
    loop {
        let (_, answer) = raw_connect("127.0.0.4", addr, &format!("flood-{accepted}"), 60).await;
        if answer == Connack::Code(5) {
            break;
        }
        assert_eq!(answer, Connack::Code(0));
        accepted += 1;
        assert!(
            accepted <= 3 + started.elapsed().as_secs() + 1,
            "{accepted} connects accepted, none refused"
        );
    }
    assert!(accepted >= 3, "refused after {accepted}");
    let (_, answer) = raw_connect("127.0.0.5", addr, "calm", 60).await;
    assert_eq!(answer, Connack::Code(0));
    publish(addr, &creds, "tick-2").await;
    assert_eq!(
        timeout(WAIT, ticks.recv()).await.unwrap().unwrap(),
        "tick-2"
    );
}

#[tokio::test]
async fn an_oversized_packet_disconnects_its_sender_only() {
    let (broker, creds) = start(ClientLimits::default());
    let addr = broker.local_addr();
    let mut ticks = watcher(addr).await;
    let (mut big, answer) = raw_connect("127.0.0.2", addr, "big", 60).await;
    assert_eq!(answer, Connack::Code(0));
    let filter = vec![b'a'; 20 * 1024];
    big.write_all(&subscribe_packet(&filter)).await.unwrap();
    assert!(
        closed_within(&mut big, WAIT).await,
        "a 20 KiB SUBSCRIBE over a 16 KiB limit left the connection open"
    );
    publish(addr, &creds, "tick-3").await;
    assert_eq!(
        timeout(WAIT, ticks.recv()).await.unwrap().unwrap(),
        "tick-3"
    );
}

#[tokio::test]
async fn keep_alive_is_enforced() {
    let (broker, _) = start(ClientLimits {
        max_keepalive_s: 60,
        ..ClientLimits::default()
    });
    let addr = broker.local_addr();
    // None at all, or more than the broker allows: refused.
    for keepalive in [0, 61] {
        let (mut stream, answer) = raw_connect("127.0.0.2", addr, "lazy", keepalive).await;
        assert_ne!(
            answer,
            Connack::Code(0),
            "keep-alive {keepalive} was accepted"
        );
        assert!(closed_within(&mut stream, WAIT).await);
    }
    // A client that asked for 2 s and then goes silent is disconnected within 1.5 keep-alives
    // (give or take the broker's timer): its socket is not held for ever.
    let (mut silent, answer) = raw_connect("127.0.0.2", addr, "silent", 2).await;
    assert_eq!(answer, Connack::Code(0));
    let started = Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "a client silent past its keep-alive was not disconnected"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
}
