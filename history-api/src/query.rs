//! The query string of `GET /v1/ticks`, read strictly.
//!
//! We parse the raw query ourselves instead of using axum's `Query` (serde_urlencoded): that
//! decoder turns `%FF` into U+FFFD and keeps `%ZZ` as text, silently accepts repeated and unknown
//! parameters, and answers with its own plain-text rejection. A client that misspells `limit` or
//! sends a broken encoding should learn so from a 400 naming the parameter, not get a full answer
//! it did not ask for.
//!
//! `+` is a literal plus, not a space (RFC 3986 query semantics, not HTML forms), so that
//! `since=2026-11-24T02:40:05+01:00` means what it says. Empty `&&` segments are ignored.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use ticks::{Currency, Timedate};

use crate::cursor::{Cursor, PageKey};
use crate::error::ApiError;

/// Ticks per page unless `limit` says otherwise: a bit over 13 hours of both currencies at 5 s.
pub const DEFAULT_LIMIT: usize = 10_000;
/// The largest `limit` accepted, which bounds the memory and time one request can take.
pub const MAX_LIMIT: usize = 50_000;

const PARAMETERS: [&str; 4] = ["since", "currency", "limit", "cursor"];

/// A validated `GET /v1/ticks` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicksQuery {
    /// The first key the page may contain: `(since, USD)` for a `since` request, the cursor's key
    /// for a continuation.
    pub start: PageKey,
    /// In [`Currency::ALL`] order, without duplicates.
    pub currencies: Vec<Currency>,
    pub limit: usize,
}

impl<S: Send + Sync> FromRequestParts<S> for TicksQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        TicksQuery::parse(parts.uri.query().unwrap_or(""))
    }
}

impl TicksQuery {
    /// Reads a raw (still percent-encoded) query string.
    pub fn parse(raw: &str) -> Result<TicksQuery, ApiError> {
        let [since, currency, limit, cursor] = parameters(raw, PARAMETERS)?;
        TicksQuery::from_fields(since, currency, limit, cursor)
    }

    /// Validates the parameters, already decoded, exactly as [`TicksQuery::parse`] does: for
    /// transports other than a query string (gRPC's `History`), so that they accept and refuse
    /// the same requests with the same messages.
    pub fn from_fields(
        since: Option<String>,
        currency: Option<String>,
        limit: Option<String>,
        cursor: Option<String>,
    ) -> Result<TicksQuery, ApiError> {
        for (key, value) in PARAMETERS.iter().zip([&since, &currency, &limit, &cursor]) {
            if value.as_ref().is_some_and(String::is_empty) {
                return Err(ApiError::bad(*key, format!("{key} is empty")));
            }
        }
        let currencies = currency
            .map(|list| {
                Currency::parse_list(&list).map_err(|e| ApiError::bad("currency", e.to_string()))
            })
            .transpose()?;
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(text) => parse_limit(&text)?,
        };
        let (start, currencies) = match (since, cursor) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "cursor",
                    "give either since or cursor, not both: a cursor already says where the page starts",
                ));
            }
            (None, None) => {
                return Err(ApiError::bad(
                    "since",
                    "since is required (an RFC 3339 time such as 2026-11-24T01:40:05Z, or unix seconds) unless cursor is given",
                ));
            }
            (Some(since), None) => {
                let time = Timedate::parse_user(&since)
                    .map_err(|e| ApiError::bad("since", e.to_string()))?;
                let start = PageKey {
                    time,
                    currency: Currency::ALL[0],
                };
                (start, currencies.unwrap_or_else(|| Currency::ALL.to_vec()))
            }
            (None, Some(text)) => {
                let cursor =
                    Cursor::parse(&text).map_err(|e| ApiError::bad("cursor", e.to_string()))?;
                if let Some(asked) = currencies
                    && asked != cursor.currencies
                {
                    return Err(ApiError::bad(
                        "currency",
                        format!(
                            "the cursor continues {}, not {}: repeat the same currency or leave it out",
                            codes(&cursor.currencies),
                            codes(&asked)
                        ),
                    ));
                }
                (cursor.key, cursor.currencies)
            }
        };
        Ok(TicksQuery {
            start,
            currencies,
            limit,
        })
    }
}

fn codes(currencies: &[Currency]) -> String {
    let codes: Vec<&str> = currencies.iter().map(|c| c.code()).collect();
    codes.join(",")
}

/// The values of a raw (still percent-encoded) query string, in the order of `names`: each
/// given at most once, no other name, names and values percent-decoded strictly.
pub(crate) fn parameters<const N: usize>(
    raw: &str,
    names: [&str; N],
) -> Result<[Option<String>; N], ApiError> {
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(raw_key).map_err(|why| ApiError::BadRequest {
            parameter: None,
            message: format!("parameter name {raw_key:?} {why}"),
        })?;
        let slot = names.iter().position(|p| *p == key).ok_or_else(|| {
            ApiError::bad(
                &key,
                format!(
                    "unknown parameter {key:?}; the parameters are {}",
                    names.join(", ")
                ),
            )
        })?;
        let value = decode(raw_value).map_err(|why| ApiError::bad(&key, format!("{key} {why}")))?;
        if values[slot].replace(value).is_some() {
            return Err(ApiError::bad(
                &key,
                format!("{key} is given more than once"),
            ));
        }
    }
    Ok(values)
}

