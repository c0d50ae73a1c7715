//! The per-vendor response parsers: bytes in, prices or a [`SourceError`] out, no I/O.
//!
//! Bodies are walked as [`RawValue`]s rather than `serde_json::Value`, for two reasons: a JSON
//! number stays the text the vendor wrote (so `67187.3358936566` is that decimal, not the nearest
//! `f64`), and an absurd number such as `1e400` is reported as a bad price instead of failing the
//! whole body.

use std::collections::HashMap;

use serde_json::value::RawValue;
use ticks::{Currency, Price};

use crate::error::{Mismatch, SourceError, clip};
use crate::{PLAUSIBLE, SourceKind};

/// Vendor messages are quoted into errors and logs; keep them to a line.
const MAX_MESSAGE_CHARS: usize = 200;
/// A price longer than this is quoted clipped in its error.
const MAX_PRICE_CHARS: usize = 64;

/// Parses one response body of `kind` for the request that asked for `currencies`.
///
/// Coinbase and Bitstamp answer one currency per request, so `currencies` should hold exactly one
/// for them; Kraken, CoinGecko and CoinDesk answer for all requested currencies at once.
///
/// All or nothing: every requested currency gets a valid, plausible price, or the first problem is
/// returned. ([`SourceChain::sample`](crate::SourceChain::sample) is more forgiving: it keeps the
/// currencies a body did answer for.) The demo source has no response and always gives an error.
pub fn parse(
    kind: SourceKind,
    currencies: &[Currency],
    body: &[u8],
) -> Result<Vec<(Currency, Price)>, SourceError> {
    parse_each(kind, currencies, body)?
        .into_iter()
        .map(|(currency, price)| price.map(|p| (currency, p)))
        .collect()
}

/// When the vendor says its answer was made, for the vendors whose answer says so: CoinDesk
/// (`time.updatedISO`) and Bitstamp (`timestamp`, unix seconds). Kraken's ticker, Coinbase's spot
/// price and CoinGecko's simple price as we request them carry no time. A missing or unreadable
/// time is `None`: the price is judged on its own.
pub fn vendor_time(kind: SourceKind, body: &[u8]) -> Option<ticks::Timedate> {
    let root = Node::root(body).ok()?;
    match kind {
        SourceKind::CoinDesk => root
            .lookup(&[Step::Key("time"), Step::Key("updatedISO")])
            .ok()?
            .string()
            .ok()?
            .parse()
            .ok(),
        SourceKind::Bitstamp => {
            let text = root.lookup(&[Step::Key("timestamp")]).ok()?.string().ok()?;
            let seconds: i64 = text.parse().ok()?;
            ticks::Timedate::from_unix_millis(seconds.checked_mul(1000)?)
        }
        _ => None,
    }
}

/// What one body said about each requested currency, or why the whole body is unusable.
pub(crate) type PerCurrency = Vec<(Currency, Result<Price, SourceError>)>;

/// Like [`parse`], but a problem with one currency's field does not discard the others.
pub(crate) fn parse_each(
    kind: SourceKind,
    currencies: &[Currency],
    body: &[u8],
) -> Result<PerCurrency, SourceError> {
    if kind.is_demo() {
        return Err(demo_has_no_body());
    }
    let root = Node::root(body)?;
    if let Some(error) = vendor_error(kind, &root) {
        return Err(error.into_body_error(kind));
    }
    Ok(crate::distinct(currencies)
        .into_iter()
        .map(|currency| (currency, price_of(kind, &root, currency)))
        .collect())
}

fn price_of(kind: SourceKind, root: &Node<'_>, currency: Currency) -> Result<Price, SourceError> {
    let (steps, encoding): (Vec<Step<'_>>, Encoding) = match (kind, currency) {
        (SourceKind::Kraken, _) => (
            vec![
                Step::Key("result"),
                Step::Key(kraken_pair(currency).canonical),
                Step::Key("c"),
                Step::Index(0),
            ],
            Encoding::String,
        ),
        (SourceKind::Coinbase, _) => {
            check_coinbase_currency(root, currency)?;
            (
                vec![Step::Key("data"), Step::Key("amount")],
                Encoding::String,
            )
        }
        (SourceKind::Bitstamp, _) => (vec![Step::Key("last")], Encoding::String),
        (SourceKind::CoinGecko, Currency::USD) => (
            vec![Step::Key("bitcoin"), Step::Key("usd")],
            Encoding::Number,
        ),
        (SourceKind::CoinGecko, Currency::EUR) => (
            vec![Step::Key("bitcoin"), Step::Key("eur")],
            Encoding::Number,
        ),
        // `rate` is a display string with thousands separators; `rate_float` is the number.
        (SourceKind::CoinDesk, _) => (
            vec![
                Step::Key("bpi"),
                Step::Key(currency.code()),
                Step::Key("rate_float"),
            ],
            Encoding::Number,
        ),
        (SourceKind::Demo, _) => return Err(demo_has_no_body()),
    };
    let node = root.lookup(&steps)?;
    let price = node.price(encoding)?;
    if !PLAUSIBLE.contains(&price.as_f64()) {
        return Err(SourceError::ImplausiblePrice {
            path: node.path,
            price,
        });
    }
    Ok(price)
}

