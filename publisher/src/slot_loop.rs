//! The slot loop: sample, store, publish, once per slot of the wall-clock grid.
//!
//! Order matters for the invariant "a published tick is in the store": a tick is committed to
//! SQLite before it is handed to the broker, and a tick that cannot be stored is not published (the
//! slot becomes a gap with reason `store_unavailable`). A slot with no valid price publishes
//! nothing and is recorded as a gap. Sampling has a deadline inside the slot, so a slow source
//! never shifts the grid; if the process falls behind anyway (suspended, overloaded), the skipped
//! slots are recorded as a gap and the loop rejoins the grid.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use history_api::Metrics;
use history_store::HistoryStore;
use price_sources::{Quote, Sample, SourceChain, SourceKind};
use serde::Serialize;
use ticks::{Currency, GAPS_TOPIC, Gap, GapReason, Interval, STATUS_TOPIC, Tick, Timedate};
use tokio_util::sync::CancellationToken;

use crate::clock::WallClock;
use crate::leadership::{Gate, Role};
use crate::mqtt::MqttLink;

/// Where ticks, gaps and status go once stored. A trait so the slot loop can be tested without a
/// broker.
pub trait TickSink: Send + Sync {
    fn publish_tick(&self, tick: &Tick);
    /// A gap as far as it is known: a gap still growing comes again with the same start.
    fn publish_gap(&self, gap: &Gap);
    fn publish_status(&self, status: &FeedStatus);
    /// The node starts (true) or stops (false) being the one that publishes. Nothing to do for
    /// a single node, which always is.
    fn set_active(&self, _active: bool) {}
}

impl TickSink for MqttLink {
    fn publish_tick(&self, tick: &Tick) {
        if let Err(e) = self.publish(tick.topic(), tick.payload(), true) {
            tracing::warn!(topic = tick.topic(), timedate = %tick.timedate, error = %e,
                "tick stored but not published live; clients will backfill it");
        }
    }

    fn publish_gap(&self, gap: &Gap) {
        if let Err(e) = self.publish(GAPS_TOPIC, gap.payload(), false) {
            tracing::warn!(error = %e, "gap stored but not published live; clients will find it in history");
        }
    }

    fn publish_status(&self, status: &FeedStatus) {
        if let Err(e) = self.publish(STATUS_TOPIC, status.to_json(), true) {
            tracing::warn!(error = %e, "status not published");
        }
    }
}

/// Whether a display should trust the last price, as `pricefeed/status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedState {
    /// Every currency got a tick in the last slot.
    Live,
    /// Some currencies did not.
    Degraded,
    /// None did.
    Down,
    /// The publisher stopped or vanished (also its MQTT will).
    Offline,
}

/// The feed's state as announced, retained, on `pricefeed/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedStatus {
    pub state: FeedState,
    /// The slot this status describes.
    pub slot: Option<Timedate>,
    /// Per currency, the slot the current run of missing ticks started at, if any.
    pub missing_since: BTreeMap<Currency, Timedate>,
    pub interval: String,
    /// The feed runs on the offline demo source: these are not market prices.
    pub demo: bool,
    /// In a cluster, the node that publishes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
}

impl FeedStatus {
    pub fn offline(interval: Interval, demo: bool) -> FeedStatus {
        FeedStatus {
            state: FeedState::Offline,
            slot: None,
            missing_since: BTreeMap::new(),
            interval: interval.to_string(),
            demo,
            node: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("status serializes")
    }
}

/// Gives the prices of one slot. [`SourceChain`] in production; scripted in tests that run under
/// tokio's paused time, where real sockets would race the auto-advancing clock.
pub trait Sampler: Send + Sync {
    /// Prices for the wanted currencies, answering by `deadline`.
    fn sample(
        &self,
        wanted: &[Currency],
        deadline: tokio::time::Instant,
    ) -> impl std::future::Future<Output = Sample> + Send;

    /// Whether the prices are invented (the demo source).
    fn uses_demo(&self) -> bool;

    /// A second opinion on `currency`, from any source but `except`, by `deadline`.
    fn confirm(
        &self,
        currency: Currency,
        except: SourceKind,
        deadline: tokio::time::Instant,
    ) -> impl std::future::Future<Output = Option<Quote>> + Send;
}

impl Sampler for SourceChain {
    fn sample(
        &self,
        wanted: &[Currency],
        deadline: tokio::time::Instant,
    ) -> impl std::future::Future<Output = Sample> + Send {
        SourceChain::sample(self, wanted, deadline)
    }

    fn uses_demo(&self) -> bool {
        SourceChain::uses_demo(self)
    }

