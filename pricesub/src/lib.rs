//! Subscribe to the BTC price feed with nothing missing and nothing twice: the `pricesub` command
//! and its Rust SDK.
//!
//! [`subscribe`] gives a stream of [`FeedEvent`]s: every tick of the chosen currencies, in
//! timedate order per currency, each exactly once, and the gaps the server recorded as they are
//! reached. With a `since`, it first replays history from that time. Across lost connections it
//! reconnects (to the next broker, with capped, jittered backoff) and backfills from the last tick
//! it delivered, so a consumer never sees the outage except as a pause.
//!
//! # Why the hand-off is gapless
//!
//! The publisher stores a tick *before* it publishes it. The client subscribes and waits for the
//! SUBACK, buffering whatever arrives, and only then asks history for everything since the last
//! tick it delivered. A tick published before the SUBACK was stored before the history request, so
//! the backfill has it; a tick published after the SUBACK is in the buffer. The union covers
//! everything, and a tick is delivered only if it is newer than the last one delivered for its
//! currency, which removes the overlap. A live tick that skips ahead of the expected next slot (a
//! publish the broker dropped) triggers a history fetch of the hole before it is delivered.
//!
//! # Layout
//!
//! - [`subscribe`], [`SubscriberConfig`], [`FeedEvent`]: the SDK.
//! - [`history`]: the history API client (paging, failover).
//! - `main.rs`: the command: flags, printing lines, exit codes.

pub mod history;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS};
use ticks::{BrokerUrl, Currency, Gap, Interval, Tick, Timedate};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use history::{Backfill, HistoryClient, HistoryError};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Live ticks kept while a backfill runs; a backfill this slow is retried from scratch.
const BUFFER_MAX: usize = 100_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection attempts before an unreachable broker at start-up is reported as an error.
const FIRST_ATTEMPTS: u32 = 3;

/// What the stream delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// The next tick of its currency.
    Tick(Tick),
    /// The server recorded no ticks for this span (source outage, publisher down).
    Gap(Gap),
}

/// What ends a subscription.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("{0}")]
    Config(String),
    /// The message carries the history error's own (not as a `source`, so a chain printed with
    /// its causes does not say it twice).
    #[error("cannot backfill: {0}")]
    History(HistoryError),
    #[error("cannot subscribe at {broker}: {reason}")]
    Broker { broker: String, reason: String },
}

impl From<HistoryError> for SubscribeError {
    fn from(e: HistoryError) -> Self {
        SubscribeError::History(e)
    }
}

/// Where to subscribe and what to replay. [`SubscriberConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Brokers, tried in turn on reconnect.
    pub brokers: Vec<BrokerUrl>,
    /// History API base URLs (`http://host:8080`), tried in order.
    pub history: Vec<String>,
    pub currencies: Vec<Currency>,
    /// Replay history from this time (inclusive) before following live.
    pub since: Option<Timedate>,
    /// Timeout of one history request.
    pub history_timeout: Duration,
    /// MQTT client id prefix; a random suffix keeps two subscribers from taking over each other.
    pub client_id: String,
}

/// The history API's port in a single-node deployment, where it runs beside the broker.
pub const DEFAULT_HISTORY_PORT: u16 = 8080;

/// Timeout of one history request unless configured.
pub const DEFAULT_HISTORY_TIMEOUT: Duration = Duration::from_secs(10);

impl SubscriberConfig {
    /// Every currency, live only (no `since`), history at [`default_history_url`] of the first
    /// broker, a 10 s history timeout, client ids starting `pricesub`.
    pub fn new(brokers: Vec<BrokerUrl>) -> SubscriberConfig {
        SubscriberConfig {
            history: brokers
                .first()
                .map(default_history_url)
                .into_iter()
                .collect(),
            brokers,
            currencies: Currency::ALL.to_vec(),
            since: None,
            history_timeout: DEFAULT_HISTORY_TIMEOUT,
            client_id: "pricesub".into(),
        }
    }
}

