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
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
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
    let (client, mut eventloop) = Client5::new(opts, 64);
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

/// Publishes `payloads` to `btc/USD` at QoS 1 as the publisher, each acknowledged before the next.
async fn publish(broker: SocketAddr, creds: &Credentials, payloads: &[String]) {
    let mut opts = MqttOptions::new("publisher", broker.ip().to_string(), broker.port());
    opts.set_credentials(&creds.username, &creds.password);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    for payload in payloads {
        client
            .publish("btc/USD", QoS::AtLeastOnce, false, payload.clone())
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
    }
    let _ = client.disconnect().await;
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
