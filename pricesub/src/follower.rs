//! The subscription's state machine: connect, subscribe and buffer, backfill, drain, follow live,
//! and start again on the next broker when the connection is lost.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use ticks::{BrokerUrl, Currency, GAPS_TOPIC, Gap, Interval, STATUS_TOPIC, Tick, Timedate};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::SubscriberConfig;
use crate::event::{FeedEvent, Out, SubscribeError};
use crate::history::{Backfill, HistoryClient, HistoryError};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Live messages kept while a backfill runs; a backfill this slow is retried from scratch.
const BUFFER_MAX: usize = 100_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between tries while starting: a network coming up is tried often.
const START_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A history answer that does not yet hold what the broker already delivered (a replica whose
/// recorder is behind its broker) is asked again this often, this many times, a different
/// replica each time when there are several, before the answer is taken as it is.
const LAG_RETRY: Duration = Duration::from_millis(250);
const LAG_TRIES: usize = 20;
/// Backfilled events per message to the consumer.
const BATCH: usize = 1024;

/// A message from the broker that matters to a subscription.
#[derive(Debug, Clone)]
enum Live {
    Tick(Tick),
    Gap(Gap),
    /// The `pricefeed/status` payload.
    Status(String),
}

/// How a connection ended.
enum SessionEnd {
    Stopped,
    /// The consumer dropped the stream.
    Gone,
    Lost(String),
}

pub(crate) struct Follower {
    config: SubscriberConfig,
    history: HistoryClient,
    pub(crate) tx: mpsc::Sender<Out>,
    /// The last delivered timedate per currency.
    last: BTreeMap<Currency, Timedate>,
    /// Gaps already reported: the furthest end reported, by (currency, start).
    reported: HashMap<(Currency, Timedate), Timedate>,
    /// Per currency, the end of the latest gap reported: no tick is due before it.
    covered_until: BTreeMap<Currency, Timedate>,
    interval: Option<Interval>,
    /// Where to backfill from for currencies with nothing delivered yet, after a reconnect.
    resume_from: Option<Timedate>,
    /// Whether any connection got as far as its SUBACK.
    subscribed_once: bool,
    /// Until the subscription first follows live: when start-up gives up on unreachable servers.
    start_deadline: Option<tokio::time::Instant>,
    /// Whether the current connection proved itself: connected, subscribed, backfilled, live.
    proved: bool,
    /// The next connection waits at least this long: a busy history server asked for it.
    retry_after: Option<Duration>,
}

impl Follower {
    pub(crate) fn new(
        config: SubscriberConfig,
        history: HistoryClient,
        tx: mpsc::Sender<Out>,
    ) -> Follower {
        Follower {
            resume_from: config.since,
            last: config.resume_after.clone(),
            config,
            history,
            tx,
            reported: HashMap::new(),
            covered_until: BTreeMap::new(),
            interval: None,
            subscribed_once: false,
            start_deadline: None,
            proved: false,
            retry_after: None,
        }
    }

    /// A busy history server said when to come back: the next try waits at least that long.
    fn note_busy(&mut self, error: &HistoryError) {
        if let HistoryError::Busy { retry_after, .. } = error {
            self.retry_after = Some(*retry_after);
        }
    }

    /// Still starting, and start-up's time for unreachable servers is up.
    fn start_expired(&self) -> bool {
        self.start_deadline
            .is_some_and(|deadline| tokio::time::Instant::now() >= deadline)
    }

    pub(crate) async fn run(&mut self, stop: CancellationToken) -> Result<(), SubscribeError> {
        let mut backoff = BACKOFF_MIN;
        let mut broker = 0;
        let mut first = true;
        let mut attempts = 0;
        self.start_deadline = Some(tokio::time::Instant::now() + self.config.start_within);
        loop {
            let url = self.config.brokers[broker % self.config.brokers.len()].clone();
            let started = tokio::time::Instant::now();
            attempts += 1;
            self.proved = false;
            match self.session(&url, first, &stop).await? {
                SessionEnd::Stopped | SessionEnd::Gone => return Ok(()),
                // Before the first subscription a broken broker address is the user's to fix, once
                // start-up's time is up (every broker tried at least once): a network still coming
                // up, or a busy broker (thousands of clients arriving at once), is not mistaken
                // for a wrong address.
                SessionEnd::Lost(reason)
                    if !self.subscribed_once
                        && self.start_expired()
                        && attempts >= self.config.brokers.len() =>
                {
                    return Err(SubscribeError::Broker {
                        broker: url.to_string(),
                        reason,
                    });
                }
                SessionEnd::Lost(why) if self.start_deadline.is_none() => {
                    tracing::warn!(broker = %url, reason = %why, "connection lost; reconnecting");
                }
                // Still starting: the error, if it comes to that, says why in one line.
                SessionEnd::Lost(why) => {
                    tracing::debug!(broker = %url, reason = %why, "not following yet; trying again");
                }
            }
            first = !self.subscribed_once;
            // A connection that proved itself (subscribed, backfilled, followed live), or lived a
            // while, earns a fresh backoff: on a path that drops every connection after a few
            // seconds, each try succeeds and the next one should come at once.
            if self.proved || started.elapsed() > BACKOFF_MAX * 3 {
                backoff = BACKOFF_MIN;
            }
            if self.start_deadline.is_some() {
                backoff = backoff.min(START_BACKOFF_MAX);
            }
            let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
            let wait = (backoff + jitter).max(self.retry_after.take().unwrap_or_default());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
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
        // rumqttc keeps a slot for each publish in flight (100 by default, 6 KB per connection);
        // a subscriber publishes nothing.
        opts.set_inflight(2);
        if let Some((user, password)) = &self.config.credentials {
            opts.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        // rumqttc preallocates a queue of 100 events (14 KB) per connection, and as a ring it comes
        // to touch all of it; this one grows to what the connection needs (a few at a time).
        eventloop.state.events = std::collections::VecDeque::new();
        let mut buffer: Vec<Live> = Vec::new();

        // Connect and subscribe, buffering from the moment a publish can arrive. The gaps topic
        // is asked for too (a broker whose ACL predates it refuses it, and then gaps are learnt
        // from history as the next tick reveals them), and the status, whose retained copy says
        // the interval at once: without it a hole before a live tick cannot be told from a gap
        // until a first answer from history.
        // All in one SUBSCRIBE: one packet and one SUBACK each way instead of four, which for
        // thousands of clients reconnecting at once is work the broker and the network skip.
        // At QoS 0: the session is clean, so QoS 1 would promise nothing beyond this one TCP
        // connection, which delivers in order anyway; a tick the broker drops (its queue for a
        // stalled client full, which drops at QoS 1 too) is a hole the next tick reveals and
        // history fills. QoS 1 cost a PUBACK per tick and an in-flight entry in the
        // broker for every delivery.
        let topics: Vec<SubscribeFilter> = self
            .config
            .currencies
            .iter()
            .map(|c| c.topic())
            .chain([GAPS_TOPIC, STATUS_TOPIC])
            .map(|topic| SubscribeFilter::new(topic.to_owned(), QoS::AtMostOnce))
            .collect();
        if client.try_subscribe_many(topics).is_err() {
            return Ok(SessionEnd::Lost("subscribe queue full".into()));
        }
        let subscribed = tokio::time::timeout(CONNECT_TIMEOUT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack)))
                        if ack.code != ConnectReturnCode::Success =>
                    {
                        return Err(SessionEnd::Lost(format!("refused: {:?}", ack.code)));
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let refused = self
                            .config
                            .currencies
                            .iter()
                            .zip(&ack.return_codes)
                            .filter(|(_, code)| matches!(code, SubscribeReasonCode::Failure))
                            .map(|(c, _)| c.topic())
                            .collect::<Vec<_>>();
                        if !refused.is_empty() {
                            tracing::warn!(
                                ?refused,
                                "the broker refused these topics: no live ticks will come on them"
                            );
                        }
                        break;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => self.buffer(&mut buffer, &p),
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
        let replay = if first && self.config.since.is_none() && self.last.is_empty() {
            // Nothing to replay; remember where we started, so a later reconnect backfills from here.
            self.resume_from = Some(Timedate::now());
            None
        } else {
            self.backfill_start()
        };

        // Backfill while still polling, so live messages keep arriving into the buffer. An answer
        // that does not reach the first buffered tick of a currency (a replica behind its broker)
        // is asked again.
        if let Some(from) = replay {
            let wanted = self.config.currencies.clone();
            let mut tries = 0;
            let backfill = loop {
                let history = self.history.clone();
                // Boxed, for the same reason as in `deliver_live`.
                let mut fetch = Box::pin(history.fetch_starting_at(tries, &wanted, from));
                let result = loop {
                    tokio::select! {
                        result = &mut fetch => break result,
                        event = eventloop.poll() => match event {
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                self.buffer(&mut buffer, &p);
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
                let needed = first_buffered_ticks(&buffer);
                match result {
                    Ok(b) if tries + 1 < LAG_TRIES && !covers(&b, from, &needed) => {
                        tries += 1;
                        tracing::debug!(tries, "history is behind the broker; asking again");
                        let pause = tokio::time::sleep(LAG_RETRY);
                        tokio::pin!(pause);
                        loop {
                            tokio::select! {
                                _ = &mut pause => break,
                                event = eventloop.poll() => match event {
                                    Ok(Event::Incoming(Packet::Publish(p))) => self.buffer(&mut buffer, &p),
                                    Ok(_) => {}
                                    Err(e) => return Ok(SessionEnd::Lost(e.to_string())),
                                },
                                _ = stop.cancelled() => return Ok(SessionEnd::Stopped),
                            }
                        }
                    }
                    other => break other,
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
                // At start-up a history server that does not answer (or answers 5xx) is tried
                // again until start-up's time is up; then, or for any other problem (a bad URL,
                // a refused question), it is the user's to fix: say so and stop.
                Err(e) if self.start_deadline.is_some() => {
                    self.note_busy(&e);
                    let retryable =
                        matches!(e, HistoryError::Unavailable(_) | HistoryError::Busy { .. })
                            || matches!(
                                e,
                                HistoryError::Refused { status, .. } if status >= 500
                            );
                    if !retryable || self.start_expired() {
                        return Err(e.into());
                    }
                    return Ok(SessionEnd::Lost(format!("backfill failed: {e}")));
                }
                Err(e) => {
                    self.note_busy(&e);
                    return Ok(SessionEnd::Lost(format!("backfill failed: {e}")));
                }
            }
        }

        // Drain the buffer, then follow live.
        // A status says how the feed stands now: it goes first (the sort is stable).
        buffer.sort_by_key(|m| match m {
            Live::Tick(t) => Some((t.timedate, t.currency)),
            Live::Gap(g) => Some((g.from, g.currency)),
            Live::Status(_) => None,
        });
        for message in buffer {
            if !self.deliver_live(message).await {
                return Ok(SessionEnd::Gone);
            }
        }
        if self.tx.send(Out::One(Ok(FeedEvent::Live))).await.is_err() {
            return Ok(SessionEnd::Gone);
        }
        self.proved = true;
        self.start_deadline = None;
        loop {
            tokio::select! {
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(message) = self.parse(&p)
                            && !self.deliver_live(message).await
                        {
                            return Ok(SessionEnd::Gone);
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

    /// A tick of a wanted currency, a gap of one, or the status (which also tells the interval);
    /// anything else is logged and dropped.
    fn parse(&mut self, p: &rumqttc::Publish) -> Option<Live> {
        if p.topic == STATUS_TOPIC {
            #[derive(serde::Deserialize)]
            struct Status {
                interval: String,
            }
            match serde_json::from_slice::<Status>(&p.payload)
                .map_err(|e| e.to_string())
                .and_then(|s| s.interval.parse::<Interval>())
            {
                Ok(interval) => self.interval = Some(interval),
                Err(error) => {
                    tracing::debug!(%error, "a status without an interval");
                    return None;
                }
            }
            return std::str::from_utf8(&p.payload)
                .ok()
                .map(|text| Live::Status(text.to_owned()));
        }
        let parsed = if p.topic == GAPS_TOPIC {
            Gap::from_payload(&p.payload)
                .map(Live::Gap)
                .map_err(|e| e.to_string())
        } else {
            Tick::from_message(&p.topic, &p.payload)
                .map(Live::Tick)
                .map_err(|e| e.to_string())
        };
        match parsed {
            Ok(Live::Gap(gap)) if !self.config.currencies.contains(&gap.currency) => None,
            Ok(message) => Some(message),
            Err(error) => {
                tracing::warn!(topic = %p.topic, %error, "ignoring a message that is neither a tick nor a gap");
                None
            }
        }
    }

    fn buffer(&mut self, buffer: &mut Vec<Live>, p: &rumqttc::Publish) {
        if let Some(message) = self.parse(p) {
            buffer.push(message);
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
        let (len, events) = in_order(backfill, &self.config.currencies);
        // Handed over in batches: one channel message per BATCH events, not one per tick.
        let mut batch = Vec::with_capacity(len.min(BATCH));
        for event in events {
            if self.is_news(&event) {
                batch.push(event);
            }
            if batch.len() == BATCH && !self.send_batch(&mut batch).await {
                return false;
            }
        }
        batch.is_empty() || self.send_batch(&mut batch).await
    }

    /// Sends the events gathered, leaving `batch` empty; false when the consumer is gone.
    async fn send_batch(&mut self, batch: &mut Vec<FeedEvent>) -> bool {
        let events = std::mem::take(batch);
        self.tx.send(Out::Many(events)).await.is_ok()
    }

    /// Delivers a live message: a gap at once; a tick unless already delivered, after fetching
    /// from history the hole before it if it skips slots that no reported gap explains.
    async fn deliver_live(&mut self, message: Live) -> bool {
        let tick = match message {
            Live::Gap(gap) => return self.emit(FeedEvent::Gap(gap)).await,
            Live::Status(status) => return self.emit(FeedEvent::Status(status)).await,
            Live::Tick(tick) => tick,
        };
        let last = self.last.get(&tick.currency).copied();
        if last.is_some_and(|last| tick.timedate <= last) {
            return true;
        }
        // Where this currency's stream stands: after the last tick delivered, or, before any, at
        // the start asked for (a backfill that came back without this currency's newest ticks,
        // from a replica that stayed behind for all its tries, must not let the first live tick
        // jump over them).
        let start = match last {
            Some(last) => self
                .interval
                .map(|i| (last.saturating_add(Duration::from_millis(1)), last.next(i))),
            None => self
                .resume_from
                .zip(self.interval)
                .map(|(from, i)| (from, i.slot_at_or_after(from))),
        };
        if let Some((from, next)) = start {
            let due = self
                .covered_until
                .get(&tick.currency)
                .map_or(next, |&c| c.max(next));
            // Boxed: the fetch is rare, and unboxed its state would size this connection's task
            // for its whole life.
            if tick.timedate > due && !Box::pin(self.fill_hole(&tick, from)).await {
                return false;
            }
        }
        self.emit(FeedEvent::Tick(tick)).await
    }

    /// The broker skipped something before `tick` (or the publisher could not publish it live):
    /// history has it from `from`, or knows why not. False if the consumer is gone.
    async fn fill_hole(&mut self, tick: &Tick, from: Timedate) -> bool {
        let needed = BTreeMap::from([(tick.currency, tick.timedate)]);
        let mut tries = 0;
        let fetched = loop {
            match self
                .history
                .fetch_starting_at(tries, &[tick.currency], from)
                .await
            {
                Ok(b) if tries + 1 < LAG_TRIES && !covers(&b, from, &needed) => {
                    tries += 1;
                    tokio::time::sleep(LAG_RETRY).await;
                }
                other => break other,
            }
        };
        match fetched {
            Ok(mut b) => {
                if !covers(&b, from, &needed) {
                    tracing::warn!(currency = %tick.currency, from = %from, until = %tick.timedate,
                        "history did not catch up with the broker in time; ticks before this one may be missing");
                }
                for ticks in b.ticks.values_mut() {
                    ticks.retain(|t| t.timedate < tick.timedate);
                }
                b.gaps.retain(|g| g.from < tick.timedate);
                self.deliver_backfill(b).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the ticks missed before a live tick");
                true
            }
        }
    }

    /// Sends one event if it is news; false when the consumer is gone.
    async fn emit(&mut self, event: FeedEvent) -> bool {
        !self.is_news(&event) || self.tx.send(Out::One(Ok(event))).await.is_ok()
    }

    /// Whether an event is news (a tick newer than the last delivered of its currency and not
    /// before `since`, a gap or a longer gap), taking note of it as delivered if so.
    fn is_news(&mut self, event: &FeedEvent) -> bool {
        match event {
            FeedEvent::Tick(tick) => {
                let already = self
                    .last
                    .get(&tick.currency)
                    .is_some_and(|last| tick.timedate <= *last);
                // Live and retained ticks older than the asked-for `since` are not part of the answer.
                let too_early = self.config.since.is_some_and(|since| tick.timedate < since);
                if already || too_early {
                    return false;
                }
                self.last.insert(tick.currency, tick.timedate);
            }
            FeedEvent::Gap(gap) => {
                // A gap still growing comes again with the same start and a later end.
                let known = self
                    .reported
                    .entry((gap.currency, gap.from))
                    .or_insert(gap.from);
                if gap.until <= *known {
                    return false;
                }
                *known = gap.until;
                let covered = self.covered_until.entry(gap.currency).or_insert(gap.until);
                *covered = (*covered).max(gap.until);
            }
            FeedEvent::Live | FeedEvent::Status(_) => {}
        }
        true
    }
}

/// A backfill's ticks, and its gaps of `currencies`, in the order they are delivered: by time, then
/// currency, a gap before a tick; and how many there are. Each currency's list is merged as it
/// comes (oldest first, as history sends it; sorted first if a server did not), with no list of
/// all the events to build and sort.
fn in_order(
    backfill: Backfill,
    currencies: &[Currency],
) -> (usize, impl Iterator<Item = FeedEvent> + use<>) {
    let mut gaps: Vec<Gap> = backfill
        .gaps
        .into_iter()
        .filter(|g| currencies.contains(&g.currency))
        .collect();
    gaps.sort_by_key(|g| (g.from, g.currency));
    let mut len = gaps.len();
    let mut gaps = gaps.into_iter().peekable();
    let mut lists: Vec<_> = backfill
        .ticks
        .into_values()
        .map(|mut ticks| {
            if !ticks.is_sorted_by_key(|t| t.timedate) {
                ticks.sort_by_key(|t| t.timedate);
            }
            len += ticks.len();
            ticks.into_iter().peekable()
        })
        .collect();
    let events = std::iter::from_fn(move || {
        let mut next = gaps.peek().map(|g| ((g.from, g.currency, 0u8), None));
        for (i, list) in lists.iter_mut().enumerate() {
            if let Some(t) = list.peek() {
                let key = (t.timedate, t.currency, 1u8);
                if next.as_ref().is_none_or(|(k, _)| key < *k) {
                    next = Some((key, Some(i)));
                }
            }
        }
        match next? {
            (_, None) => gaps.next().map(FeedEvent::Gap),
            (_, Some(i)) => lists[i].next().map(FeedEvent::Tick),
        }
    });
    (len, events)
}

/// The first buffered tick of each currency: what a backfill must reach.
fn first_buffered_ticks(buffer: &[Live]) -> BTreeMap<Currency, Timedate> {
    let mut first = BTreeMap::new();
    for message in buffer {
        if let Live::Tick(t) = message {
            let at = first.entry(t.currency).or_insert(t.timedate);
            *at = (*at).min(t.timedate);
        }
    }
    first
}

/// Whether `backfill`, asked from `from`, accounts for every slot of each currency in `needed`
/// before the time given: each is a tick in it or lies inside a gap it reports. A replica whose
/// recorder is behind its broker answers without the newest ticks, and that is what this catches.
fn covers(backfill: &Backfill, from: Timedate, needed: &BTreeMap<Currency, Timedate>) -> bool {
    let Some(interval) = backfill.interval else {
        return true;
    };
    needed.iter().all(|(&currency, &until)| {
        // The first slot the answer does not account for.
        let mut reach = match backfill.ticks.get(&currency).and_then(|t| t.last()) {
            Some(last) => last.timedate.next(interval),
            None => interval.slot_at_or_after(from),
        };
        let mut gaps: Vec<&Gap> = backfill
            .gaps
            .iter()
            .filter(|g| g.currency == currency)
            .collect();
        gaps.sort_by_key(|g| g.from);
        for gap in gaps {
            if gap.from <= reach {
                reach = reach.max(gap.until);
            }
        }
        reach >= until
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticks::GapReason;

    fn at(s: i64) -> Timedate {
        Timedate::from_unix_millis(1_700_000_000_000 + s * 1000).unwrap()
    }

    fn backfill(usd: &[i64], gaps: &[(i64, i64)]) -> Backfill {
        Backfill {
            ticks: BTreeMap::from([(
                Currency::USD,
                usd.iter()
                    .map(|&s| Tick {
                        currency: Currency::USD,
                        timedate: at(s),
                        price: "1".parse().unwrap(),
                    })
                    .collect(),
            )]),
            gaps: gaps
                .iter()
                .map(|&(f, u)| Gap {
                    currency: Currency::USD,
                    from: at(f),
                    until: at(u),
                    reason: GapReason::SourcesUnavailable,
                })
                .collect(),
            interval: Some(Interval::DEFAULT),
            since_before_earliest: false,
        }
    }

    /// The merge delivers what the sort it replaced did: by time, then currency, a gap before a
    /// tick; gaps of currencies not asked for left out; a list sent out of order put in order.
    #[test]
    fn a_backfill_is_delivered_by_time_then_currency_a_gap_before_a_tick() {
        use Currency::{EUR, USD};
        let tick = |currency, s| Tick {
            currency,
            timedate: at(s),
            price: "1".parse().unwrap(),
        };
        let gap = |currency, from, until| Gap {
            currency,
            from: at(from),
            until: at(until),
            reason: GapReason::SourcesUnavailable,
        };
        let make = || Backfill {
            ticks: BTreeMap::from([
                (
                    USD,
                    vec![tick(USD, 0), tick(USD, 5), tick(USD, 10), tick(USD, 25)],
                ),
                // Out of order, as no server should send it.
                (
                    EUR,
                    vec![tick(EUR, 5), tick(EUR, 0), tick(EUR, 25), tick(EUR, 10)],
                ),
            ]),
            // Out of order too, one at the time of ticks of both currencies, and two with one
            // start (a gap reported as it grew), which keep their order.
            gaps: vec![
                gap(USD, 15, 25),
                gap(EUR, 10, 15),
                gap(EUR, 15, 20),
                gap(EUR, 15, 25),
                gap(USD, 10, 12),
            ],
            interval: Some(Interval::DEFAULT),
            since_before_earliest: false,
        };
        // What the code did before the merge: one list of every event, stably sorted.
        let sorted = |backfill: Backfill, currencies: &[Currency]| {
            let mut events = Vec::new();
            for g in backfill.gaps {
                if currencies.contains(&g.currency) {
                    events.push((g.from, 0u8, FeedEvent::Gap(g)));
                }
            }
            for (_, ticks) in backfill.ticks {
                for t in ticks {
                    events.push((t.timedate, 1u8, FeedEvent::Tick(t)));
                }
            }
            events.sort_by_key(|(t, kind, e)| {
                let currency = match e {
                    FeedEvent::Tick(t) => t.currency,
                    FeedEvent::Gap(g) => g.currency,
                    FeedEvent::Live | FeedEvent::Status(_) => USD,
                };
                (*t, currency, *kind)
            });
            events.into_iter().map(|(_, _, e)| e).collect::<Vec<_>>()
        };
        for currencies in [&[USD, EUR][..], &[USD][..]] {
            let (len, merged) = in_order(make(), currencies);
            let merged: Vec<FeedEvent> = merged.collect();
            assert_eq!(merged, sorted(make(), currencies), "{currencies:?}");
            assert_eq!(len, merged.len());
        }
        // Spelled out for the first events, so that the test does not rest on the old code alone.
        let (_, merged) = in_order(make(), &[USD, EUR]);
        let first: Vec<FeedEvent> = merged.take(7).collect();
        assert_eq!(
            first,
            [
                FeedEvent::Tick(tick(USD, 0)),
                FeedEvent::Tick(tick(EUR, 0)),
                FeedEvent::Tick(tick(USD, 5)),
                FeedEvent::Tick(tick(EUR, 5)),
                FeedEvent::Gap(gap(USD, 10, 12)),
                FeedEvent::Tick(tick(USD, 10)),
                FeedEvent::Gap(gap(EUR, 10, 15)),
            ]
        );
    }

    /// The check that tells a lagging replica from a complete one.
    #[test]
    fn an_answer_covers_what_the_broker_delivered_only_up_to_its_newest_tick_or_gap() {
        let need = |s| BTreeMap::from([(Currency::USD, at(s))]);
        // Ticks 0, 5, 10; the broker delivered 15: complete.
        assert!(covers(&backfill(&[0, 5, 10], &[]), at(0), &need(15)));
        // The broker delivered 20: the answer lacks 15.
        assert!(!covers(&backfill(&[0, 5, 10], &[]), at(0), &need(20)));
        // ... unless a gap explains it, however many gaps it takes.
        assert!(covers(
            &backfill(&[0, 5, 10], &[(15, 20)]),
            at(0),
            &need(20)
        ));
        assert!(covers(
            &backfill(&[0, 5], &[(10, 15), (15, 25)]),
            at(0),
            &need(25)
        ));
        assert!(!covers(&backfill(&[0, 5], &[(15, 25)]), at(0), &need(25)));
        // Nothing stored after `from`: only a tick in the slot right after it is covered.
        assert!(covers(&backfill(&[], &[]), at(1), &need(5)));
        assert!(!covers(&backfill(&[], &[]), at(1), &need(10)));
        // A currency the broker delivered nothing of needs nothing.
        assert!(covers(&backfill(&[], &[]), at(0), &BTreeMap::new()));
    }
}
