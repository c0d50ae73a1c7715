//! [`Metrics`]: the feed's counters, rendered as Prometheus text format 0.0.4.
//!
//! Hand-rolled on atomics: a handful of series do not justify a metrics framework, and the
//! publisher bumps these counters from its hot loop.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ticks::Currency;

/// Upper bounds (seconds) of the request-duration histogram buckets. A history answer from SQLite
/// is usually well under 10 ms; the tail up to the 10 s request timeout is what the top buckets
/// are for.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The counters of one pricefeed process. Share it as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    ticks_published: [AtomicU64; Currency::ALL.len()],
    slots_missed: [AtomicU64; Currency::ALL.len()],
    store_errors: AtomicU64,
    source_errors: Mutex<BTreeMap<(String, String), u64>>,
    requests_by_status: Mutex<BTreeMap<u16, u64>>,
    /// Requests per bucket, *not* cumulative (the renderer sums them); beyond the last bucket a
    /// request is counted only in `request_count`.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_sum_micros: AtomicU64,
    request_count: AtomicU64,
    answers_by_source: [AtomicU64; AnswerSource::ALL.len()],
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    streams_open: AtomicU64,
    streams_refused: AtomicU64,
}

/// Where a `/v1/ticks` answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerSource {
    /// The same question was answered at the same store version before.
    Cache,
    /// The tail of the store held in memory.
    Memory,
    /// Blocks of older ticks held in memory (and the tail, for what follows them), some perhaps
    /// read from SQLite for this answer.
    Blocks,
    /// SQLite.
    Store,
}

impl AnswerSource {
    const ALL: [AnswerSource; 4] = [
        AnswerSource::Cache,
        AnswerSource::Memory,
        AnswerSource::Blocks,
        AnswerSource::Store,
    ];

    fn label(self) -> &'static str {
        match self {
            AnswerSource::Cache => "cache",
            AnswerSource::Memory => "memory",
            AnswerSource::Blocks => "blocks",
            AnswerSource::Store => "store",
        }
    }
}

fn index(currency: Currency) -> usize {
    Currency::ALL
        .iter()
        .position(|c| *c == currency)
        .unwrap_or_default()
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// `pricefeed_ticks_published_total{currency}`.
    pub fn tick_published(&self, currency: Currency) {
        self.ticks_published[index(currency)].fetch_add(1, Ordering::Relaxed);
    }

    /// `pricefeed_source_errors_total{source,kind}`.
    pub fn source_error(&self, source: &str, kind: &str) {
        let mut errors = self
            .source_errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *errors
            .entry((source.to_string(), kind.to_string()))
            .or_default() += 1;
    }

    /// `pricefeed_slots_missed_total{currency}`: a slot with no valid price, or whose tick could
    /// not be stored (and so was not published).
    pub fn slot_missed(&self, currency: Currency) {
        self.slots_missed[index(currency)].fetch_add(1, Ordering::Relaxed);
    }

    /// `pricefeed_store_errors_total`: a tick or a gap the publisher could not write.
    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// `pricefeed_history_answers_total{source}`.
    pub fn history_answer(&self, source: AnswerSource) {
        self.answers_by_source[source as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `pricefeed_history_requests_total{status}` and
    /// `pricefeed_history_request_duration_seconds`.
    pub fn history_request(&self, status: u16, latency: Duration) {
        *self
            .requests_by_status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(status)
            .or_default() += 1;
        let seconds = latency.as_secs_f64();
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|le| seconds <= *le) {
            self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.request_count.fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP connection was accepted (`opened`) or ended.
    pub fn history_connection(&self, opened: bool) {
        if opened {
            self.connections_open.fetch_add(1, Ordering::Relaxed);
        } else {
            self.connections_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// An HTTP connection was closed at once: its address already held its share.
    pub fn history_connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// An SSE stream opened (`opened`) or ended.
    pub fn stream_open(&self, opened: bool) {
        if opened {
            self.streams_open.fetch_add(1, Ordering::Relaxed);
        } else {
            self.streams_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// An SSE stream was refused: as many were open as the server serves.
    pub fn stream_refused(&self) {
        self.streams_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Every series, in Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        header(
            &mut out,
            "pricefeed_ticks_published_total",
            "counter",
            "Ticks published, by currency.",
        );
        for (c, n) in Currency::ALL.iter().zip(&self.ticks_published) {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "pricefeed_ticks_published_total{{currency=\"{c}\"}} {n}"
            );
        }
        header(
            &mut out,
            "pricefeed_slots_missed_total",
            "counter",
            "Slots that got no tick, by currency: no source gave a valid price, or the tick could not be stored.",
        );
        for (c, n) in Currency::ALL.iter().zip(&self.slots_missed) {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "pricefeed_slots_missed_total{{currency=\"{c}\"}} {n}");
        }
        header(
            &mut out,
            "pricefeed_store_errors_total",
            "counter",
            "Ticks and gaps the publisher could not write to the history store.",
        );
        let _ = writeln!(
            out,
            "pricefeed_store_errors_total {}",
            self.store_errors.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "pricefeed_source_errors_total",
            "counter",
            "Failed price-source polls, by source and kind of failure.",
        );
        for ((source, kind), n) in self
            .source_errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "pricefeed_source_errors_total{{source=\"{}\",kind=\"{}\"}} {n}",
                escape(source),
                escape(kind)
            );
        }
        header(
            &mut out,
            "pricefeed_history_requests_total",
            "counter",
            "HTTP requests answered by the history API, by status code.",
        );
        for (status, n) in self
            .requests_by_status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "pricefeed_history_requests_total{{status=\"{status}\"}} {n}"
            );
        }
        header(
            &mut out,
            "pricefeed_history_connections",
            "gauge",
            "HTTP connections open to the history API.",
        );
        let _ = writeln!(
            out,
            "pricefeed_history_connections {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "pricefeed_history_connections_refused_total",
            "counter",
            "HTTP connections closed at once because their client address held its share already.",
        );
        let _ = writeln!(
            out,
            "pricefeed_history_connections_refused_total {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "pricefeed_history_streams",
            "gauge",
            "Server-Sent Events streams open (GET /v1/stream).",
        );
        let _ = writeln!(
            out,
            "pricefeed_history_streams {}",
            self.streams_open.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "pricefeed_history_streams_refused_total",
            "counter",
            "Server-Sent Events streams refused with 503 because as many were open as the server serves.",
        );
        let _ = writeln!(
            out,
            "pricefeed_history_streams_refused_total {}",
            self.streams_refused.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "pricefeed_history_answers_total",
            "counter",
            "Tick pages answered, by where they came from: cache (the same question at the same \
             store version), memory (the recent tail), blocks (older ticks held in memory) or \
             store (SQLite).",
        );
        for (source, n) in AnswerSource::ALL.iter().zip(&self.answers_by_source) {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "pricefeed_history_answers_total{{source=\"{}\"}} {n}",
                source.label()
            );
        }
        header(
            &mut out,
            "pricefeed_history_request_duration_seconds",
            "histogram",
            "Time to answer an HTTP request of the history API.",
        );
        let mut cumulative = 0;
        for (le, n) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "pricefeed_history_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let count = self.request_count.load(Ordering::Relaxed);
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "pricefeed_history_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "pricefeed_history_request_duration_seconds_sum {sum}");
        let _ = writeln!(
            out,
            "pricefeed_history_request_duration_seconds_count {count}"
        );
        out
    }
}

pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Label values escape `\`, `"` and newlines (text format 0.0.4).
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_with_exact_values() {
        let m = Metrics::new();
        m.tick_published(Currency::USD);
        m.tick_published(Currency::USD);
        m.tick_published(Currency::EUR);
        m.slot_missed(Currency::EUR);
        m.store_error();
        m.source_error("kraken", "timeout");
        m.source_error("kraken", "timeout");
        m.source_error("odd \"name\"\\", "http\n500");
        m.history_request(200, Duration::from_micros(800));
        m.history_request(200, Duration::from_millis(30));
        m.history_request(400, Duration::from_secs(11));
        m.history_answer(AnswerSource::Memory);
        m.history_answer(AnswerSource::Memory);
        m.history_answer(AnswerSource::Store);
        let text = m.render();
        for line in [
            "# TYPE pricefeed_ticks_published_total counter",
            "pricefeed_ticks_published_total{currency=\"USD\"} 2",
            "pricefeed_ticks_published_total{currency=\"EUR\"} 1",
            "# HELP pricefeed_slots_missed_total Slots that got no tick, by currency: no source gave a valid price, or the tick could not be stored.",
            "pricefeed_slots_missed_total{currency=\"USD\"} 0",
            "pricefeed_slots_missed_total{currency=\"EUR\"} 1",
            "# TYPE pricefeed_store_errors_total counter",
            "pricefeed_store_errors_total 1",
            "pricefeed_source_errors_total{source=\"kraken\",kind=\"timeout\"} 2",
            r#"pricefeed_source_errors_total{source="odd \"name\"\\",kind="http\n500"} 1"#,
            "pricefeed_history_requests_total{status=\"200\"} 2",
            "pricefeed_history_requests_total{status=\"400\"} 1",
            "pricefeed_history_answers_total{source=\"cache\"} 0",
            "pricefeed_history_answers_total{source=\"memory\"} 2",
            "pricefeed_history_answers_total{source=\"store\"} 1",
            "# TYPE pricefeed_history_request_duration_seconds histogram",
            "pricefeed_history_request_duration_seconds_bucket{le=\"0.001\"} 1",
            "pricefeed_history_request_duration_seconds_bucket{le=\"0.025\"} 1",
            "pricefeed_history_request_duration_seconds_bucket{le=\"0.05\"} 2",
            "pricefeed_history_request_duration_seconds_bucket{le=\"10\"} 2",
            "pricefeed_history_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "pricefeed_history_request_duration_seconds_sum 11.0308",
            "pricefeed_history_request_duration_seconds_count 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
