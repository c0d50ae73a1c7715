//! MQTT over WebSocket on the embedded broker: the plain listener's ACL and limits on the
//! WebSocket one. Raw MQTT 3.1.1 packets in WebSocket binary messages (tungstenite as the client),
//! from sockets bound to other loopback addresses than the publisher's, so the per-address count is
//! the WebSocket clients' own and, with a plain TCP connection from the same address, shared.

use std::net::SocketAddr;
use std::time::Duration;

use broker_config::{BrokerHandle, ClientLimits, Credentials, EmbeddedBroker};
use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(15);

fn start(limits: ClientLimits) -> (BrokerHandle, Credentials) {
    let creds = Credentials::publisher("correct-horse");
    let mut cfg = EmbeddedBroker::new("127.0.0.1:0".parse().unwrap(), creds.clone());
    cfg.worker_threads = 1;
    cfg.limits = limits;
    cfg.ws = Some("127.0.0.1:0".parse().unwrap());
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

fn packet(first: u8, body: Vec<u8>) -> Vec<u8> {
    let mut packet = vec![first];
    remaining_length(body.len(), &mut packet);
    packet.extend(body);
    packet
}

/// An MQTT 3.1.1 CONNECT, clean session, no credentials, keep-alive 30 s.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(4);
    body.push(0x02);
    body.extend_from_slice(&30u16.to_be_bytes());
    string(client_id.as_bytes(), &mut body);
    packet(0x10, body)
}

/// SUBSCRIBE to `filter` at QoS 1.
fn subscribe_packet(filter: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 1];
    string(filter, &mut body);
    body.push(1);
    packet(0x82, body)
}

/// A retained QoS 0 PUBLISH.
fn publish_packet(topic: &str, payload: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    body.extend_from_slice(payload.as_bytes());
    packet(0x31, body)
}

/// An MQTT client over WebSocket, speaking raw packets.
struct WsClient {
    ws: WebSocketStream<TcpStream>,
    /// Bytes received and not yet taken as whole packets.
    pending: Vec<u8>,
}

/// What came back.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A whole packet: its first byte and its body.
    Packet(u8, Vec<u8>),
    Closed,
}

impl WsClient {
    /// Opens a WebSocket from `from` to the broker with subprotocol `mqtt` and sends a CONNECT;
    /// the client and the CONNACK's return code (`None`: closed without one).
    async fn connect(from: &str, broker: SocketAddr, id: &str) -> (WsClient, Option<u8>) {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(from.parse().unwrap(), 0))
            .unwrap();
        let stream = socket.connect(broker).await.unwrap();
        let mut request = format!("ws://{broker}/mqtt").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        let (ws, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("the WebSocket handshake");
        assert_eq!(
            response.headers().get("Sec-WebSocket-Protocol").unwrap(),
            "mqtt"
        );
        let mut client = WsClient {
            ws,
            pending: Vec::new(),
        };
        client.send(connect_packet(id)).await;
        let code = match client.next().await {
            Answer::Packet(0x20, body) => Some(body[1]),
            Answer::Packet(first, _) => panic!("{first:#x} instead of a CONNACK"),
            Answer::Closed => None,
        };
        (client, code)
    }

    async fn send(&mut self, bytes: Vec<u8>) {
        // A closed connection shows in the next answer.
        let _ = self.ws.send(Message::Binary(bytes.into())).await;
    }

    /// The next whole MQTT packet, or `Closed`; panics after `WAIT`.
    async fn next(&mut self) -> Answer {
        loop {
            if let Some(answer) = self.take_packet() {
                return answer;
            }
            match timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(data)))) => self.pending.extend_from_slice(&data),
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                    return Answer::Closed;
                }
                Ok(Some(Ok(_))) => {}
                Err(_) => panic!("nothing from the broker within {WAIT:?}"),
            }
        }
    }

    fn take_packet(&mut self) -> Option<Answer> {
        let mut len = 0usize;
        let mut shift = 0;
        let mut at = 1;
        loop {
            let byte = *self.pending.get(at)?;
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            at += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if self.pending.len() < at + len {
            return None;
        }
        let first = self.pending[0];
        let body = self.pending[at..at + len].to_vec();
        self.pending.drain(..at + len);
        Some(Answer::Packet(first, body))
    }

    /// Subscribes and returns the SUBACK's return code.
    async fn subscribe(&mut self, filter: &[u8]) -> u8 {
        self.send(subscribe_packet(filter)).await;
        match self.next().await {
            Answer::Packet(0x90, body) => body[2],
            other => panic!("{other:?} instead of a SUBACK"),
        }
    }

    /// The next PUBLISH: topic, payload, retain flag.
    async fn publish_received(&mut self) -> (String, String, bool) {
        loop {
            match self.next().await {
                Answer::Packet(first, body) if first >> 4 == 3 => {
                    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).unwrap();
                    let qos = (first >> 1) & 3;
                    let mut payload_at = 2 + topic_len;
                    if qos > 0 {
                        let id = body[payload_at..payload_at + 2].to_vec();
                        payload_at += 2;
                        let mut ack = vec![0x40, 2];
                        ack.extend(id);
                        self.send(ack).await;
                    }
                    let payload = String::from_utf8(body[payload_at..].to_vec()).unwrap();
                    return (topic, payload, first & 1 == 1);
                }
                Answer::Packet(_, _) => {}
                Answer::Closed => panic!("closed while waiting for a PUBLISH"),
            }
        }
    }

    /// Whether the broker closes the connection within `WAIT` (discarding what it sends).
    async fn closed(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => return true,
                Ok(Some(Ok(_))) => {}
                Err(_) => return false,
            }
        }
    }
}