fn demo_has_no_body() -> SourceError {
    SourceError::ErrorBody {
        vendor: SourceKind::Demo.vendor_name(),
        message: "the demo source has no HTTP response to parse".into(),
    }
}

/// A Coinbase answer for the wrong pair (a misrouted mirror, a proxy cache) must not become a
/// price in another currency.
fn check_coinbase_currency(root: &Node<'_>, currency: Currency) -> Result<(), SourceError> {
    let steps = [Step::Key("data"), Step::Key("currency")];
    let Ok(node) = root.lookup(&steps) else {
        // The field is informational; its absence is not a reason to refuse the amount.
        return Ok(());
    };
    match node.string() {
        Ok(found) if !found.eq_ignore_ascii_case(currency.code()) => {
            Err(SourceError::MissingField {
                path: node.path,
                mismatch: Some(Mismatch {
                    found: format!("{:?}", clip(&found, 16)),
                    expected: format!("{:?}", currency.code()),
                }),
            })
        }
        _ => Ok(()),
    }
}

/// A Kraken pair: the name we request and the canonical name the answer is keyed by.
pub(crate) struct KrakenPair {
    pub request: &'static str,
    pub canonical: &'static str,
}

pub(crate) fn kraken_pair(currency: Currency) -> KrakenPair {
    match currency {
        Currency::USD => KrakenPair {
            request: "XBTUSD",
            canonical: "XXBTZUSD",
        },
        Currency::EUR => KrakenPair {
            request: "XBTEUR",
            canonical: "XXBTZEUR",
        },
    }
}

/// An error a vendor reported in a well-formed JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VendorError {
    pub message: String,
    pub rate_limited: bool,
}

impl VendorError {
    /// The error for a body that parsed as JSON on a 2xx answer but carries a vendor error.
    fn into_body_error(self, kind: SourceKind) -> SourceError {
        if self.rate_limited {
            SourceError::RateLimited {
                what: format!("{} error: {}", kind.vendor_name(), self.message),
            }
        } else {
            SourceError::ErrorBody {
                vendor: kind.vendor_name(),
                message: self.message,
            }
        }
    }
}

/// The vendor's error message in a body, if the body is JSON and carries one. Used for non-2xx
/// answers, where the message explains the status.
pub(crate) fn vendor_error_in(kind: SourceKind, body: &[u8]) -> Option<VendorError> {
    let root = Node::root(body).ok()?;
    vendor_error(kind, &root)
}

