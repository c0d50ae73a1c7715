//! The embedded broker's rules and sharp edges, checked with a real MQTT client over loopback.

use std::net::SocketAddr;
use std::time::Duration;

use broker_config::{BrokerHandle, Credentials, EmbeddedBroker};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);
/// How long we watch for a message that must *not* arrive. Absence cannot be proven by waiting,
/// so every such check is followed by a positive message that would arrive after it.
const QUIET: Duration = Duration::from_millis(300);

fn start(max_sessions: usize) -> (BrokerHandle, Credentials) {
    let creds = Credentials::publisher("correct-horse");
    let mut cfg = EmbeddedBroker::new("127.0.0.1:0".parse().unwrap(), creds.clone());
    cfg.max_sessions = max_sessions;
    cfg.worker_threads = 1;
    (cfg.start().unwrap(), creds)
}

#[derive(Debug)]
enum Seen {
    Publish {
        topic: String,
        payload: String,
        retain: bool,
    },
    SubAck(Vec<SubscribeReasonCode>),
    Closed,
}

struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Seen>,
    eventloop: tokio::task::JoinHandle<()>,
}

async fn connect(
    addr: SocketAddr,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<Client, ConnectionError> {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(5));
    if let Some((user, pass)) = creds {
        opts.set_credentials(user, pass);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = timeout(WAIT, eventloop.poll())
            .await
            .expect("CONNACK in time")?
        {
            break;
        }
    }
    let (tx, events) = mpsc::unbounded_channel();
    let eventloop = tokio::spawn(async move {
        loop {
            let seen = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => Seen::Publish {
                    topic: p.topic.clone(),
                    payload: String::from_utf8_lossy(&p.payload).into_owned(),
                    retain: p.retain,
                },
                Ok(Event::Incoming(Packet::SubAck(s))) => Seen::SubAck(s.return_codes),
                Ok(_) => continue,
                Err(_) => {
                    let _ = tx.send(Seen::Closed);
                    return;
                }
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    Ok(Client {
        client,
        events,
        eventloop,
    })
}

impl Client {
    async fn subscribe(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match timeout(WAIT, self.events.recv())
                .await
                .expect("SUBACK in time")
            {
                Some(Seen::SubAck(codes)) => return codes,
                Some(_) => continue,
                None => panic!("connection ended before SUBACK"),
            }
        }
    }

    async fn next_publish(&mut self, within: Duration) -> Option<(String, String, bool)> {
        timeout(within, async {
            while let Some(seen) = self.events.recv().await {
                if let Seen::Publish {
                    topic,
                    payload,
                    retain,
                } = seen
                {
                    return Some((topic, payload, retain));
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    async fn closed(&mut self) -> bool {
        timeout(WAIT, async {
            while let Some(seen) = self.events.recv().await {
                if matches!(seen, Seen::Closed) {
                    return true;
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    }
}

fn granted(codes: &[SubscribeReasonCode]) -> bool {
    codes
        .iter()
        .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
}

async fn publisher(addr: SocketAddr, creds: &Credentials) -> Client {
    connect(addr, "publisher", Some((&creds.username, &creds.password)))
        .await
        .expect("the publisher's credential is accepted")
}

#[tokio::test]
async fn anonymous_clients_read_and_get_the_retained_price() {
    let (broker, creds) = start(100);
    let addr = broker.local_addr();
    let mut early = connect(addr, "early", None).await.unwrap();
    assert!(granted(&early.subscribe("btc/#").await));
    let publisher = publisher(addr, &creds).await;
    publisher
        .client
        .publish("btc/USD", QoS::AtLeastOnce, true, "97001.5")
        .await
        .unwrap();
    let (topic, payload, _) = early.next_publish(WAIT).await.unwrap();
    assert_eq!((topic.as_str(), payload.as_str()), ("btc/USD", "97001.5"));

    for filter in [
        "btc/+",
        "btc/USD",
        "pricefeed/status",
        "pricefeed/gaps",
        "pricefeed/nodes/+",
        "pricefeed/nodes/2",
    ] {
        let mut late = connect(addr, &format!("late-{}", filter.len()), None)
            .await
            .unwrap();
        assert!(granted(&late.subscribe(filter).await), "{filter}");
        if filter.starts_with("btc/") {
            assert_eq!(
                late.next_publish(WAIT).await,
                Some(("btc/USD".into(), "97001.5".into(), true)),
                "{filter}"
            );
        }
    }
}

#[tokio::test]
async fn anonymous_subscriptions_outside_the_feed_are_refused() {
    let (broker, _) = start(100);
    let mut c = connect(broker.local_addr(), "nosy", None).await.unwrap();
    for filter in [
        "#",
        "pricefeed/#",
        "pricefeed/+",
        "$SYS/#",
        "eth/USD",
        "pricefeed/nodes/#",
    ] {
        assert_eq!(
            c.subscribe(filter).await,
            vec![SubscribeReasonCode::Failure],
            "{filter}"
        );
    }
}

#[tokio::test]
async fn an_anonymous_publish_reaches_nobody_and_keeps_the_retained_tick() {
    let (broker, creds) = start(100);
    let addr = broker.local_addr();
    let publisher = publisher(addr, &creds).await;
    publisher
        .client
        .publish("btc/USD", QoS::AtLeastOnce, true, "genuine")
        .await
        .unwrap();
    let mut watcher = connect(addr, "watcher", None).await.unwrap();
    watcher.subscribe("btc/#").await;
    assert_eq!(watcher.next_publish(WAIT).await.unwrap().1, "genuine");

    let mut attacker = connect(addr, "attacker", None).await.unwrap();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let _ = attacker.client.publish("btc/USD", qos, true, "0.01").await;
    }
    // The broker disconnects a client whose publish is refused.
    assert!(attacker.closed().await, "the attacker is disconnected");
    assert_eq!(watcher.next_publish(QUIET).await, None);

    // A genuine tick published after the attack arrives, so the silence above was not a stall.
    publisher
        .client
        .publish("btc/USD", QoS::AtLeastOnce, true, "genuine-2")
        .await
        .unwrap();
    assert_eq!(watcher.next_publish(WAIT).await.unwrap().1, "genuine-2");
    let mut late = connect(addr, "late", None).await.unwrap();
    late.subscribe("btc/USD").await;
    assert_eq!(
        late.next_publish(WAIT).await,
        Some(("btc/USD".into(), "genuine-2".into(), true))
    );
}

#[tokio::test]
async fn wrong_or_unknown_credentials_are_refused_at_connect() {
    let (broker, creds) = start(100);
    let addr = broker.local_addr();
    for (user, pass) in [
        (creds.username.as_str(), "wrong"),
        (creds.username.as_str(), ""),
        ("someone-else", "correct-horse"),
    ] {
        match connect(addr, "intruder", Some((user, pass))).await {
            Err(ConnectionError::ConnectionRefused(code)) => {
                assert!(
                    matches!(
                        code,
                        ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
                    ),
                    "{user}/{pass}: {code:?}"
                )
            }
            Err(e) => panic!("{user}/{pass}: unexpected error {e}"),
            Ok(_) => panic!("{user}/{pass}: must be refused"),
        }
    }
    // The publisher itself is still welcome, and may not publish outside its topics.
    let mut p = publisher(addr, &creds).await;
    let mut watcher = connect(addr, "watcher", None).await.unwrap();
    watcher.subscribe("btc/#").await;
    let _ = p
        .client
        .publish("btc/GBP", QoS::AtLeastOnce, false, "1")
        .await;
    assert!(p.closed().await);
    assert_eq!(watcher.next_publish(QUIET).await, None);
}

#[tokio::test]
async fn max_sessions_caps_clients_and_the_listener_keeps_serving() {
    let (broker, _) = start(2);
    let addr = broker.local_addr();
    let _a = connect(addr, "a", None).await.unwrap();
    let b = connect(addr, "b", None).await.unwrap();
    match connect(addr, "c", None).await {
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable)) => {}
        Err(e) => panic!("unexpected refusal {e}"),
        Ok(_) => panic!("a third session must be refused at max_sessions = 2"),
    }
    // A client that goes away (a display losing power: its socket closes) frees its session, and
    // a new client gets in: the cap did not wedge the listener.
    b.eventloop.abort();
    let mut admitted = None;
    for _ in 0..50 {
        if let Ok(c) = connect(addr, "c", None).await {
            admitted = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        admitted.is_some(),
        "a slot freed by a disconnect is reusable"
    );
}

#[tokio::test]
async fn duplicate_client_ids_with_slashes_do_not_stop_the_listener() {
    // rumqttd 0.20 stopped accepting anyone after this sequence.
    let (broker, _) = start(100);
    let addr = broker.local_addr();
    let mut first = connect(addr, "display/kitchen", None).await.unwrap();
    let _second = connect(addr, "display/kitchen", None).await.unwrap();
    assert!(first.closed().await, "the older session is taken over");
    let mut third = connect(addr, "someone/else", None).await.unwrap();
    assert!(granted(&third.subscribe("btc/#").await));
}

#[tokio::test]
async fn mqtt5_properties_do_not_break_311_subscribers() {
    use rumqttc::v5;
    let (broker, creds) = start(100);
    let addr = broker.local_addr();
    let mut old = connect(addr, "old-display", None).await.unwrap();
    old.subscribe("btc/#").await;

    let mut opts = v5::MqttOptions::new("v5-publisher", addr.ip().to_string(), addr.port());
    opts.set_credentials(creds.username.clone(), creds.password.clone());
    let (client, mut eventloop) = v5::AsyncClient::new(opts, 16);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let props = v5::mqttbytes::v5::PublishProperties {
        message_expiry_interval: Some(60),
        content_type: Some("application/json".into()),
        user_properties: vec![("source".into(), "test".into())],
        ..Default::default()
    };
    client
        .publish_with_properties(
            "btc/EUR",
            v5::mqttbytes::QoS::AtLeastOnce,
            true,
            "89000.1",
            props,
        )
        .await
        .unwrap();
    assert_eq!(
        old.next_publish(WAIT).await,
        Some(("btc/EUR".into(), "89000.1".into(), false))
    );
    // And the 3.1.1 connection still works afterwards.
    let mut again = connect(addr, "old-display-2", None).await.unwrap();
    again.subscribe("btc/EUR").await;
    assert_eq!(again.next_publish(WAIT).await.unwrap().1, "89000.1");
}

#[tokio::test]
async fn shutdown_closes_connections_and_frees_the_port() {
    let (broker, _) = start(100);
    let addr = broker.local_addr();
    let mut c = connect(addr, "c", None).await.unwrap();
    let other = start(100).0;
    tokio::task::spawn_blocking(move || broker.shutdown())
        .await
        .unwrap();
    assert!(c.closed().await, "clients see the broker go");
    assert!(connect(addr, "late", None).await.is_err());
    // Another broker in the same process is unaffected.
    assert!(connect(other.local_addr(), "ok", None).await.is_ok());
    // The port can be bound again at once.
    let mut cfg = EmbeddedBroker::new(addr, Credentials::publisher("x"));
    cfg.worker_threads = 1;
    let again = cfg.start().unwrap();
    assert_eq!(again.local_addr(), addr);
}

#[test]
fn unsafe_passwords_are_refused_before_starting() {
    let cfg = EmbeddedBroker::new(
        "127.0.0.1:0".parse().unwrap(),
        Credentials::publisher("a\"b"),
    );
    let err = cfg.start().err().expect("must refuse");
    assert!(err.to_string().contains("quotes"), "{err}");
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = EmbeddedBroker::new(taken.local_addr().unwrap(), Credentials::publisher("x"));
    let err = cfg.start().err().expect("must fail");
    assert!(
        err.to_string().starts_with(&format!(
            "cannot listen for MQTT on {}",
            taken.local_addr().unwrap()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_bytes_and_half_open_connections_do_not_disturb_the_feed() {
    use tokio::io::AsyncWriteExt;
    let (broker, creds) = start(100);
    let addr = broker.local_addr();
    let publisher = publisher(addr, &creds).await;
    publisher
        .client
        .publish("btc/USD", QoS::AtLeastOnce, true, "genuine")
        .await
        .unwrap();
    let mut watcher = connect(addr, "watcher", None).await.unwrap();
    watcher.subscribe("btc/#").await;
    assert_eq!(watcher.next_publish(WAIT).await.unwrap().1, "genuine");

    let mut state = 0x853c_49e6_748f_ea9b_u64;
    let mut idle = Vec::new();
    for round in 0..50 {
        let mut junk = vec![0u8; 1 + round * 97 % 4096];
        for b in junk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        // Every fifth starts like a CONNECT with an absurd remaining length.
        if round % 5 == 0 {
            junk[0] = 0x10;
            junk.splice(1..1, [0xff, 0xff, 0xff, 0x7f]);
        }
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&junk).await;
        if round % 10 == 0 {
            idle.push(s); // left open, saying nothing more
        }
    }
    publisher
        .client
        .publish("btc/USD", QoS::AtLeastOnce, true, "after")
        .await
        .unwrap();
    assert_eq!(watcher.next_publish(WAIT).await.unwrap().1, "after");
    let mut late = connect(addr, "late", None).await.unwrap();
    late.subscribe("btc/USD").await;
    assert_eq!(late.next_publish(WAIT).await.unwrap().1, "after");
    drop(idle);
}