fn parse_limit(text: &str) -> Result<usize, ApiError> {
    let out_of_range = || {
        ApiError::bad(
            "limit",
            format!("limit {text:?} is not a whole number from 1 to {MAX_LIMIT}"),
        )
    };
    // Digits only: no sign, no blanks, and short enough that parsing cannot overflow.
    if text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(out_of_range());
    }
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(out_of_range()),
    }
}

/// Percent-decodes one query component, strictly: `%` must start two hex digits, and the bytes must
/// be UTF-8.
fn decode(component: &str) -> Result<String, &'static str> {
    if !component.contains('%') {
        return Ok(component.to_string());
    }
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or("has invalid percent-encoding (% must be followed by two hex digits)")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "has invalid percent-encoding")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 text once percent-decoded")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<TicksQuery, (Option<String>, String)> {
        TicksQuery::parse(raw).map_err(|e| match e {
            ApiError::BadRequest { parameter, message } => (parameter, message),
            other => panic!("{other:?}"),
        })
    }

    fn refused(raw: &str) -> (String, String) {
        let (parameter, message) = parse(raw).expect_err(raw);
        (parameter.unwrap_or_default(), message)
    }

    #[test]
    fn defaults_and_spellings() {
        let q = parse("since=2026-11-24T01:40:05Z").unwrap();
        assert_eq!(q.start.time.to_string(), "2026-11-24T01:40:05Z");
        assert_eq!(q.start.currency, Currency::USD);
        assert_eq!(q.currencies, Currency::ALL.to_vec());
        assert_eq!(q.limit, DEFAULT_LIMIT);

        let q = parse("currency=eur&limit=50000&since=1795484405").unwrap();
        assert_eq!(q.start.time.to_string(), "2026-11-24T01:40:05Z");
        assert_eq!(q.currencies, vec![Currency::EUR]);
        assert_eq!(q.limit, MAX_LIMIT);

        // A literal `+` is an offset; `%2B` is the same; `&&` and a trailing `&` are harmless.
        let plus = parse("since=2026-11-24T02:40:05+01:00&&").unwrap();
        let encoded = parse("since=2026-11-24T02%3A40%3A05%2B01%3A00").unwrap();
        assert_eq!(plus.start.time.to_string(), "2026-11-24T01:40:05Z");
        assert_eq!(plus, encoded);
        assert_eq!(
            parse("since=0&currency=both").unwrap().currencies,
            Currency::ALL.to_vec()
        );
        assert_eq!(
            parse("since=0&currency=EUR,USD").unwrap().currencies,
            Currency::ALL.to_vec()
        );
    }

    #[test]
    fn every_mistake_names_its_parameter() {
        let cases = [
            ("since=garbage", "since"),
            ("", "since"),
            ("limit=5", "since"),
            ("since=", "since"),
            ("since", "since"),
            ("since=%ZZ", "since"),
            ("since=%F", "since"),
            ("since=%FF", "since"),
            ("since=0&currency=GBP", "currency"),
            ("since=0&currency=USD,", "currency"),
            ("since=0&limit=0", "limit"),
            ("since=0&limit=50001", "limit"),
            ("since=0&limit=x", "limit"),
            ("since=0&limit=+5", "limit"),
            ("since=0&limit=-1", "limit"),
            ("since=0&limit=99999999999999999999", "limit"),
            ("since=0&Since=0", "Since"),
            ("since=0&foo=1", "foo"),
            ("since=0&since=1", "since"),
            ("since=0&currency=USD&currency=USD", "currency"),
            ("since=0&cursor=v1.x", "cursor"),
            ("cursor=garbage", "cursor"),
        ];
        for (raw, parameter) in cases {
            assert_eq!(refused(raw).0, parameter, "{raw}");
        }
        assert_eq!(
            refused("since=garbage").1,
            r#""garbage" is neither an RFC 3339 time (2026-11-24T01:40:05Z) nor unix seconds"#
        );
        assert_eq!(
            refused("since=0&limit=0").1,
            r#"limit "0" is not a whole number from 1 to 50000"#
        );
        assert_eq!(
            refused("since=0&currency=GBP").1,
            r#"unknown currency "GBP" (expected USD or EUR)"#
        );
        assert_eq!(
            refused("since=%FF").1,
            "since is not UTF-8 text once percent-decoded"
        );
        let (parameter, message) = parse("%ZZ=1").unwrap_err();
        assert_eq!(parameter, None);
        assert!(message.contains("percent-encoding"), "{message}");
    }

    #[test]
    fn a_cursor_carries_its_currencies() {
        let cursor = Cursor {
            key: PageKey {
                time: "2026-11-24T01:40:05Z".parse().unwrap(),
                currency: Currency::EUR,
            },
            currencies: vec![Currency::EUR],
        }
        .to_string();
        let q = parse(&format!("cursor={cursor}&limit=3")).unwrap();
        assert_eq!(q.start.currency, Currency::EUR);
        assert_eq!(q.currencies, vec![Currency::EUR]);
        assert_eq!(q.limit, 3);
        assert_eq!(
            parse(&format!("cursor={cursor}&currency=eur")).unwrap(),
            parse(&format!("cursor={cursor}")).unwrap()
        );
        assert_eq!(
            refused(&format!("cursor={cursor}&currency=USD,EUR")).0,
            "currency"
        );
        assert_eq!(refused(&format!("cursor={cursor}&since=0")).0, "cursor");
    }
}