/// Where the history API of a single-node feed is, given its broker: the same host, port 8080.
pub fn default_history_url(broker: &BrokerUrl) -> String {
    format!("http://{}:{DEFAULT_HISTORY_PORT}", broker.url_host())
}

/// Why a text is not a `since`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither a time (2026-11-24T01:40:00Z, unix seconds) nor a duration ago (10m)")]
pub struct BadSince(pub String);

/// Reads a `since` as users write it: an RFC 3339 time, unix seconds, or a duration before `now`
/// (`10m`, `2h`).
pub fn parse_since(s: &str, now: Timedate) -> Result<Timedate, BadSince> {
    if let Ok(t) = Timedate::parse_user(s) {
        return Ok(t);
    }
    humantime::parse_duration(s)
        .map(|ago| now.saturating_sub(ago))
        .map_err(|_| BadSince(s.to_string()))
}

/// A running subscription. Dropping it stops it.
pub struct Subscription {
    rx: mpsc::Receiver<Result<FeedEvent, SubscribeError>>,
    stop: CancellationToken,
}

impl Subscription {
    /// The next event; `None` once stopped. An `Err` is final.
    pub async fn next(&mut self) -> Option<Result<FeedEvent, SubscribeError>> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a subscription in the background.
pub fn subscribe(config: SubscriberConfig) -> Result<Subscription, SubscribeError> {
    if config.brokers.is_empty() {
        return Err(SubscribeError::Config("no broker given".into()));
    }
    if config.currencies.is_empty() {
        return Err(SubscribeError::Config("no currency given".into()));
    }
    if config.since.is_some() && config.history.is_empty() {
        return Err(SubscribeError::Config(
            "--since needs a history server (--history URL)".into(),
        ));
    }
    let history = HistoryClient::new(&config.history, config.history_timeout)?;
    let (tx, rx) = mpsc::channel(1024);
    let stop = CancellationToken::new();
    let mut state = Follower {
        config,
        history,
        tx,
        last: BTreeMap::new(),
        reported: HashSet::new(),
        interval: None,
        resume_from: None,
        subscribed_once: false,
    };
    let token = stop.clone();
    tokio::spawn(async move {
        if let Err(e) = state.run(token).await {
            let _ = state.tx.send(Err(e)).await;
        }
    });
    Ok(Subscription { rx, stop })
}

/// How a connection ended.
enum SessionEnd {
    Stopped,
    /// The consumer dropped the stream.
    Gone,
    Lost(String),
}

struct Follower {
    config: SubscriberConfig,
    history: HistoryClient,
    tx: mpsc::Sender<Result<FeedEvent, SubscribeError>>,
    /// The last delivered timedate per currency.
    last: BTreeMap<Currency, Timedate>,
    /// Gaps already reported, by (currency, start).
    reported: HashSet<(Currency, Timedate)>,
    interval: Option<Interval>,
    /// Where to backfill from for currencies with nothing delivered yet, after a reconnect.
    resume_from: Option<Timedate>,
    /// Whether any connection got as far as its SUBACK.
    subscribed_once: bool,
}

impl Follower {
    async fn run(&mut self, stop: CancellationToken) -> Result<(), SubscribeError> {
        let mut backoff = BACKOFF_MIN;
        let mut broker = 0;
        let mut first = true;
        let mut attempts = 0;
        self.resume_from = self.config.since;
        loop {
            let url = self.config.brokers[broker % self.config.brokers.len()].clone();
            let started = tokio::time::Instant::now();
            attempts += 1;
            match self.session(&url, first, &stop).await? {
                SessionEnd::Stopped | SessionEnd::Gone => return Ok(()),
                // Before the first subscription a broken broker address is the user's to fix; a
                // few tries first, so a busy broker (thousands of clients arriving at once) is not
                // mistaken for a wrong address.
                SessionEnd::Lost(reason) if !self.subscribed_once && attempts >= FIRST_ATTEMPTS => {
                    return Err(SubscribeError::Broker {
                        broker: url.to_string(),
                        reason,
                    });
                }
                SessionEnd::Lost(why) if self.subscribed_once => {
                    tracing::warn!(broker = %url, reason = %why, "connection lost; reconnecting");
                }
                SessionEnd::Lost(why) => {
                    tracing::debug!(broker = %url, reason = %why, "first connection failed; trying again");
                }
            }
            first = !self.subscribed_once;
            // A connection that lived a while earns a fresh backoff.
            if started.elapsed() > BACKOFF_MAX * 3 {
                backoff = BACKOFF_MIN;
            }
            let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = stop.cancelled() => return Ok(()),
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            broker += 1;
        }
    }