    async fn confirm(
        &self,
        currency: Currency,
        except: SourceKind,
        deadline: tokio::time::Instant,
    ) -> Option<Quote> {
        let (quote, failures) = SourceChain::confirm(self, currency, except, deadline).await;
        if quote.is_none() {
            tracing::debug!(failures = failures.len(), "no second source answered");
        }
        quote
    }
}

/// Everything the slot loop needs.
pub struct SlotLoop<S> {
    pub interval: Interval,
    pub currencies: Vec<Currency>,
    pub chain: S,
    pub store: HistoryStore,
    pub sink: Arc<dyn TickSink>,
    pub metrics: Arc<Metrics>,
    pub clock: WallClock,
    /// In a cluster: who publishes. `None`: this node always does.
    pub gate: Option<Gate>,
    /// In a cluster: this node's id, named in the status.
    pub node: Option<u64>,
    /// A price that moved more than this fraction from the last tick (within the last
    /// [`JUMP_REFERENCE_SLOTS`]) is published only if a second source confirms it.
    pub max_move: Option<f64>,
}

/// How recent the last tick must be to judge a move against it: a price after a longer outage is
/// not compared, so a real move seen by a single source is published after this many slots.
pub const JUMP_REFERENCE_SLOTS: i64 = 12;

/// How close a second source's price must be to confirm a jump.
pub const CONFIRM_WITHIN: f64 = 0.01;

/// How far into the slot sampling may run: a source that answers later is too late for this slot.
fn sampling_budget(interval: Interval) -> Duration {
    let i = interval.as_duration();
    i.saturating_sub((i / 5).min(Duration::from_millis(500)))
}

impl<S: Sampler> SlotLoop<S> {
    /// Runs until `shutdown`. Returns the number of slots processed (published or recorded as
    /// gaps by this node).
    pub async fn run(self, shutdown: CancellationToken) -> u64 {
        let demo = self.chain.uses_demo();
        let mut slot = self.interval.slot_at_or_after(self.clock.now());
        let mut status = FeedStatus {
            state: FeedState::Live,
            slot: None,
            missing_since: BTreeMap::new(),
            interval: self.interval.to_string(),
            demo,
            node: self.node,
        };
        let mut announced: Option<FeedStatus> = None;
        let mut active = false;
        let mut processed = 0;
        loop {
            // Until the wall clock reads the slot: one stepped back while this sleeps (NTP) reads
            // earlier than the slot on waking, and the slot is not due yet.
            loop {
                tokio::select! {
                    _ = self.clock.sleep_until(slot) => {}
                    _ = shutdown.cancelled() => return processed,
                }
                if self.clock.now() >= slot {
                    break;
                }
            }
            if self.gate.as_ref().is_some_and(|g| g.role() != Role::Active) {
                if active {
                    active = false;
                    self.sink.set_active(false);
                    tracing::warn!(slot = %slot, node = ?self.node, "no longer the publishing node");
                }
                slot = self.next_slot(slot, false).await;
                continue;
            }
            if !active {
                // Starting, or taking over: the slots since the last stored tick had no
                // publisher. A new status is announced, this node's.
                active = true;
                self.sink.set_active(true);
                self.record_downtime(slot).await;
                announced = None;
                status.missing_since.clear();
                if let Some(node) = self.node {
                    tracing::info!(slot = %slot, node, "this node publishes");
                }
            }
            // One stepped ahead while this slept (NTP, a VM resumed) may read past the slot's end:
            // a price sampled now is not this slot's. The slots jumped over are a gap, not filled.
            let now = self.clock.now();
            if now >= slot.next(self.interval) {
                let due = self.interval.slot_at_or_after(now);
                tracing::warn!(from = %slot, until = %due, "the wall clock jumped past this slot; the slots jumped over are a gap");
                for currency in &self.currencies {
                    self.record_gap(*currency, slot, due, GapReason::PublisherDown)
                        .await;
                }
                slot = due;
                continue;
            }
            let deadline = self.clock.instant_at(slot) + sampling_budget(self.interval);
            let sample = tokio::select! {
                sample = self.chain.sample(&self.currencies, deadline) => sample,
                _ = shutdown.cancelled() => return processed,
            };
            // The last word before anything is stored or published for this slot.
            if let Some(gate) = &self.gate
                && !gate.confirm().await
            {
                tracing::warn!(slot = %slot, "lost the election while sampling; this slot is not ours");
                slot = self.next_slot(slot, false).await;
                continue;
            }
            self.settle(slot, sample, deadline, &mut status).await;
            processed += 1;
            // Announce changes of state only: a status per slot would be noise on a retained topic.
            let changed = announced
                .as_ref()
                .is_none_or(|a| a.state != status.state || a.missing_since != status.missing_since);
            if changed {
                self.sink.publish_status(&status);
                announced = Some(status.clone());
            }
            slot = self.next_slot(slot, true).await;
        }
    }

    /// The slot after `slot`, or, if the process fell behind the grid (suspended, overloaded), the
    /// one due now, the skipped ones recorded as a gap when this node publishes.
    async fn next_slot(&self, slot: Timedate, publishing: bool) -> Timedate {
        let next = slot.next(self.interval);
        let due = self.interval.slot_at_or_after(self.clock.now());
        if due > next && publishing {
            tracing::warn!(from = %next, until = %due, "fell behind the slot grid; skipping slots");
            for currency in &self.currencies {
                self.record_gap(*currency, next, due, GapReason::PublisherDown)
                    .await;
            }
        }
        due.max(next)
    }

