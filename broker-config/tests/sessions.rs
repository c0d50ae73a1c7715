//! Persistent sessions on the embedded broker: how long the session of a client that went away is
//! kept (`ClientLimits::session_expiry`, for MQTT 3.1.1 and as a cap on what MQTT 5 clients ask
//! for), and what is queued for it (`ClientLimits::max_queued_messages`: past it, the oldest go).
//! Real MQTT clients (rumqttc, 3.1.1 and 5) against the broker in-process.

use std::net::SocketAddr;
use std::time::Duration;

use broker_config::{BrokerHandle, ClientLimits, Credentials, EmbeddedBroker};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(15);

fn start(limits: ClientLimits) -> (BrokerHandle, Credentials) {
    let creds = Credentials::publisher("correct-horse");
    let mut cfg = EmbeddedBroker::new("127.0.0.1:0".parse().unwrap(), creds.clone());
    cfg.worker_threads = 1;
    cfg.limits = limits;
    (cfg.start().unwrap(), creds)
}

/// A connected subscriber: whether the broker still had its session, what it receives, and how
/// to leave.
struct Session {
    session_present: bool,
    payloads: mpsc::UnboundedReceiver<String>,
    leave: Box<dyn FnOnce() -> tokio::task::JoinHandle<()>>,
}

impl Session {
    /// Sends DISCONNECT and waits until the connection is gone.
    async fn leave(self) {
        let task = (self.leave)();
        timeout(WAIT, task).await.unwrap().unwrap();
    }

    /// Sends DISCONNECT, waits until the connection is gone, and returns what arrived meanwhile
    /// (the client acknowledged those to the broker).
    async fn leave_and_drain(mut self) -> Vec<String> {
        let task = (self.leave)();
        timeout(WAIT, task).await.unwrap().unwrap();
        let mut rest = Vec::new();
        while let Ok(p) = self.payloads.try_recv() {
            rest.push(p);
        }
        rest
    }

    /// The next `n` payloads; panics after `WAIT`.
    async fn take(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            match timeout(WAIT, self.payloads.recv()).await {
                Ok(Some(p)) => out.push(p),
                _ => panic!("only {out:?} of {n} messages"),
            }
        }
        out
    }
}

/// An MQTT 3.1.1 client with clean session off; subscribes to `btc/USD` at QoS 1 if `subscribe`.
async fn v311(broker: SocketAddr, id: &str, subscribe: bool) -> Session {
    let mut opts = MqttOptions::new(id, broker.ip().to_string(), broker.port());
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_clean_session(false);
    // Acknowledged once taken: one read but not taken before leaving is the broker's to send again.
    opts.set_manual_acks(true);
    // Room for an acknowledgement of each message the broker has in flight to it, and more.
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let acks = client.clone();
    if subscribe {
        client.subscribe("btc/USD", QoS::AtLeastOnce).await.unwrap();
    }
    let (tx, payloads) = mpsc::unbounded_channel();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let mut present = None;
    let task = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::ConnAck(ack)) => {
                    present = Some(ack.session_present);
                    if !subscribe {
                        let _ = ready_tx.take().map(|r| r.send(ack.session_present));
                    }
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    let _ = ready_tx.take().map(|r| r.send(present.unwrap_or(false)));
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send(String::from_utf8_lossy(&p.payload).into_owned());
                    acks.try_ack(&p).unwrap();
                }
                Event::Outgoing(rumqttc::Outgoing::Disconnect) => break,
                _ => {}
            }
        }
    });
    let session_present = timeout(WAIT, ready).await.unwrap().unwrap();
    Session {
        session_present,
        payloads,
        leave: Box::new(move || {
            tokio::spawn(async move {
                let _ = client.disconnect().await;
                let _ = task.await;
            })
        }),
    }
}

/// An MQTT 5 client with clean start off asking for a session expiry of `expiry_s`; subscribes
/// to `btc/USD` at QoS 1 if `subscribe`.
async fn v5(broker: SocketAddr, id: &str, expiry_s: u32, subscribe: bool) -> Session {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
    let mut opts = Options5::new(id, broker.ip().to_string(), broker.port());
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(expiry_s));
    opts.set_manual_acks(true);
    let (client, mut eventloop) = Client5::new(opts, 256);
    let acks = client.clone();
    if subscribe {
        client
            .subscribe("btc/USD", QoS5::AtLeastOnce)
            .await
            .unwrap();
    }
    let (tx, payloads) = mpsc::unbounded_channel();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let mut present = None;
    let task = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event5::Incoming(Packet5::ConnAck(ack)) => {
                    present = Some(ack.session_present);
                    if !subscribe {
                        let _ = ready_tx.take().map(|r| r.send(ack.session_present));
                    }
                }
                Event5::Incoming(Packet5::SubAck(_)) => {
                    let _ = ready_tx.take().map(|r| r.send(present.unwrap_or(false)));
                }
                Event5::Incoming(Packet5::Publish(p)) => {
                    let _ = tx.send(String::from_utf8_lossy(&p.payload).into_owned());
                    acks.try_ack(&p).unwrap();
                }
                Event5::Outgoing(rumqttc::Outgoing::Disconnect) => break,
                _ => {}
            }
        }
    });
    let session_present = timeout(WAIT, ready).await.unwrap().unwrap();
    Session {
        session_present,
        payloads,
        leave: Box::new(move || {
            tokio::spawn(async move {
                let _ = client.disconnect().await;
                let _ = task.await;
            })
        }),
    }
}