fn vendor_error(kind: SourceKind, root: &Node<'_>) -> Option<VendorError> {
    match kind {
        // {"error":["EQuery:Unknown asset pair"]}, on HTTP 200. Entries starting with "W" are
        // warnings that come with a valid result.
        SourceKind::Kraken => {
            let errors = root.lookup(&[Step::Key("error")]).ok()?.array().ok()?;
            let messages: Vec<String> = errors
                .iter()
                .map(|e| e.string().unwrap_or_else(|_| e.raw.get().to_string()))
                .filter(|m| !m.starts_with('W'))
                .collect();
            if messages.is_empty() {
                return None;
            }
            let message = clip(&messages.join("; "), MAX_MESSAGE_CHARS);
            let lower = message.to_ascii_lowercase();
            let rate_limited = lower.contains("too many requests") || lower.contains("rate limit");
            Some(VendorError {
                message,
                rate_limited,
            })
        }
        // {"errors":[{"id":"not_found","message":"Invalid base currency"}]}
        SourceKind::Coinbase => {
            let errors = root.lookup(&[Step::Key("errors")]).ok()?.array().ok()?;
            if errors.is_empty() {
                return None;
            }
            let mut rate_limited = false;
            let messages: Vec<String> = errors
                .iter()
                .map(|e| {
                    let text = |key| e.lookup(&[Step::Key(key)]).and_then(|n| n.string()).ok();
                    let id = text("id");
                    rate_limited |= id.as_deref() == Some("rate_limit_exceeded");
                    match (text("message"), id) {
                        (Some(m), Some(id)) => format!("{m} ({id})"),
                        (Some(m), None) => m,
                        (None, Some(id)) => id,
                        (None, None) => e.raw.get().to_string(),
                    }
                })
                .collect();
            Some(VendorError {
                message: clip(&messages.join("; "), MAX_MESSAGE_CHARS),
                rate_limited,
            })
        }
        // {"status":"error","reason":"…","code":"…"}; `reason` is sometimes an object of lists.
        SourceKind::Bitstamp => {
            let status = root.lookup(&[Step::Key("status")]).ok()?.string().ok()?;
            if status != "error" {
                return None;
            }
            let message = ["reason", "message", "code"]
                .into_iter()
                .find_map(|key| root.lookup(&[Step::Key(key)]).ok())
                .map(|n| n.string().unwrap_or_else(|_| n.raw.get().to_string()))
                .unwrap_or_else(|| "status \"error\" without a reason".to_string());
            let rate_limited = message.to_ascii_lowercase().contains("rate limit");
            Some(VendorError {
                message: clip(&message, MAX_MESSAGE_CHARS),
                rate_limited,
            })
        }
        // {"status":{"error_code":429,"error_message":"You've exceeded the Rate Limit…"}} or
        // {"error":"coin not found"}
        SourceKind::CoinGecko => {
            if let Ok(status) = root.lookup(&[Step::Key("status")]) {
                let code = status
                    .lookup(&[Step::Key("error_code")])
                    .ok()
                    .map(|n| n.raw.get().to_string());
                let message = status
                    .lookup(&[Step::Key("error_message")])
                    .and_then(|n| n.string())
                    .ok();
                if code.is_some() || message.is_some() {
                    let message = match (&code, message) {
                        (Some(code), Some(m)) => format!("{m} (code {code})"),
                        (None, Some(m)) => m,
                        (Some(code), None) => format!("code {code}"),
                        (None, None) => String::new(),
                    };
                    return Some(VendorError {
                        message: clip(&message, MAX_MESSAGE_CHARS),
                        rate_limited: code.as_deref() == Some("429"),
                    });
                }
            }
            let message = root.lookup(&[Step::Key("error")]).ok()?;
            let message = message
                .string()
                .unwrap_or_else(|_| message.raw.get().into());
            Some(VendorError {
                message: clip(&message, MAX_MESSAGE_CHARS),
                rate_limited: false,
            })
        }
        SourceKind::CoinDesk | SourceKind::Demo => None,
    }
}

/// How a vendor writes its price field.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    /// A JSON string holding a decimal (`"77726.10000"`).
    String,
    /// A JSON number (`67187.3358936566`).
    Number,
}

#[derive(Debug, Clone, Copy)]
enum Step<'k> {
    Key(&'k str),
    Index(usize),
}

/// The JSON type of a value, as a reader would name it in an error message.
fn describe(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().bytes().next() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A value inside a response body, with the path that leads to it so errors can name the field.
#[derive(Debug, Clone)]
struct Node<'a> {
    raw: &'a RawValue,
    path: String,
}

