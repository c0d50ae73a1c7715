//! Why a source gave no price, and why a chain could not be built.

use std::time::Duration;

use ticks::Price;

use crate::{PLAUSIBLE, SourceKind};

/// Why one request to one source produced no price (for one currency, or for all it was asked).
///
/// Messages say what happened in terms an operator can act on; [`SourceError::kind`] is the stable
/// label for metrics and alerts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// No complete answer within the request's time budget (connect, headers and body together).
    #[error("request timed out after {}", format_millis(*after))]
    Timeout { after: Duration },

    /// Connection refused or reset, DNS, TLS, or a broken body stream. `detail` is the whole cause
    /// chain, flattened, so the error stays cloneable.
    #[error("transport error: {detail}")]
    Transport { detail: String },

    /// A non-2xx status other than a rate limit. `message` is the vendor's error text when the body
    /// carried one.
    #[error("HTTP {status} {reason}{}", suffix(message.as_deref()))]
    HttpStatus {
        status: u16,
        reason: String,
        message: Option<String>,
    },

    /// HTTP 429, or a vendor error body saying the same (Kraken and Coinbase say it with HTTP 200
    /// or 4xx). `what` is the status line or the vendor's message.
    #[error("{what} (rate limited)")]
    RateLimited { what: String },

    /// The body is not JSON: an HTML error page, an empty body, text. `start` is its first line,
    /// clipped.
    #[error("{}", not_json_message(start))]
    NotJson { start: String },

    /// The body was larger than we are willing to read; the rest was not downloaded.
    #[error("body is larger than {limit} bytes; not read past that")]
    TooLarge { limit: usize },

    /// A well-formed JSON error answer from the vendor ("Kraken error: EQuery:Unknown asset pair").
    #[error("{vendor} error: {message}")]
    ErrorBody {
        vendor: &'static str,
        message: String,
    },

    /// A field the price is read from is absent, or has the wrong type or value. `path` names it
    /// as in `result.XXBTZUSD.c[0]`.
    #[error("{}", missing_field_message(path, mismatch.as_ref()))]
    MissingField {
        path: String,
        mismatch: Option<Mismatch>,
    },

    /// The price field is there but is not a positive decimal: `"0"`, `"-5"`, `"NaN"`, `null`.
    #[error("{reason} at {path}")]
    BadPrice { path: String, reason: String },

    /// The vendor's own timestamp of its answer (CoinDesk's `time.updatedISO`, Bitstamp's
    /// `timestamp`) is older than the chain's maximum age: a frozen source (a stale mirror, a
    /// cache, a vendor that stopped updating) whose price is not live.
    #[error(
        "the answer is dated {at}, {} s ago (more than {} s): a frozen source, not a live price",
        age.as_secs(),
        max.as_secs()
    )]
    Stale {
        at: ticks::Timedate,
        age: Duration,
        max: Duration,
    },

    /// Not asked: the source failed every request of its last `failures` samples in a row, and its
    /// circuit breaker skips it until it is probed again.
    #[error(
        "skipped: it failed {failures} samples in a row; asked again in {} s",
        retry_in.as_secs().max(1)
    )]
    CircuitOpen { failures: u32, retry_in: Duration },

    /// A valid price outside [`PLAUSIBLE`].
    #[error(
        "implausible price {price} (outside {}..={}) at {path}",
        PLAUSIBLE.start(),
        PLAUSIBLE.end()
    )]
    ImplausiblePrice { path: String, price: Price },
}

/// What a field held instead of what we needed, both described for a reader ("null", "an object").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub found: String,
    pub expected: String,
}

