//! The continuation cursor of `GET /v1/ticks`.
//!
//! A page is a run of the merged order of ticks, `(timedate, currency)` with USD before EUR at the
//! same timedate. When `limit` cuts a page, the cursor names the key of the first tick *not*
//! returned and the currency set it was issued for, so the next page starts exactly there: paging
//! through yields every tick once, even when the cut falls between the USD and the EUR tick of one
//! slot, and even while new ticks arrive.
//!
//! Text form, URL-safe without escaping: `v1.<ms>.<CUR>.<SET>.<check>`, for example
//! `v1.1795484405000.EUR.USD-EUR.df5adae8`: unix milliseconds of the key's timedate, the key's
//! currency, the requested currencies joined by `-`, and an FNV-1a checksum of everything before it
//! in hex. The checksum is not security (nothing here is secret, and a forged cursor can only name
//! a position a `since` could name too); it turns an edited or truncated cursor into a clear 400
//! instead of a silently different page.

use std::fmt;

use ticks::{Currency, Timedate};

/// A position in the merged order: the tick at `(time, currency)` and everything after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageKey {
    pub time: Timedate,
    pub currency: Currency,
}

/// Where the next page starts, and for which currencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub key: PageKey,
    /// In [`Currency::ALL`] order, without duplicates, containing `key.currency`.
    pub currencies: Vec<Currency>,
}

/// A cursor this server did not issue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a cursor this server issued (malformed or altered); repeat the request with since"
)]
pub struct BadCursor(pub String);

const VERSION: &str = "v1";

impl Cursor {
    /// The part the checksum covers.
    fn body(&self) -> String {
        let set: Vec<&str> = self.currencies.iter().map(|c| c.code()).collect();
        format!(
            "{VERSION}.{}.{}.{}",
            self.key.time.unix_millis(),
            self.key.currency.code(),
            set.join("-")
        )
    }

    pub fn parse(text: &str) -> Result<Cursor, BadCursor> {
        let bad = || BadCursor(text.to_string());
        let mut parts = text.split('.');
        let (Some(version), Some(ms), Some(currency), Some(set), Some(_check), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        if version != VERSION || ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let time = ms
            .parse()
            .ok()
            .and_then(Timedate::from_unix_millis)
            .ok_or_else(bad)?;
        let currency: Currency = currency.parse().map_err(|_| bad())?;
        let currencies = set
            .split('-')
            .map(|c| c.parse::<Currency>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad())?;
        let cursor = Cursor {
            key: PageKey { time, currency },
            currencies,
        };
        // Re-encoding and comparing rejects every non-canonical spelling (lower case, leading
        // zeros, unsorted or repeated currencies) along with a wrong checksum.
        let ordered = cursor.currencies.windows(2).all(|w| w[0] < w[1]);
        if !ordered || !cursor.currencies.contains(&currency) || cursor.to_string() != text {
            return Err(bad());
        }
        Ok(cursor)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = self.body();
        write!(f, "{body}.{:08x}", fnv1a(body.as_bytes()))
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            key: PageKey {
                time: "2026-11-24T01:40:05Z".parse().unwrap(),
                currency: Currency::EUR,
            },
            currencies: vec![Currency::USD, Currency::EUR],
        }
    }

    #[test]
    fn round_trips_in_a_url_safe_form() {
        let text = cursor().to_string();
        // The example in this module's docs and in openapi.json.
        assert_eq!(text, "v1.1795484405000.EUR.USD-EUR.df5adae8");
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        );
        assert_eq!(Cursor::parse(&text).unwrap(), cursor());
    }

    #[test]
    fn refuses_anything_it_did_not_issue() {
        let good = cursor().to_string();
        let check = good.rsplit('.').next().unwrap();
        let resum = |body: &str| format!("{body}.{:08x}", fnv1a(body.as_bytes()));
        for bad in [
            String::new(),
            "garbage".into(),
            good.replace("1795484405000", "1795484410000"),
            good.replace("EUR.USD", "USD.USD"),
            good[..good.len() - 1].to_string(),
            format!("{good}.x"),
            format!("v2.1795484405000.EUR.USD-EUR.{check}"),
            resum("v1.1795484405000.eur.USD-EUR"),
            resum("v1.01795484405000.EUR.USD-EUR"),
            resum("v1.1795484405000.EUR.EUR-USD"),
            resum("v1.1795484405000.EUR.USD-USD-EUR"),
            resum("v1.1795484405000.EUR.USD"),
            resum("v1.-5.EUR.USD-EUR"),
            resum("v1.99999999999999999999.EUR.USD-EUR"),
            resum("v1.1795484405000.GBP.USD-EUR"),
        ] {
            assert_eq!(Cursor::parse(&bad), Err(BadCursor(bad.clone())), "{bad}");
        }
        // A correctly summed, canonical cursor is accepted even if a client built it.
        let usd_only = resum("v1.1795484405000.USD.USD");
        assert_eq!(
            Cursor::parse(&usd_only).unwrap().currencies,
            vec![Currency::USD]
        );
    }
}
