//! The publisher's MQTT connection, the same code for the embedded broker and an external one.
//!
//! rumqttc's event loop must be polled forever in its own task, and when the broker is down each
//! poll fails at once, so polling in a plain loop spins a core. The loop here backs off (capped,
//! with jitter so a fleet of publishers does not reconnect in lock-step) and resets on CONNACK.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use broker_config::Credentials;
use rumqttc::{
    AsyncClient, ClientError, ConnectReturnCode, Event, LastWill, MqttOptions, Packet, QoS,
};
use ticks::BrokerUrl;
use tokio_util::sync::CancellationToken;

/// Queued publishes while the broker is unreachable; past this, live publishes are dropped (the
/// ticks are stored, and clients backfill them from history).
const QUEUE: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why a publish was not queued.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the MQTT publish queue is full (broker unreachable for a while)")]
    QueueFull,
    #[error("the MQTT connection is closed")]
    Closed,
}

/// Where and as whom a [`MqttLink`] connects.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Tried in turn: after a failed or lost connection, the next one.
    pub brokers: Vec<BrokerUrl>,
    pub credentials: Credentials,
    /// The start of the client id: each attempt connects as `<client_id>-<16 random hex digits>`.
    pub client_id: String,
    /// Published retained on this topic by the broker if we vanish without a clean disconnect.
    pub will: Option<(String, String)>,
}

impl LinkOptions {
    fn mqtt_options(&self, attempt: usize) -> MqttOptions {
        let url = &self.brokers[attempt % self.brokers.len()];
        // Unguessable: an anonymous client connecting with our id would take the session over and
        // knock us off the broker, over and over. New on every attempt: a clustered broker
        // reconnected to under the old id goes looking for the old session on the node that held
        // it (dead, when that is why we reconnect), and may end it with its will, about a client
        // that is alive.
        let client_id = format!("{}-{:016x}", self.client_id, fastrand::u64(..));
        let mut opts = MqttOptions::new(client_id, url.host.clone(), url.port);
        opts.set_credentials(
            self.credentials.username.clone(),
            self.credentials.password.clone(),
        );
        opts.set_keep_alive(Duration::from_secs(15));
        opts.set_clean_session(true);
        if let Some((topic, payload)) = &self.will {
            opts.set_last_will(LastWill::new(
                topic.as_str(),
                payload.clone(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        opts
    }
}

/// A retained message published again on every (re)connection.
type Birth = Arc<std::sync::Mutex<Option<(String, String)>>>;

/// A publishing connection kept alive in the background.
pub struct MqttLink {
    client: AsyncClient,
    connected: Arc<AtomicBool>,
    birth: Birth,
    /// Ends true when the link closed cleanly: our DISCONNECT went out, or it was not connected.
    task: tokio::task::JoinHandle<bool>,
}

impl MqttLink {
    /// Connects in the background; publishes queue until a broker accepts us.
    pub fn start(options: LinkOptions, shutdown: CancellationToken) -> MqttLink {
        assert!(!options.brokers.is_empty(), "a link needs a broker");
        let (client, mut eventloop) = AsyncClient::new(options.mqtt_options(0), QUEUE);
        // Both currencies' ticks are written at once: the second must not wait for the broker to
        // acknowledge the first (Nagle's algorithm).
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let connected = Arc::new(AtomicBool::new(false));
        let birth = Birth::default();
        let task = tokio::spawn(drive(
            eventloop,
            options,
            connected.clone(),
            (client.clone(), birth.clone()),
            shutdown,
        ));
        MqttLink {
            client,
            connected,
            birth,
            task,
        }
    }

    /// Publishes `payload` retained on `topic` now and again after every reconnection, so that
    /// whatever a broker published there meanwhile (an old session's will) is overwritten.
    pub fn publish_on_every_connect(
        &self,
        topic: &str,
        payload: String,
    ) -> Result<(), PublishError> {
        *self.birth.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((topic.to_string(), payload.clone()));
        self.publish(topic, payload, true)
    }

    /// True while the broker has accepted our connection.
    pub fn connected(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Queues a QoS 1 publish without waiting.
    pub fn publish(&self, topic: &str, payload: String, retain: bool) -> Result<(), PublishError> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .map_err(|e| match e {
                ClientError::TryRequest(_) => PublishError::QueueFull,
                _ => PublishError::Closed,
            })
    }

    /// Sends what is queued, disconnects cleanly (so the will is not published), and stops.
    /// False when that could not be done: the connection broke first, or `within` ran out. Then
    /// the broker publishes the will, if this link has one.
    pub async fn close(self, within: Duration) -> bool {
        let _ = tokio::time::timeout(within, self.client.disconnect()).await;
        let mut task = self.task;
        match tokio::time::timeout(within, &mut task).await {
            Ok(Ok(clean)) => clean,
            Ok(Err(_)) => false,
            Err(_) => {
                task.abort();
                false
            }
        }
    }
}

/// Keeps the connection up until shutdown; true if it then ended cleanly (see [`MqttLink::close`]).
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    options: LinkOptions,
    connected: Arc<AtomicBool>,
    (client, birth): (AsyncClient, Birth),
    shutdown: CancellationToken,
) -> bool {
    let mut attempt = 0;
    let mut url = options.brokers[0].clone();
    let mut backoff = BACKOFF_MIN;
    let mut disconnecting = false;
    // Failed attempts since the last CONNACK: the first and every 20th (about every 100 s at the
    // capped backoff) are logged, so an unreachable broker is visible without flooding the log.
    let mut failures: u64 = 0;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            // After shutdown we keep polling until our DISCONNECT is out (close() bounds this).
            _ = shutdown.cancelled(), if !disconnecting => {
                disconnecting = true;
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                connected.store(true, Ordering::Relaxed);
                backoff = BACKOFF_MIN;
                failures = 0;
                let birth = birth.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some((topic, payload)) = birth {
                    let _ = client.try_publish(topic, QoS::AtLeastOnce, true, payload);
                }
                tracing::info!(broker = %url, "connected to the MQTT broker");
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                connected.store(false, Ordering::Relaxed);
                return true;
            }
            Ok(_) => {}
            Err(e) => {
                let was_connected = connected.swap(false, Ordering::Relaxed);
                if disconnecting {
                    return !was_connected;
                }
                failures += 1;
                let loud = failures == 1 || failures.is_multiple_of(20);
                match &e {
                    rumqttc::ConnectionError::ConnectionRefused(
                        code @ (ConnectReturnCode::BadUserNamePassword
                        | ConnectReturnCode::NotAuthorized),
                    ) if loud => tracing::error!(
                        broker = %url,
                        code = ?code,
                        "the broker refused the publisher's credentials (check --broker-password and the broker's ACL); ticks are stored but not published"
                    ),
                    _ if was_connected => {
                        tracing::warn!(broker = %url, error = %e, "lost the MQTT broker; reconnecting")
                    }
                    _ if loud => tracing::warn!(
                        broker = %url,
                        error = %e,
                        attempts = failures,
                        "cannot reach the MQTT broker; ticks are stored but not published until it answers"
                    ),
                    _ => tracing::debug!(broker = %url, error = %e, "MQTT broker unreachable"),
                }
                let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
                tokio::select! {
                    _ = tokio::time::sleep(backoff + jitter) => {}
                    _ = shutdown.cancelled() => return true,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                if options.brokers.len() > 1 {
                    attempt += 1;
                    url = options.brokers[attempt % options.brokers.len()].clone();
                    eventloop.mqtt_options = options.mqtt_options(attempt);
                }
            }
        }
    }
}