impl SourceError {
    /// A stable label for metrics: `timeout`, `transport`, `http_status`, `rate_limited`,
    /// `not_json`, `error_body`, `missing_field`, `bad_price`, `implausible_price`, `stale` or
    /// `circuit_open` (skipped, not asked).
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Timeout { .. } => "timeout",
            SourceError::Transport { .. } => "transport",
            SourceError::HttpStatus { .. } => "http_status",
            SourceError::RateLimited { .. } => "rate_limited",
            // An oversized body is, for every purpose, a body we could not read as JSON.
            SourceError::NotJson { .. } | SourceError::TooLarge { .. } => "not_json",
            SourceError::ErrorBody { .. } => "error_body",
            SourceError::MissingField { .. } => "missing_field",
            SourceError::BadPrice { .. } => "bad_price",
            SourceError::ImplausiblePrice { .. } => "implausible_price",
            SourceError::Stale { .. } => "stale",
            SourceError::CircuitOpen { .. } => "circuit_open",
        }
    }

    pub(crate) fn not_json(body: &[u8]) -> SourceError {
        let text = String::from_utf8_lossy(body);
        let first_line = text.trim_start().lines().next().unwrap_or("");
        SourceError::NotJson {
            start: clip(first_line, 40),
        }
    }
}

fn format_millis(d: Duration) -> String {
    // Sub-millisecond digits are noise in a timeout message ("299ms 999us 712ns").
    let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(millis)).to_string()
}

fn suffix(message: Option<&str>) -> String {
    message.map(|m| format!(": {m}")).unwrap_or_default()
}

fn not_json_message(start: &str) -> String {
    if start.is_empty() {
        "body is empty or blank, not JSON".to_string()
    } else {
        format!("body is not JSON (starts with {start:?})")
    }
}

fn missing_field_message(path: &str, mismatch: Option<&Mismatch>) -> String {
    match (mismatch, path.is_empty()) {
        (None, _) => format!("missing field {path}"),
        (Some(m), true) => format!("body is {}, expected {}", m.found, m.expected),
        (Some(m), false) => format!("field {path} is {}, expected {}", m.found, m.expected),
    }
}

/// At most `max` characters of vendor-controlled text, control characters blanked, so a hostile
/// server cannot flood or forge log lines.
pub(crate) fn clip(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// A source name that is not one of [`SourceKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown price source {0:?} (expected one of kraken, coinbase, bitstamp, coingecko, coindesk, demo)"
)]
pub struct UnknownSource(pub String);

/// Why a [`SourceChain`](crate::SourceChain) cannot be built. Each is a configuration mistake to fix
/// before starting, not something to retry.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no price sources configured")]
    Empty,

    #[error("bad base URL {url:?} for source {kind}: {reason}")]
    BadBaseUrl {
        kind: SourceKind,
        url: String,
        reason: String,
    },

    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_happened() {
        assert_eq!(
            SourceError::Timeout {
                after: Duration::from_micros(800_412)
            }
            .to_string(),
            "request timed out after 800ms"
        );
        assert_eq!(
            SourceError::RateLimited {
                what: "HTTP 429 Too Many Requests".into()
            }
            .to_string(),
            "HTTP 429 Too Many Requests (rate limited)"
        );
        assert_eq!(
            SourceError::not_json(b"<!DOCTYPE html>\n<html><body>busy</body></html>").to_string(),
            "body is not JSON (starts with \"<!DOCTYPE html>\")"
        );
        assert_eq!(
            SourceError::not_json(b"  \n").to_string(),
            "body is empty or blank, not JSON"
        );
        assert_eq!(
            SourceError::HttpStatus {
                status: 503,
                reason: "Service Unavailable".into(),
                message: None
            }
            .to_string(),
            "HTTP 503 Service Unavailable"
        );
        assert_eq!(
            SourceError::ImplausiblePrice {
                path: "bitcoin.usd".into(),
                price: "0.0001".parse().unwrap()
            }
            .to_string(),
            "implausible price 0.0001 (outside 1..=10000000) at bitcoin.usd"
        );
    }

    #[test]
    fn clip_blanks_control_characters_and_marks_the_cut() {
        assert_eq!(clip("a\nb\u{1b}[31m", 100), "a b [31m");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("abc", 3), "abc");
    }
}