/// The publisher's connection: publishes to `btc/USD` at QoS 1, each message acknowledged before
/// the next.
struct Publisher {
    client: AsyncClient,
    eventloop: rumqttc::EventLoop,
}

impl Publisher {
    fn connect(broker: SocketAddr, creds: &Credentials) -> Self {
        let mut opts = MqttOptions::new("publisher", broker.ip().to_string(), broker.port());
        opts.set_credentials(&creds.username, &creds.password);
        let (client, eventloop) = AsyncClient::new(opts, 64);
        Self { client, eventloop }
    }

    /// Publishes `payload` and waits for its PUBACK; panics after `WAIT`.
    async fn send(&mut self, payload: String) {
        self.client
            .publish("btc/USD", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        let eventloop = &mut self.eventloop;
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
    }

    async fn leave(self) {
        let _ = self.client.disconnect().await;
    }
}

/// Publishes `payloads` to `btc/USD` at QoS 1 as the publisher, each acknowledged before the next.
async fn publish(broker: SocketAddr, creds: &Credentials, payloads: &[String]) {
    let mut publisher = Publisher::connect(broker, creds);
    for payload in payloads {
        publisher.send(payload.clone()).await;
    }
    publisher.leave().await;
}

fn numbered(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| format!("tick {n}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_away_gets_what_was_queued_and_past_the_queue_the_oldest_go() {
    let (broker, creds) = start(ClientLimits {
        max_queued_messages: 5,
        ..ClientLimits::default()
    });
    let addr = broker.local_addr();
    // Both protocol versions: a 3.1.1 client with clean session off, a 5 client asking for an hour.
    let first = v311(addr, "display-311", true).await;
    let second = v5(addr, "display-5", 3600, true).await;
    assert!(!first.session_present && !second.session_present);
    first.leave().await;
    second.leave().await;

    publish(addr, &creds, &numbered(1..=3)).await;
    let mut back = v311(addr, "display-311", false).await;
    assert!(back.session_present, "3.1.1: the session was kept");
    assert_eq!(
        back.take(3).await,
        numbered(1..=3),
        "3.1.1: what was queued"
    );
    let mut back5 = v5(addr, "display-5", 3600, false).await;
    assert!(back5.session_present, "5: the session was kept");
    assert_eq!(back5.take(3).await, numbered(1..=3), "5: what was queued");
    back.leave().await;
    back5.leave().await;

    // Twelve while away, five queued: the newest five, in order.
    publish(addr, &creds, &numbered(4..=15)).await;
    let mut back = v311(addr, "display-311", false).await;
    assert!(back.session_present);
    assert_eq!(
        back.take(5).await,
        numbered(11..=15),
        "3.1.1: the newest five"
    );
    let mut back5 = v5(addr, "display-5", 3600, false).await;
    assert!(back5.session_present);
    assert_eq!(back5.take(5).await, numbered(11..=15), "5: the newest five");
    // Nothing older follows: the next message is a new one.
    publish(addr, &creds, &numbered(16..=16)).await;
    assert_eq!(back.take(1).await, numbered(16..=16));
    assert_eq!(back5.take(1).await, numbered(16..=16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_away_longer_than_the_expiry_is_gone_and_mqtt5_cannot_ask_for_longer() {
    let (broker, creds) = start(ClientLimits {
        session_expiry: Duration::from_secs(1),
        ..ClientLimits::default()
    });
    let addr = broker.local_addr();
    let first = v311(addr, "display-311", true).await;
    // Asks for an hour; the broker keeps it for its maximum, a second.
    let second = v5(addr, "display-5", 3600, true).await;
    first.leave().await;
    second.leave().await;
    publish(addr, &creds, &numbered(1..=2)).await;
    // Well past the second: the broker's timer for the session has fired, even on a loaded machine.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let back = v311(addr, "display-311", false).await;
    assert!(!back.session_present, "3.1.1: the session expired");
    let back5 = v5(addr, "display-5", 3600, false).await;
    assert!(!back5.session_present, "5: the session expired at the cap");
}

/// rmqtt's default dropped a queued message at delivery once it was 5 minutes old, however long
/// the session was kept (measured: of 390 ticks queued at 1 s for a display away 6.5 minutes, the
/// 90 oldest were gone). Takes five and a half minutes, so not in CI:
/// `cargo test -p broker-config --test sessions -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "waits five and a half minutes"]
async fn a_tick_queued_longer_than_five_minutes_is_still_delivered() {
    let (broker, creds) = start(ClientLimits::default());
    let addr = broker.local_addr();
    v311(addr, "display-311", true).await.leave().await;
    publish(addr, &creds, &numbered(1..=1)).await;
    tokio::time::sleep(Duration::from_secs(330)).await;
    let mut back = v311(addr, "display-311", false).await;
    assert!(back.session_present);
    assert_eq!(back.take(1).await, numbered(1..=1));
}

/// Publishes `btc/USD` "tick 1", "tick 2", … at QoS 1, each acknowledged before the next and
/// `pace` after it, until `stop`; returns the last number published.
async fn publish_until(
    broker: SocketAddr,
    creds: Credentials,
    pace: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> u32 {
    let mut publisher = Publisher::connect(broker, &creds);
    let mut last = 0;
    while !*stop.borrow() {
        publisher.send(format!("tick {}", last + 1)).await;
        last += 1;
        tokio::time::sleep(pace).await;
    }
    publisher.leave().await;
    last
}

fn tick_number(payload: &str) -> u32 {
    payload.strip_prefix("tick ").unwrap().parse().unwrap()
}

/// A session taken back while ticks are published to it loses none and gets them in order: not
/// one routed to it in the instant the broker hands it from the old connection to the new one, nor
/// one the old connection was writing as it went. A 3.1.1 and a 5 client each come back `ROUNDS`
/// times, taking 5 ticks each time, while a publisher publishes one every millisecond. Each time,
/// what it gets is in the order published (first those sent before and not acknowledged, then
/// those queued, then live); at the end every tick published is among those received (QoS 1: some
/// twice).
///
/// rmqtt 0.24 as published failed all of 10 runs: 1 to 7 of about 306 ticks lost, or ticks sent
/// again newest first. Patched (patches/rmqtt/Cargo.toml), it passed 110 runs, and 20 more with
/// the publisher publishing flat out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_taken_back_while_ticks_flow_loses_none() {
    const ROUNDS: usize = 60;
    let (broker, creds) = start(ClientLimits::default());
    let addr = broker.local_addr();
    v311(addr, "display-311", true).await.leave().await;
    v5(addr, "display-5", 3600, true).await.leave().await;
    let back = |mqtt5: bool| async move {
        let session = if mqtt5 {
            v5(addr, "display-5", 3600, false).await
        } else {
            v311(addr, "display-311", false).await
        };
        assert!(session.session_present);
        session
    };
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let publisher = tokio::spawn(publish_until(addr, creds, Duration::from_millis(1), stop));
    let mut got = [
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    ];
    for _ in 0..ROUNDS {
        for (mqtt5, got) in [false, true].into_iter().zip(got.iter_mut()) {
            let mut session = back(mqtt5).await;
            let mut payloads = session.take(5).await;
            payloads.extend(session.leave_and_drain().await);
            let ticks: Vec<u32> = payloads.iter().map(|p| tick_number(p)).collect();
            // Sent again first (those it had not acknowledged), then queued, then live: each in
            // the order published.
            assert!(
                ticks.is_sorted_by(|a, b| a < b),
                "mqtt5={mqtt5}: in the order published: {ticks:?}"
            );
            got.extend(ticks);
        }
    }
    stop_tx.send(true).unwrap();
    let last = timeout(WAIT, publisher).await.unwrap().unwrap();
    for (mqtt5, got) in [false, true].into_iter().zip(got.iter_mut()) {
        let mut session = back(mqtt5).await;
        while !got.contains(&last) {
            got.insert(tick_number(&session.take(1).await[0]));
        }
        got.extend(
            session
                .leave_and_drain()
                .await
                .iter()
                .map(|p| tick_number(p)),
        );
        let lost: Vec<u32> = (1..=last).filter(|n| !got.contains(n)).collect();
        let version = if mqtt5 { "5" } else { "3.1.1" };
        assert!(lost.is_empty(), "{version}: of {last} ticks, lost {lost:?}");
    }
}