impl<'a> Node<'a> {
    fn root(body: &'a [u8]) -> Result<Node<'a>, SourceError> {
        let raw: &RawValue =
            serde_json::from_slice(body).map_err(|_| SourceError::not_json(body))?;
        Ok(Node {
            raw,
            path: String::new(),
        })
    }

    fn mismatch(&self, expected: &str) -> SourceError {
        SourceError::MissingField {
            path: self.path.clone(),
            mismatch: Some(Mismatch {
                found: describe(self.raw).to_string(),
                expected: expected.to_string(),
            }),
        }
    }

    /// Follows `steps`. An absent key or index anywhere reports the *whole* path, which says what
    /// we were looking for (`result.XXBTZEUR.c[0]`); a value of the wrong type reports where it is.
    fn lookup(&self, steps: &[Step<'_>]) -> Result<Node<'a>, SourceError> {
        let full_path = steps
            .iter()
            .fold(self.path.clone(), |path, step| join(&path, *step));
        let mut node = self.clone();
        for step in steps {
            let path = join(&node.path, *step);
            let child = match step {
                Step::Key(key) => node.object()?.remove(*key),
                Step::Index(i) => node.array()?.into_iter().nth(*i).map(|n| n.raw),
            };
            let Some(raw) = child else {
                return Err(SourceError::MissingField {
                    path: full_path,
                    mismatch: None,
                });
            };
            node = Node { raw, path };
        }
        Ok(node)
    }

    fn object(&self) -> Result<HashMap<String, &'a RawValue>, SourceError> {
        if describe(self.raw) != "an object" {
            return Err(self.mismatch("an object"));
        }
        serde_json::from_str(self.raw.get()).map_err(|_| self.mismatch("an object"))
    }

    fn array(&self) -> Result<Vec<Node<'a>>, SourceError> {
        if describe(self.raw) != "an array" {
            return Err(self.mismatch("an array"));
        }
        let items: Vec<&'a RawValue> =
            serde_json::from_str(self.raw.get()).map_err(|_| self.mismatch("an array"))?;
        Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, raw)| Node {
                raw,
                path: join(&self.path, Step::Index(i)),
            })
            .collect())
    }

    fn string(&self) -> Result<String, SourceError> {
        if describe(self.raw) != "a string" {
            return Err(self.mismatch("a string"));
        }
        serde_json::from_str(self.raw.get()).map_err(|_| self.mismatch("a string"))
    }

    fn price(&self, encoding: Encoding) -> Result<Price, SourceError> {
        let bad = |reason: String| SourceError::BadPrice {
            path: self.path.clone(),
            reason,
        };
        // A null price is the vendor saying "no price", not a malformed answer.
        if describe(self.raw) == "null" {
            return Err(bad("price is null".into()));
        }
        let text = match encoding {
            Encoding::String => self.string()?,
            Encoding::Number if describe(self.raw) == "a number" => self.raw.get().to_string(),
            Encoding::Number => return Err(self.mismatch("a number")),
        };
        text.parse::<Price>().map_err(|e| {
            // The error quotes the text; a megabyte of digits must not end up in a log line.
            if text.chars().count() > MAX_PRICE_CHARS {
                bad(format!(
                    "price {:?} is not a positive decimal",
                    clip(&text, MAX_PRICE_CHARS)
                ))
            } else {
                bad(e.to_string())
            }
        })
    }
}

fn join(path: &str, step: Step<'_>) -> String {
    match step {
        Step::Key(key) if path.is_empty() => key.to_string(),
        Step::Key(key) => format!("{path}.{key}"),
        Step::Index(i) => format!("{path}[{i}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_names_the_whole_missing_path() {
        let body = br#"{"result":{"XXBTZUSD":{"c":["1"]}}}"#;
        let root = Node::root(body).unwrap();
        let steps = [
            Step::Key("result"),
            Step::Key("XXBTZEUR"),
            Step::Key("c"),
            Step::Index(0),
        ];
        assert_eq!(
            root.lookup(&steps).unwrap_err().to_string(),
            "missing field result.XXBTZEUR.c[0]"
        );
        let steps = [
            Step::Key("result"),
            Step::Key("XXBTZUSD"),
            Step::Key("c"),
            Step::Index(1),
        ];
        assert_eq!(
            root.lookup(&steps).unwrap_err().to_string(),
            "missing field result.XXBTZUSD.c[1]"
        );
    }

    #[test]
    fn lookup_names_where_the_type_is_wrong() {
        let root = Node::root(br#"{"result":{"XXBTZUSD":null}}"#).unwrap();
        let steps = [Step::Key("result"), Step::Key("XXBTZUSD"), Step::Key("c")];
        assert_eq!(
            root.lookup(&steps).unwrap_err().to_string(),
            "field result.XXBTZUSD is null, expected an object"
        );
        let root = Node::root(b"[1]").unwrap();
        assert_eq!(
            root.lookup(&steps).unwrap_err().to_string(),
            "body is an array, expected an object"
        );
    }

    #[test]
    fn escaped_keys_and_strings_are_decoded() {
        let root = Node::root(br#"{"d\u0061ta":{"amount":"9\u0037000.5"}}"#).unwrap();
        let node = root
            .lookup(&[Step::Key("data"), Step::Key("amount")])
            .unwrap();
        assert_eq!(node.price(Encoding::String).unwrap().to_string(), "97000.5");
    }
}