/// Publishes `payload` retained on `btc/USD` as the publisher, over plain MQTT.
async fn publish(broker: SocketAddr, creds: &Credentials, payload: &str) {
    let mut opts = MqttOptions::new("publisher", broker.ip().to_string(), broker.port());
    opts.set_credentials(&creds.username, &creds.password);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .publish("btc/USD", QoS::AtLeastOnce, true, payload.to_string())
        .await
        .unwrap();
    timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    })
    .await
    .expect("the publish was acknowledged");
    let _ = client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_read_the_feed_under_the_plain_listeners_acl() {
    let (broker, creds) = start(ClientLimits::default());
    let ws = broker.ws_addr().expect("a WebSocket listener");
    assert_ne!(ws.port(), 0);
    publish(broker.local_addr(), &creds, "tick-1").await;

    let (mut reader, code) = WsClient::connect("127.0.0.2", ws, "ws-reader").await;
    assert_eq!(code, Some(0));
    assert_eq!(
        reader.subscribe(b"btc/#").await,
        1,
        "btc/# granted at QoS 1"
    );
    assert_eq!(
        reader.publish_received().await,
        ("btc/USD".into(), "tick-1".into(), true),
        "the retained tick first"
    );

    // Outside the feed: refused, as on the plain listener.
    let (mut snoop, code) = WsClient::connect("127.0.0.2", ws, "ws-snoop").await;
    assert_eq!(code, Some(0));
    assert_eq!(snoop.subscribe(b"#").await, 0x80);
    assert_eq!(snoop.subscribe(b"$SYS/#").await, 0x80);

    // An anonymous publish of a price disconnects its sender and reaches nobody.
    let (mut forger, code) = WsClient::connect("127.0.0.2", ws, "ws-forger").await;
    assert_eq!(code, Some(0));
    forger
        .send(publish_packet(
            "btc/USD",
            r#"{"timedate":"2000-01-01T00:00:00Z","price":1}"#,
        ))
        .await;
    assert!(forger.closed().await, "the forger was not disconnected");
    publish(broker.local_addr(), &creds, "tick-2").await;
    assert_eq!(
        reader.publish_received().await,
        ("btc/USD".into(), "tick-2".into(), false),
        "the next tick, live, and no forged one before it"
    );
    let (mut late, _) = WsClient::connect("127.0.0.3", ws, "ws-late").await;
    late.subscribe(b"btc/USD").await;
    assert_eq!(
        late.publish_received().await,
        ("btc/USD".into(), "tick-2".into(), true),
        "the retained price is still ours"
    );

    // A connection that does not ask for the MQTT subprotocol is refused at the handshake.
    let stream = TcpStream::connect(ws).await.unwrap();
    let plain = format!("ws://{ws}/mqtt").into_client_request().unwrap();
    assert!(
        tokio_tungstenite::client_async(plain, stream)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_count_against_the_address_and_obey_the_packet_limit() {
    let (broker, creds) = start(ClientLimits {
        connections_per_address: 3,
        connect_rate: 0,
        ..ClientLimits::default()
    });
    let ws = broker.ws_addr().unwrap();
    // Two over WebSocket and one over plain MQTT from 127.0.0.2: its share.
    let (mut first, code) = WsClient::connect("127.0.0.2", ws, "ws-1").await;
    assert_eq!(code, Some(0));
    let (_second, code) = WsClient::connect("127.0.0.2", ws, "ws-2").await;
    assert_eq!(code, Some(0));
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut tcp = socket.connect(broker.local_addr()).await.unwrap();
    tcp.write_all(&connect_packet("tcp-3")).await.unwrap();
    let mut ack = [0u8; 4];
    timeout(WAIT, tcp.read_exact(&mut ack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    // A fourth, over WebSocket, is refused (CONNACK 5, not authorized); another address is not.
    // The count follows CONNACKs, so wait until the plain client's is counted.
    let mut refused = None;
    for _ in 0..100 {
        let (_, code) = WsClient::connect("127.0.0.2", ws, "ws-4").await;
        if code == Some(5) {
            refused = code;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused, Some(5), "a fourth connection from 127.0.0.2");
    let (mut other, code) = WsClient::connect("127.0.0.3", ws, "ws-other").await;
    assert_eq!(code, Some(0));

    // A packet over the 16 KiB limit disconnects its sender; the others keep reading.
    assert_eq!(other.subscribe(b"btc/USD").await, 1);
    let big = vec![b'a'; 20 * 1024];
    first.send(subscribe_packet(&big)).await;
    assert!(
        first.closed().await,
        "a 20 KiB SUBSCRIBE over a 16 KiB limit left the connection open"
    );
    publish(broker.local_addr(), &creds, "tick-3").await;
    assert_eq!(
        other.publish_received().await,
        ("btc/USD".into(), "tick-3".into(), false)
    );
}