    /// Stores and publishes the ticks of one slot, records the currencies that got none.
    async fn settle(
        &self,
        slot: Timedate,
        sample: Sample,
        deadline: tokio::time::Instant,
        status: &mut FeedStatus,
    ) {
        for failure in &sample.failures {
            self.metrics
                .source_error(failure.source.name(), failure.error.kind());
        }
        let mut got = 0;
        for &currency in &self.currencies {
            let Some(quote) = sample.quotes.iter().find(|q| q.currency == currency) else {
                tracing::warn!(currency = %currency, slot = %slot, "no source gave a valid price; no tick for this slot");
                self.miss_slot(currency, slot, GapReason::SourcesUnavailable, status)
                    .await;
                continue;
            };
            if !self.plausible_move(slot, quote, deadline).await {
                self.metrics
                    .source_error(quote.source.name(), "unconfirmed_jump");
                self.miss_slot(currency, slot, GapReason::PriceUnconfirmed, status)
                    .await;
                continue;
            }
            let tick = Tick {
                currency,
                timedate: slot,
                price: quote.price,
            };
            match self.store.insert_tick(tick).await {
                Ok(_) => {
                    tracing::debug!(currency = %currency, timedate = %slot, price = %tick.price, source = %quote.source, "tick");
                    self.sink.publish_tick(&tick);
                    self.metrics.tick_published(currency);
                    status.missing_since.remove(&currency);
                    got += 1;
                }
                Err(e) => {
                    tracing::error!(currency = %currency, slot = %slot, error = %e,
                        "cannot store the tick, so it is not published");
                    self.metrics.store_error();
                    self.miss_slot(currency, slot, GapReason::StoreUnavailable, status)
                        .await;
                }
            }
        }
        status.slot = Some(slot);
        status.state = match got {
            0 => FeedState::Down,
            n if n == self.currencies.len() => FeedState::Live,
            _ => FeedState::Degraded,
        };
    }

    /// A slot of `currency` that gets no tick: counted, recorded as a gap of `reason`, and noted
    /// in the status.
    async fn miss_slot(
        &self,
        currency: Currency,
        slot: Timedate,
        reason: GapReason,
        status: &mut FeedStatus,
    ) {
        self.metrics.slot_missed(currency);
        self.record_gap(currency, slot, slot.next(self.interval), reason)
            .await;
        status.missing_since.entry(currency).or_insert(slot);
    }

    /// Whether `quote` may be published: it moved no more than `max_move` from the last tick (if
    /// that is recent), or a second source confirms it.
    async fn plausible_move(
        &self,
        slot: Timedate,
        quote: &Quote,
        deadline: tokio::time::Instant,
    ) -> bool {
        let Some(max_move) = self.max_move else {
            return true;
        };
        let last = match self.store.latest(quote.currency).await {
            Ok(Some(last)) => last,
            _ => return true,
        };
        let window = self.interval.as_duration().as_millis() as i64 * JUMP_REFERENCE_SLOTS;
        if slot.unix_millis() - last.timedate.unix_millis() > window {
            return true;
        }
        let (from, to) = (last.price.as_f64(), quote.price.as_f64());
        let moved = (to - from).abs() / from;
        if moved <= max_move {
            return true;
        }
        let second = self
            .chain
            .confirm(quote.currency, quote.source, deadline)
            .await;
        match second {
            Some(second) if (second.price.as_f64() - to).abs() / to <= CONFIRM_WITHIN => {
                tracing::info!(currency = %quote.currency, from = %last.price, to = %quote.price,
                    source = %quote.source, confirmed_by = %second.source, "a large move, confirmed by a second source");
                true
            }
            other => {
                tracing::warn!(currency = %quote.currency, slot = %slot, from = %last.price, to = %quote.price,
                    source = %quote.source, second = ?other.map(|q| (q.source, q.price.to_string())),
                    "a price moved more than --max-move and no second source confirmed it; not published");
                false
            }
        }
    }

    /// On starting to publish: the slots between the last stored tick and now had no publisher.
    async fn record_downtime(&self, first_slot: Timedate) {
        for &currency in &self.currencies {
            match self.store.latest(currency).await {
                Ok(Some(last)) if last.timedate.next(self.interval) < first_slot => {
                    let from = self.interval.slot_of(last.timedate).next(self.interval);
                    tracing::info!(currency = %currency, from = %from, until = %first_slot, "recording the downtime since the last tick as a gap");
                    self.record_gap(currency, from, first_slot, GapReason::PublisherDown)
                        .await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the last tick to record downtime")
                }
            }
        }
    }

    /// Records a gap and publishes it as the store now holds it: a gap that continues an earlier
    /// one of its currency (same reason, touching) is published with that one's start.
    async fn record_gap(
        &self,
        currency: Currency,
        from: Timedate,
        until: Timedate,
        reason: GapReason,
    ) {
        let gap = Gap {
            currency,
            from,
            until,
            reason,
        };
        match self.store.record_gap(gap).await {
            Ok(Some(recorded)) => self.sink.publish_gap(&recorded),
            Ok(None) => {}
            Err(e) => {
                self.metrics.store_error();
                tracing::error!(currency = %currency, from = %from, until = %until, error = %e, "cannot record a gap")
            }
        }
    }
}
