//! [`TickSubscriber`]: a real MQTT 3.1.1 client collecting what arrives on the tick topics.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// One message as received: topic, payload text, retain flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

/// A real MQTT 3.1.1 subscriber on a topic filter.
pub struct TickSubscriber {
    rx: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl TickSubscriber {
    /// Connects anonymously and subscribes to `filter` at QoS 1; returns once the SUBACK arrived.
    pub async fn connect(addr: SocketAddr, client_id: &str, filter: &str) -> TickSubscriber {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(10));
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _client = client;
            let mut subscribed = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subscribed.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Received {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(15), subscribed_rx)
            .await
            .expect("SUBACK within 15 s")
            .unwrap();
        TickSubscriber { rx, task }
    }

    /// The next message, or `None` after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Collects messages until `n` arrived; panics after `within`.
    pub async fn collect(&mut self, n: usize, within: Duration) -> Vec<Received> {
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + within;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => out.push(m),
                _ => panic!(
                    "only {} of {n} messages within {within:?}: {out:?}",
                    out.len()
                ),
            }
        }
        out
    }
}

impl Drop for TickSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