    /// One connection: subscribe, buffer, backfill, drain, follow.
    async fn session(
        &mut self,
        broker: &BrokerUrl,
        first: bool,
        stop: &CancellationToken,
    ) -> Result<SessionEnd, SubscribeError> {
        let client_id = format!("{}-{:08x}", self.config.client_id, fastrand::u32(..));
        let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let mut buffer: Vec<Tick> = Vec::new();

        // Connect and subscribe, buffering from the moment a publish can arrive.
        for currency in &self.config.currencies {
            if client
                .try_subscribe(currency.topic(), QoS::AtLeastOnce)
                .is_err()
            {
                return Ok(SessionEnd::Lost("subscribe queue full".into()));
            }
        }
        let mut acks = 0;
        let subscribed = tokio::time::timeout(CONNECT_TIMEOUT, async {
            while acks < self.config.currencies.len() {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack)))
                        if ack.code != ConnectReturnCode::Success =>
                    {
                        return Err(SessionEnd::Lost(format!("refused: {:?}", ack.code)));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => acks += 1,
                    Ok(Event::Incoming(Packet::Publish(p))) => buffer_tick(&mut buffer, &p),
                    Ok(_) => {}
                    Err(e) => return Err(SessionEnd::Lost(e.to_string())),
                }
            }
            Ok(())
        })
        .await;
        match subscribed {
            Ok(Ok(())) => {}
            Ok(Err(end)) => return Ok(end),
            Err(_) => return Ok(SessionEnd::Lost("no SUBACK within 10 s".into())),
        }
        self.subscribed_once = true;
        let replay = if first && self.config.since.is_none() {
            // Nothing to replay; remember where we started, so a later reconnect backfills from here.
            self.resume_from = Some(Timedate::now());
            None
        } else {
            self.backfill_start()
        };

        // Backfill while still polling, so live ticks keep arriving into the buffer.
        if let Some(from) = replay {
            let wanted = self.config.currencies.clone();
            let history = self.history.clone();
            let fetch = history.fetch(&wanted, from);
            tokio::pin!(fetch);
            let backfill = loop {
                tokio::select! {
                    result = &mut fetch => break result,
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            buffer_tick(&mut buffer, &p);
                            if buffer.len() > BUFFER_MAX {
                                return Ok(SessionEnd::Lost("backfill too slow; live buffer full".into()));
                            }
                        }
                        Ok(_) => {}
                        Err(e) => return Ok(SessionEnd::Lost(e.to_string())),
                    },
                    _ = stop.cancelled() => return Ok(SessionEnd::Stopped),
                }
            };
            match backfill {
                Ok(b) => {
                    if b.since_before_earliest && first {
                        tracing::warn!(
                            "the history server does not hold ticks that far back; replaying what it has"
                        );
                    }
                    if !self.deliver_backfill(b).await {
                        return Ok(SessionEnd::Gone);
                    }
                }
                // At start-up a history problem is the user's to fix: say so and stop.
                Err(e) if first => return Err(e.into()),
                Err(e) => return Ok(SessionEnd::Lost(format!("backfill failed: {e}"))),
            }
        }

        // Drain the buffer, then follow live.
        buffer.sort_by_key(|t| (t.timedate, t.currency));
        for tick in buffer {
            if !self.deliver_live(tick).await {
                return Ok(SessionEnd::Gone);
            }
        }
        loop {
            tokio::select! {
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        match Tick::from_message(&p.topic, &p.payload) {
                            Ok(tick) => {
                                if !self.deliver_live(tick).await {
                                    return Ok(SessionEnd::Gone);
                                }
                            }
                            Err(e) => tracing::warn!(topic = %p.topic, error = %e, "ignoring a message that is not a tick"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Ok(SessionEnd::Lost(e.to_string())),
                },
                _ = stop.cancelled() => {
                    let _ = client.try_disconnect();
                    return Ok(SessionEnd::Stopped);
                }
            }
        }
    }

    /// The earliest time any wanted currency needs history from, or `None` if there is no need.
    fn backfill_start(&self) -> Option<Timedate> {
        self.config
            .currencies
            .iter()
            .filter_map(|c| match self.last.get(c) {
                Some(last) => Timedate::from_unix_millis(last.unix_millis() + 1),
                None => self.resume_from,
            })
            .min()
    }

    /// Delivers a backfill: ticks newer than what was delivered, and gaps, in time order.
    async fn deliver_backfill(&mut self, backfill: Backfill) -> bool {
        if backfill.interval.is_some() {
            self.interval = backfill.interval;
        }
        let mut events: Vec<(Timedate, u8, FeedEvent)> = Vec::new();
        for gap in backfill.gaps {
            if self.config.currencies.contains(&gap.currency) {
                events.push((gap.from, 0, FeedEvent::Gap(gap)));
            }
        }
        for (_, ticks) in backfill.ticks {
            for tick in ticks {
                events.push((tick.timedate, 1, FeedEvent::Tick(tick)));
            }
        }
        events.sort_by_key(|(t, kind, e)| {
            let currency = match e {
                FeedEvent::Tick(t) => t.currency,
                FeedEvent::Gap(g) => g.currency,
            };
            (*t, currency, *kind)
        });
        for (_, _, event) in events {
            if !self.emit(event).await {
                return false;
            }
        }
        true
    }

    /// Delivers a live tick unless already delivered; fetches a hole before it from history.
    async fn deliver_live(&mut self, tick: Tick) -> bool {
        let last = self.last.get(&tick.currency).copied();
        if last.is_some_and(|last| tick.timedate <= last) {
            return true;
        }
        if let (Some(last), Some(interval)) = (last, self.interval)
            && tick.timedate > last.next(interval)
        {
            // The broker skipped something (or the publisher could not publish it live): history has
            // it, or knows why not.
            let from = Timedate::from_unix_millis(last.unix_millis() + 1).unwrap_or(last);
            match self.history.fetch(&[tick.currency], from).await {
                Ok(mut b) => {
                    for ticks in b.ticks.values_mut() {
                        ticks.retain(|t| t.timedate < tick.timedate);
                    }
                    b.gaps.retain(|g| g.from < tick.timedate);
                    if !self.deliver_backfill(b).await {
                        return false;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fetch the ticks missed before a live tick")
                }
            }
        }
        self.emit(FeedEvent::Tick(tick)).await
    }

    /// Sends one event if it is new; false when the consumer is gone.
    async fn emit(&mut self, event: FeedEvent) -> bool {
        match &event {
            FeedEvent::Tick(tick) => {
                let already = self
                    .last
                    .get(&tick.currency)
                    .is_some_and(|last| tick.timedate <= *last);
                // Live and retained ticks older than the asked-for `since` are not part of the answer.
                let too_early = self.config.since.is_some_and(|since| tick.timedate < since);
                if already || too_early {
                    return true;
                }
                self.last.insert(tick.currency, tick.timedate);
            }
            FeedEvent::Gap(gap) => {
                if !self.reported.insert((gap.currency, gap.from)) {
                    return true;
                }
            }
        }
        self.tx.send(Ok(event)).await.is_ok()
    }
}

fn buffer_tick(buffer: &mut Vec<Tick>, p: &rumqttc::Publish) {
    match Tick::from_message(&p.topic, &p.payload) {
        Ok(tick) => buffer.push(tick),
        Err(e) => {
            tracing::warn!(topic = %p.topic, error = %e, "ignoring a message that is not a tick")
        }
    }
}
